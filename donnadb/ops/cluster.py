"""The HA cluster as Patroni sees it, through ``patronictl`` only.

Every function runs ``patronictl -c $PATRONI_CONFIG ...`` and reads its JSON; no
failover logic of our own and no direct etcd access. Our checks only refuse what is
plainly unsafe before asking Patroni (a candidate that is not a member, no healthy
sync standby to switch over to, a failover while the leader is healthy); whatever
Patroni refuses comes back as one :class:`ClusterError` line with its reason.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import time
from typing import Any

import yaml

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import ClusterError, DonnaError, NotInCluster

log = logging.getLogger(__name__)

PATRONICTL = "patronictl"
#: patronictl's own bound on a single call (it talks to the DCS and REST APIs).
CTL_TIMEOUT_S = 60
MIB = 1024 * 1024
#: Roles as patronictl's table spells them -> ours (Patroni's REST spelling).
_ROLES = {"Leader": "leader", "Sync Standby": "sync_standby", "Replica": "replica",
          "Standby Leader": "standby_leader"}
IN_RECOVERY_SQL = "SELECT pg_is_in_recovery()"
SENDER_SQL = "SELECT sender_host FROM pg_stat_wal_receiver"
#: Member states of a member that serves (3.0 says "running" for replicas too).
HEALTHY_STATES = ("running", "streaming")


def config_path(settings: Settings):
    """The Patroni configuration to hand patronictl.

    :raises NotInCluster: PATRONI_CONFIG is unset or names no file.
    """
    path = settings.patroni_config
    if path is None:
        raise NotInCluster("this host is not in a Patroni cluster (PATRONI_CONFIG is not "
                           "set): set ha = True in group_data and deploy")
    if not path.is_file():
        raise NotInCluster(f"this host is not in a Patroni cluster ({path} from "
                           "PATRONI_CONFIG does not exist): set ha = True in group_data "
                           "and deploy, or fix PATRONI_CONFIG")
    return path


def command(settings: Settings, *args: str) -> list[str]:
    return [PATRONICTL, "-c", str(config_path(settings)), *args]


_FAILED = re.compile(r"^\s*Failed:|\bfailed, details:", re.IGNORECASE)


def _reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("Error:", "Failed:")) or "Exception" in ln:
            return ln.removeprefix("Error:").strip()
    return lines[-1] if lines else "no output"


def run_ctl(settings: Settings, *args: str, timeout: float = CTL_TIMEOUT_S) -> str:
    """Run patronictl; return its stdout.

    :raises NotInCluster: no Patroni configuration here.
    :raises ClusterError: patronictl failed or reported a failure (its reason, one line).
    """
    argv = command(settings, *args)
    log.info("running %s", shlex.join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ClusterError("patronictl is not installed: install Debian's patroni "
                           "package (the ha deploy does)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"patronictl {args[0]} did not answer within {timeout:.0f}s: "
                           "check etcd and the Patroni REST APIs") from exc
    # Some verbs print "Failed: ..." or "Switchover failed, details: ..." and exit 0.
    failed = [ln.strip() for ln in done.stdout.splitlines() if _FAILED.search(ln)]
    if done.returncode != 0 or failed:
        reason = _reason("\n".join(failed) or done.stderr or done.stdout)
        raise ClusterError(f"patronictl {args[0]} refused: {reason}")
    return done.stdout


def members(settings: Settings) -> list[dict[str, Any]]:
    """``patronictl list``: name, host, role, state, timeline, lag_bytes per member."""
    out = []
    for row in yaml.safe_load(run_ctl(settings, "list", "--format", "json")) or []:
        lag = row.get("Lag in MB")
        out.append({
            "cluster": row.get("Cluster"), "name": row["Member"], "host": row.get("Host"),
            "role": _ROLES.get(row.get("Role"), str(row.get("Role", "")).lower()),
            "state": row.get("State"), "timeline": row.get("TL"),
            # patronictl rounds the lag to MB; "unknown" when it cannot tell.
            "lag_bytes": int(lag * MIB) if isinstance(lag, int | float) else None,
            "lag_unknown": lag is not None and not isinstance(lag, int | float),
            "pending_restart": bool(row.get("Pending restart")),
        })
    return out


#: A member's line of ``patronictl version CLUSTER``: "node1: Patroni 3.0.2 PostgreSQL
#: 15.20", or "node1: failed to get version: ..." when its REST API does not answer.
_VERSION_LINE = re.compile(r"^(\S+): Patroni \S+(?: PostgreSQL (\S+))?\s*$")


def server_versions(settings: Settings, cluster_name: str) -> dict[str, str | None]:
    """The PostgreSQL version each member runs ("15.20"), as ``patronictl version`` reads
    it from every member's REST API; None for a member that did not answer."""
    out = {}
    for line in run_ctl(settings, "version", cluster_name).splitlines():
        name, _, rest = line.partition(": ")
        if not rest or name.startswith("patronictl"):
            continue
        found = _VERSION_LINE.match(line)
        out[name] = found.group(2) if found else None
    return out


def paused(settings: Settings) -> bool:
    """Maintenance mode, as the cluster's dynamic configuration says."""
    conf = yaml.safe_load(run_ctl(settings, "show-config")) or {}
    return bool(conf.get("pause"))


def overview(settings: Settings) -> dict[str, Any]:
    """The cluster: its name, leader, timeline, paused flag and members."""
    ms = members(settings)
    leader = next((m for m in ms if m["role"] in ("leader", "standby_leader")), None)
    return {
        "cluster": ms[0]["cluster"] if ms else None,
        "leader": leader["name"] if leader else None,
        "leader_running": bool(leader and leader["state"] in HEALTHY_STATES),
        "timeline": max((m["timeline"] or 0 for m in ms), default=None),
        "paused": paused(settings),
        "members": ms,
    }


def history(settings: Settings) -> list[dict[str, Any]]:
    """``patronictl history``: one entry per timeline switch, oldest first."""
    rows = yaml.safe_load(run_ctl(settings, "history", "--format", "json")) or []
    return [{"timeline": r.get("TL"), "lsn": r.get("LSN"), "reason": r.get("Reason"),
             "timestamp": r.get("Timestamp"), "new_leader": r.get("New Leader")}
            for r in rows]


def _member(ms: list[dict], name: str) -> dict:
    found = next((m for m in ms if m["name"] == name), None)
    if found is None:
        raise ClusterError(f"{name} is not a member of this cluster (members: "
                           f"{', '.join(m['name'] for m in ms)}): pick one from "
                           "`donnactl cluster list`")
    return found


def _healthy_replica(m: dict) -> bool:
    return m["role"] in ("replica", "sync_standby") and m["state"] in HEALTHY_STATES


def plan_switch(settings: Settings, kind: str, candidate: str | None,
                force: bool = False) -> dict[str, Any]:
    """Check a switchover or failover and say what would run.

    :raises ClusterError: the candidate is not a member or not a healthy replica; a
        switchover without a running leader or healthy sync standby; a failover while
        the leader runs, unless ``force``.
    """
    view = overview(settings)
    ms, leader = view["members"], view["leader"]
    if kind == "switchover":
        if not view["leader_running"]:
            raise ClusterError("no running leader to switch over from: use `donnactl "
                               "cluster failover --candidate NAME` instead")
        if candidate is None:
            sync = [m for m in ms if m["role"] == "sync_standby" and _healthy_replica(m)]
            if not sync:
                raise ClusterError("no healthy synchronous standby to switch over to: "
                                   "wait until `donnactl cluster list` shows one")
            candidate = sync[0]["name"]
    elif view["leader_running"] and not force:
        raise ClusterError(f"the leader {leader} is running: use `donnactl cluster "
                           "switchover`, or failover --force to fail over anyway")
    if candidate is None:
        raise ClusterError("failover needs --candidate NAME (a healthy replica from "
                           "`donnactl cluster list`)")
    cand = _member(ms, candidate)
    if candidate == leader:
        raise ClusterError(f"{candidate} is already the leader: pick a replica")
    if not _healthy_replica(cand):
        raise ClusterError(f"{candidate} is not a healthy replica (role {cand['role']}, "
                           f"state {cand['state']}): pick another candidate")
    args = [kind, "--candidate", candidate, "--force"]
    if kind == "switchover":
        args[1:1] = ["--leader", leader]
    return {"action": kind, "old_leader": leader, "candidate": candidate,
            "command": shlex.join(command(settings, *args)), "args": args}


def switch(settings: Settings, kind: str, candidate: str | None, *, force: bool = False,
           dry_run: bool = False) -> dict[str, Any]:
    """Switch over (or fail over) to ``candidate``; wait until it leads and runs.

    :raises ClusterError: see :func:`plan_switch`; patronictl refused; the new leader
        did not run within PATRONI_SWITCH_TIMEOUT_S.
    """
    plan = plan_switch(settings, kind, candidate, force)
    args = plan.pop("args")
    if dry_run:
        return {**plan, "dry_run": True}
    started = time.monotonic()
    run_ctl(settings, *args)
    deadline = started + settings.patroni_switch_timeout_s
    while True:
        try:
            view = overview(settings)
        except ClusterError:
            view = {}
        if view.get("leader") == plan["candidate"] and view.get("leader_running"):
            break
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{plan['candidate']} was not running as leader "
                f"{settings.patroni_switch_timeout_s:.0f}s after the {kind} (leader now: "
                f"{view.get('leader')}): check `donnactl cluster list` and the Patroni log")
        time.sleep(0.5)
    return {**plan, "dry_run": False, "new_leader": view["leader"],
            "timeline": view["timeline"], "seconds": round(time.monotonic() - started, 1)}


def member_action(settings: Settings, action: str, member: str | None, *,
                  dry_run: bool = False) -> dict[str, Any]:
    """``restart`` (one member or all) or ``reinit`` (one replica), waiting for it.

    :raises ClusterError: not a member; reinit of the leader or without a member;
        patronictl refused.
    """
    view = overview(settings)
    if member is not None:
        m = _member(view["members"], member)
        if action == "reinit" and m["role"] in ("leader", "standby_leader"):
            raise ClusterError(f"{member} is the leader and cannot be reinitialised: "
                               "switch over first, then reinit it as a replica")
    elif action == "reinit":
        raise ClusterError("reinit needs a member name (a replica from `donnactl "
                           "cluster list`)")
    args = [action, view["cluster"], *([member] if member else []), "--force"]
    if action == "reinit":
        args.append("--wait")
    result = {"action": action, "member": member or "all",
              "command": shlex.join(command(settings, *args)), "dry_run": dry_run}
    if dry_run:
        return result
    started = time.monotonic()
    output = run_ctl(settings, *args, timeout=CTL_TIMEOUT_S * 5)
    return {**result, "output": output.strip().splitlines()[-1:] or [],
            "seconds": round(time.monotonic() - started, 1)}


def set_paused(settings: Settings, pause: bool, *, dry_run: bool = False) -> dict[str, Any]:
    """Pause (maintenance mode: no automatic failover) or resume the cluster.

    :raises ClusterError: already in that state, or patronictl refused.
    """
    verb = "pause" if pause else "resume"
    now = paused(settings)
    if now == pause:
        state = "paused" if now else "not paused (automatic failover is on)"
        raise ClusterError(f"the cluster is already {state}: nothing to do")
    result = {"action": verb, "command": shlex.join(command(settings, verb, "--wait")),
              "dry_run": dry_run}
    if not dry_run:
        run_ctl(settings, verb, "--wait")
        result["paused"] = paused(settings)
    return result


def replica_of(settings: Settings, *, dbname: str | None = None,
               kind: str = "readonly") -> str | None:
    """None on a primary (or a single host); on a replica, the leader's name: Patroni's
    when PATRONI_CONFIG is set, else the host the WAL comes from ("unknown" if hidden).
    ``kind``: the role to ask as (a job's own, whose password its user holds).

    :raises DatabaseError: the local database cannot be reached.
    """
    with db.connection(kind, settings=settings, dbname=dbname, autocommit=True) as conn:
        if not conn.execute(IN_RECOVERY_SQL).fetchone()[0]:
            return None
        sender = conn.execute(SENDER_SQL).fetchone()
    if settings.patroni_config is not None:
        try:
            leader = overview(settings)["leader"]
        except ClusterError as exc:
            log.warning("cannot ask Patroni for the leader: %s", exc)
        else:
            if leader:
                return leader
    return (sender[0] if sender else None) or "unknown"


def backup_member(ms: list[dict[str, Any]], max_lag_bytes: int) -> str | None:
    """The member that takes the cluster's scheduled backups: the first healthy replica
    by name whose lag is known and within ``max_lag_bytes`` (pg_dump then reads a copy
    the leader does not serve from), else the running leader; None when neither."""
    replicas = sorted(m["name"] for m in ms if _healthy_replica(m)
                      and m["lag_bytes"] is not None and m["lag_bytes"] <= max_lag_bytes)
    if replicas:
        return replicas[0]
    leader = next((m for m in ms if m["role"] in ("leader", "standby_leader")
                   and m["state"] in HEALTHY_STATES), None)
    return leader["name"] if leader else None


def backups_taken_by(settings: Settings) -> str | None:
    """None when this host takes the scheduled backups (a single host; the cluster's
    :func:`backup_member`; or Patroni cannot say, when one backup too many beats none);
    else the member that does."""
    from donnadb.ops.drillfault import member_name

    if settings.patroni_config is None:
        return None
    try:
        me = member_name(config_path(settings))
        chosen = backup_member(members(settings), settings.health_cluster_lag_warn_bytes)
    except DonnaError as exc:
        log.warning("cannot tell which member takes the backups, taking them here: %s", exc)
        return None
    return None if chosen in (None, me) else chosen


def summary(settings: Settings) -> dict[str, Any] | None:
    """The cluster for `status`/`health`/`metrics`: None on a single host (PATRONI_CONFIG
    unset); ``{"error": ...}`` when patronictl cannot say."""
    if settings.patroni_config is None:
        return None
    try:
        return overview(settings)
    except ClusterError as exc:
        return {"error": str(exc), "members": [], "leader": None, "paused": None,
                "timeline": None, "leader_running": False, "cluster": None}


def problems(view: dict[str, Any], settings: Settings) -> tuple[int, list[str]]:
    """(severity 0/1/2, reasons) of a :func:`summary`: no leader is critical; a missing,
    stopped or lagging member, or maintenance mode, is a warning."""
    if view.get("error"):
        return 2, [view["error"]]
    if not view["leader_running"]:
        return 2, [f"no running leader (leader: {view['leader'] or 'none'})"]
    reasons = []
    running = [m for m in view["members"] if m["state"] in HEALTHY_STATES]
    if len(running) < settings.patroni_expected_members:
        reasons.append(f"{len(running)} of {settings.patroni_expected_members} members "
                       "running")
    for m in view["members"]:
        if m["role"] in ("leader", "standby_leader"):
            continue
        if m["state"] not in HEALTHY_STATES:
            reasons.append(f"{m['name']} is {m['state']}, not streaming")
        elif m["lag_unknown"] or m["lag_bytes"] is None:
            reasons.append(f"{m['name']}'s lag is unknown")
        elif m["lag_bytes"] > settings.health_cluster_lag_warn_bytes:
            reasons.append(f"{m['name']} lags {m['lag_bytes']} bytes (warn above "
                           f"{settings.health_cluster_lag_warn_bytes})")
    if view["paused"]:
        reasons.append("paused: no automatic failover (`donnactl cluster resume`)")
    return (1 if reasons else 0), reasons

"""PostgreSQL minor updates of this host (`donnactl cluster update`).

The server packages (``postgresql-<v>``, ``postgresql-client-<v>``, ``libpq5``, those
installed) go to the newest version apt knows, then the server is restarted onto the new
binaries exactly once, by us:

* a single host (no PATRONI_CONFIG): ``systemctl restart postgresql@<v>-<c>`` where
  systemd is PID 1, else ``pg_ctlcluster <v> <c> restart``, while a probe connects every
  50 ms to measure how long the server refused connections;
* a replica: ``patronictl restart`` of this member, then wait until Patroni shows it
  streaming with the new version;
* the leader: refused until every replica runs the new version; then a switchover to the
  synchronous standby (:func:`donnadb.ops.cluster.switch`), after which it is a replica
  and is restarted as one if the demotion did not already start the new binaries.

Why apt-get cannot restart the server itself: the server package's prerm stops its
clusters and its postinst starts them (postgresql-common's maintscripts-functions:
``deb-systemd-invoke stop postgresql@<v>-*`` / ``invoke-rc.d postgresql start``), which
would take the server down for the whole unpack, behind our back. apt-get runs with
``SYSTEMD_OFFLINE=1``: systemctl, called by those scripts, then ignores start, stop and
daemon-reload ("Running in chroot, ignoring command"), for this apt-get's processes only.
A policy-rc.d would silence every package and every apt run on the host while it exists
(and a crash would leave it there); dpkg's ``--no-triggers`` does not concern maintainer
scripts. Without systemd the scripts use /etc/init.d/postgresql, which only touches
clusters whose start.conf says ``auto`` (a Patroni member's says ``manual``; containers
carry Docker's policy-rc.d): the postmaster's start time is compared before and after
apt-get, and a server apt-get restarted after all is reported, not restarted again.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import ClusterError, DonnaError
from donnadb.ops import cluster
from donnadb.ops.drillfault import ctl_command, member_name, systemd_running
from donnadb.ops.status import LONGEST_XACT_SQL

log = logging.getLogger(__name__)
audit = logging.getLogger("donnadb.audit")

#: The server's packages, of settings.pg_version; only the installed ones are updated.
PACKAGES = ("postgresql-{v}", "postgresql-client-{v}", "libpq5")
APT_TIMEOUT_S = 900
RESTART_TIMEOUT_S = 300
#: How often the probe tries a real connection while the server restarts.
PROBE_INTERVAL_S = 0.05
#: The environment of apt-get: no questions, no restarts (see the module docstring);
#: needrestart, where installed, would restart services from its apt hook.
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_OFFLINE": "1",
           "NEEDRESTART_SUSPEND": "1", "LC_ALL": "C"}

SERVER_SQL = "SELECT current_setting('server_version'), pg_postmaster_start_time()"


class UpdateRefused(DonnaError):
    """`cluster update` will not start: a check failed; nothing was changed."""

    exit_code = 14


class UpdateFailed(DonnaError):
    """`cluster update` failed half-way; the message says what runs and how to start it."""

    exit_code = 15


@dataclass
class Package:
    name: str
    installed: str
    candidate: str
    #: The candidate is newer (never a downgrade, whatever the lists say).
    upgrade: bool


def upstream(version: str) -> str:
    """``15.20`` of a package version (``15.20-0+deb12u1``) or a server_version
    (``15.20 (Debian 15.20-0+deb12u1)``)."""
    return version.split(":", 1)[-1].split()[0].split("-", 1)[0]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", upstream(version))[:2])


# --------------------------------------------------------------------- packages
def _run(argv: list[str], *, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``argv``; the completed process (never raises on a non-zero exit)."""
    log.info("running %s", shlex.join(argv))
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, "", f"no answer within {timeout:g}s")


def newer(candidate: str, installed: str) -> bool:
    """Debian's own version order (epochs, ~, +debNuM)."""
    return _run(["dpkg", "--compare-versions", candidate, "gt", installed]).returncode == 0


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
    return lines[-1].strip()


def packages(settings: Settings) -> list[Package]:
    """The installed server packages with apt's candidate version of each.

    :raises UpdateRefused: apt-cache failed, or the server package is not installed.
    """
    names = [p.format(v=settings.pg_version) for p in PACKAGES]
    done = _run(["apt-cache", "policy", *names], env={"LC_ALL": "C"})
    if done.returncode != 0:
        raise UpdateRefused(f"apt-cache policy failed ({_last_line(done)}): fix apt, then "
                            "run the update again")
    found = {}
    for block in re.split(r"^(?=\S)", done.stdout, flags=re.M):
        name = block.split(":", 1)[0].strip()
        installed = re.search(r"^\s+Installed: (\S+)", block, re.M)
        candidate = re.search(r"^\s+Candidate: (\S+)", block, re.M)
        if installed and candidate and installed[1] != "(none)":
            found[name] = Package(name, installed[1], candidate[1],
                                  newer(candidate[1], installed[1]))
    if names[0] not in found:
        raise UpdateRefused(f"{names[0]} is not installed on this host: PG_VERSION "
                            f"{settings.pg_version} must match the deployed server")
    return [found[n] for n in names if n in found]


def refresh_lists() -> None:
    """``apt-get update``: the candidate versions are only as new as apt's lists.

    :raises UpdateRefused: it failed (nothing else was done).
    """
    done = _run(["apt-get", "update"], env=APT_ENV, timeout=APT_TIMEOUT_S)
    if done.returncode != 0:
        raise UpdateRefused(f"apt-get update failed ({_last_line(done)}): fix the sources "
                            "or the network, or run without --refresh")


def apt_command(pkgs: list[Package]) -> list[str]:
    """apt-get of exactly the candidate versions the plan showed (apt upgrades what
    depends on them with the same version, such as libpq-dev)."""
    return ["apt-get", "install", "-y", "--only-upgrade", "-o",
            "Dpkg::Options::=--force-confold",
            *(f"{p.name}={p.candidate}" for p in pkgs if p.upgrade)]


def upgrade_packages(pkgs: list[Package]) -> None:
    """:raises UpdateFailed: apt-get failed (the server was not restarted)."""
    cmd = apt_command(pkgs)
    done = _run(cmd, env=APT_ENV, timeout=APT_TIMEOUT_S)
    if done.returncode != 0:
        raise UpdateFailed(f"`{shlex.join(cmd)}` exited {done.returncode} "
                           f"({_last_line(done)}); the server was not restarted and still "
                           "runs the old version: fix apt (`dpkg --configure -a`), then run "
                           "the update again")
    if systemd_running():
        # What the skipped postinst would have done (a new unit for a new cluster).
        _run(["systemctl", "daemon-reload"])
    audit.info("packages updated", extra={"audit": {"packages": [asdict(p) for p in pkgs]}})


# --------------------------------------------------------------------- the local server
def local_server(settings: Settings) -> tuple[str, datetime]:
    """(server_version, postmaster start time) of the server DB_HOST:DB_PORT reaches.

    :raises DatabaseError: it cannot be reached.
    """
    with db.connection("readonly", settings=settings, autocommit=True) as conn:
        version, started = conn.execute(SERVER_SQL).fetchone()
    return version, started


def oldest_transaction(settings: Settings) -> dict[str, Any] | None:
    """The oldest open transaction of the server DB_HOST:DB_PORT reaches, or None."""
    with db.connection("readonly", settings=settings, autocommit=True) as conn:
        row = conn.execute(LONGEST_XACT_SQL).fetchone()
    # (pid, usename, state, seconds, query), as `status` reads it.
    return None if row is None else {"pid": row[0], "user": row[1], "seconds": row[3]}


def check_transactions(settings: Settings, where: str) -> None:
    """:raises UpdateRefused: a transaction older than UPDATE_MAX_XACT_AGE_S is open on
    the server the restart (or switchover) would cut."""
    xact = oldest_transaction(settings)
    bound = settings.update_max_xact_age_s
    if xact and xact["seconds"] > bound:
        raise UpdateRefused(
            f"a transaction has been open for {xact['seconds']:.0f}s on {where} (pid "
            f"{xact['pid']}, user {xact['user']}), longer than UPDATE_MAX_XACT_AGE_S="
            f"{bound:g}: let it finish or end it (`donnactl queries terminate "
            f"{xact['pid']}`), then run the update again")


def restart_command(settings: Settings) -> list[str]:
    return ctl_command(settings.pg_version, settings.pg_cluster, "restart")


class OutageProbe:
    """Tries a real connection every PROBE_INTERVAL_S in a thread, from just before the
    restart until the server accepts again: the time from the first refused attempt to
    the first accepted one after it is how long clients were turned away."""

    def __init__(self, settings: Settings) -> None:
        self.info = db.conninfo("readonly", settings=settings, connect_timeout=2)
        self.first_refused: float | None = None
        self.accepted_again: float | None = None
        self.last_accepted = 0.0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _accepts(self) -> bool:
        try:
            psycopg.connect(self.info).close()
        except psycopg.Error:
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set() and self.accepted_again is None:
            began = time.monotonic()
            if self._accepts():
                self.last_accepted = began
                if self.first_refused is not None:
                    self.accepted_again = began
            else:
                self.refused += 1
                if self.first_refused is None:
                    self.first_refused = began
            self._stop.wait(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - began)))

    def __enter__(self) -> OutageProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait_accepting(self, since: float, timeout: float) -> dict[str, Any] | None:
        """The outage, once a connection made after ``since`` (the restart returned) was
        accepted; None when none was within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.accepted_again is None and self.last_accepted < since:
            if time.monotonic() > deadline:
                return None
            time.sleep(PROBE_INTERVAL_S / 2)
        seconds = (self.accepted_again - self.first_refused
                   if self.accepted_again is not None and self.first_refused is not None
                   else 0.0)  # a restart quicker than one probe interval
        return {"refused_seconds": round(seconds, 3), "refused_attempts": self.refused,
                "probe_interval_s": PROBE_INTERVAL_S}


def restart_single(settings: Settings) -> dict[str, Any]:
    """Restart this host's server, measuring how long it refused connections.

    :raises UpdateFailed: the restart failed or the server did not accept connections
        again in time.
    """
    cmd = restart_command(settings)
    start = shlex.join(ctl_command(settings.pg_version, settings.pg_cluster, "start"))
    how = (f"the new packages are installed: start the server with `{start}` and read "
           f"/var/log/postgresql/postgresql-{settings.pg_version}-{settings.pg_cluster}.log")
    with OutageProbe(settings) as probe:
        time.sleep(PROBE_INTERVAL_S * 2)  # the probe's first attempts see it running
        done = _run(cmd, timeout=RESTART_TIMEOUT_S)
        if done.returncode != 0:
            raise UpdateFailed(f"`{shlex.join(cmd)}` exited {done.returncode} "
                               f"({_last_line(done)}); {how}")
        outage = probe.wait_accepting(time.monotonic(), RESTART_TIMEOUT_S)
    if outage is None:
        raise UpdateFailed(f"the server refused connections for {RESTART_TIMEOUT_S}s after "
                           f"`{shlex.join(cmd)}` (`pg_lsclusters` says why); {how}")
    return {"command": shlex.join(cmd), **outage}


# --------------------------------------------------------------------- the plan
def _member_version(versions: dict[str, str | None], name: str) -> str:
    """:raises UpdateRefused: Patroni could not say which version ``name`` runs."""
    found = versions.get(name)
    if not found:
        raise UpdateRefused(f"Patroni cannot say which PostgreSQL version {name} runs "
                            "(`patronictl version`): bring it back (`donnactl cluster "
                            "list`), then run the update again")
    return found


def check_replicas(settings: Settings, view: dict[str, Any]) -> None:
    """:raises UpdateRefused: no running leader, a member missing, a replica not
    streaming or lagging more than HEALTH_CLUSTER_LAG_WARN_BYTES: restarting or switching
    over now would leave the cluster without a caught-up copy."""
    bound = settings.health_cluster_lag_warn_bytes
    if not view["leader_running"]:
        raise UpdateRefused("no leader is running: fix the cluster first (`donnactl "
                            "cluster list`), then run the update again")
    if len(view["members"]) < settings.patroni_expected_members:
        raise UpdateRefused(
            f"only {len(view['members'])} of PATRONI_EXPECTED_MEMBERS="
            f"{settings.patroni_expected_members} members are in the cluster: bring the "
            "missing one back first (`donnactl cluster list`), then run the update again")
    for m in view["members"]:
        if m["role"] in ("leader", "standby_leader"):
            continue
        if m["state"] not in cluster.HEALTHY_STATES:
            raise UpdateRefused(f"{m['name']} is {m['state']}, not streaming: bring it "
                                "back first (`donnactl cluster list`), then run the update")
        if m["lag_bytes"] is None or m["lag_bytes"] > bound:
            lag = "an unknown amount" if m["lag_bytes"] is None else f"{m['lag_bytes']} bytes"
            raise UpdateRefused(
                f"{m['name']} lags {lag}, above HEALTH_CLUSTER_LAG_WARN_BYTES={bound}: "
                "wait until `donnactl cluster list` shows it caught up (or rebuild it with "
                f"`donnactl cluster reinit {m['name']}`), then run the update again")


def _cluster_state(settings: Settings) -> dict[str, Any]:
    """This member's name, role and running version, with the cluster as Patroni sees it.

    :raises UpdateRefused: this host is not among the members, or its version is unknown.
    """
    me = member_name(cluster.config_path(settings))
    view = cluster.overview(settings)
    role = next((m["role"] for m in view["members"] if m["name"] == me), None)
    if role is None:
        raise UpdateRefused(f"this host ({me}) is not a member of the cluster Patroni "
                            "shows: check `donnactl cluster list` and patroni's log")
    versions = cluster.server_versions(settings, view["cluster"])
    return {"mode": "leader" if me == view["leader"] else "replica", "member": me,
            "role": role, "running_version": _member_version(versions, me),
            "view": view, "versions": versions}


def _check_leader(settings: Settings, state: dict[str, Any], target: str) -> dict[str, Any]:
    """The switchover the leader's update starts with.

    :raises UpdateRefused: a transaction older than the bound is open here (the
        switchover ends it); a replica runs a version older than ``target``; no healthy
        sync standby to switch over to.
    """
    me = state["member"]
    check_transactions(settings, f"the leader {me}")
    older = sorted(n for n in state["versions"] if n != me and version_key(
        _member_version(state["versions"], n)) < version_key(target))
    if older:
        raise UpdateRefused(
            f"this host ({me}) is the leader and {', '.join(older)} still "
            f"run{'s' if len(older) == 1 else ''} a PostgreSQL older than {target}: update "
            "the replicas first (`donnactl cluster update` on each), then run it here again")
    try:
        switch = cluster.plan_switch(settings, "switchover", None)
    except ClusterError as exc:
        raise UpdateRefused(f"cannot switch over before the update: {exc}") from exc
    switch.pop("args")
    return switch


def plan(settings: Settings) -> dict[str, Any]:
    """What `cluster update` would do here; every check runs, nothing changes.

    :raises UpdateRefused: a check failed (the message says which and how to fix it).
    :raises NotInCluster: PATRONI_CONFIG names no file.
    """
    pkgs = packages(settings)
    server = pkgs[0]
    # What the server package will be: a server not restarted since apt-get updated it
    # (by hand, unattended-upgrades) still needs the restart.
    target = upstream(server.candidate if server.upgrade else server.installed)
    if settings.patroni_config is not None:
        state = _cluster_state(settings)
    else:
        state = {"mode": "single", "member": None, "role": "primary",
                 "running_version": upstream(local_server(settings)[0])}
    restart = version_key(state["running_version"]) < version_key(target)
    result = {k: v for k, v in state.items() if k not in ("view", "versions")}
    result.update(packages=[asdict(p) for p in pkgs],
                  target_version=target, switchover=None,
                  nothing_to_do=not restart and not any(p.upgrade for p in pkgs))
    if result["nothing_to_do"]:
        result["steps"] = []
        return result
    # Refusals come before anything changes; a host with nothing to do refuses nothing.
    if state["mode"] == "single":
        check_transactions(settings, "this host")
    else:
        check_replicas(settings, state["view"])
    if state["mode"] == "leader":
        result["switchover"] = _check_leader(settings, state, target)
    result["steps"] = _steps(settings, result, pkgs)
    return result


def _steps(settings: Settings, p: dict[str, Any], pkgs: list[Package]) -> list[str]:
    steps = [shlex.join(apt_command(pkgs))] if any(pkg.upgrade for pkg in pkgs) else []
    if p["mode"] == "single":
        steps.append(shlex.join(restart_command(settings)))
    elif p["mode"] == "leader":
        steps.append(p["switchover"]["command"])
        steps.append(f"patronictl restart of {p['member']} as a replica, unless the "
                     "demotion already started the new binaries")
    else:
        steps.append(f"patronictl restart of {p['member']}")
    return steps


# --------------------------------------------------------------------- doing it
Progress = Callable[[str], None]


def _silent(_: str) -> None:
    return None


def run(settings: Settings, planned: dict[str, Any], progress: Progress = _silent,
        ) -> dict[str, Any]:
    """Do the planned update (see :func:`plan`); before/after versions of each part.

    :raises UpdateFailed: apt-get or the restart failed (the message says what runs).
    :raises ClusterError: Patroni refused the switchover or the restart.
    """
    result = {**planned, "dry_run": False, "before": {
        "packages": {p["name"]: p["installed"] for p in planned["packages"]},
        "server_version": planned["running_version"]}}
    if planned["nothing_to_do"]:
        return {**result, "after": result["before"], "restarted": False}
    started = time.monotonic()
    pkgs = [Package(**p) for p in planned["packages"]]
    single = planned["mode"] == "single"
    postmaster = local_server(settings)[1] if single else None
    if any(p.upgrade for p in pkgs):
        progress("apt-get: updating " + ", ".join(p.name for p in pkgs if p.upgrade))
        upgrade_packages(pkgs)
    if single:
        result.update(_finish_single(settings, postmaster, progress))
    else:
        result.update(_finish_member(settings, planned, progress))
    after = {p.name: p.installed for p in packages(settings)}
    result["after"]["packages"] = after
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _finish_single(settings: Settings, postmaster: datetime, progress: Progress,
                   ) -> dict[str, Any]:
    version, now = local_server(settings)
    version = upstream(version)
    if now != postmaster:
        # apt-get restarted it after all (a host without systemd and without a
        # policy-rc.d): it runs the new binaries; a second restart would only cost more.
        log.warning("apt-get restarted the server itself (postmaster started %s)", now)
        return {"restarted": True, "restarted_by": "apt-get", "outage": None,
                "after": {"server_version": version}}
    progress("restarting PostgreSQL (" + shlex.join(restart_command(settings)) + ")")
    outage = restart_single(settings)
    version = upstream(local_server(settings)[0])
    audit.info("server restarted for a minor update",
               extra={"audit": {"server_version": version, **outage}})
    return {"restarted": True, "restarted_by": "donnactl", "outage": outage,
            "after": {"server_version": version}}


def _finish_member(settings: Settings, planned: dict[str, Any], progress: Progress,
                   ) -> dict[str, Any]:
    me, target = planned["member"], planned["target_version"]
    extra: dict[str, Any] = {}
    if planned["mode"] == "leader":
        candidate = planned["switchover"]["candidate"]
        progress(f"switching over to {candidate}")
        extra["switchover"] = cluster.switch(settings, "switchover", candidate)
        # The demotion restarts this member as a replica, on the binaries now installed.
        version = wait_member(settings, me, None, progress)
    else:
        version = planned["running_version"]
    restarted = False
    if version_key(version) < version_key(target):
        progress(f"restarting {me} through Patroni")
        cluster.member_action(settings, "restart", me)
        restarted = True
        version = wait_member(settings, me, target, progress)
    return {**extra, "restarted": restarted or planned["mode"] == "leader",
            "restarted_by": "patroni", "outage": None, "after": {"server_version": version}}


def wait_member(settings: Settings, me: str, target: str | None, progress: Progress) -> str:
    """Wait until Patroni shows ``me`` as a streaming replica (running ``target`` when
    given); its version.

    :raises UpdateFailed: not within UPDATE_WAIT_TIMEOUT_S.
    """
    progress(f"waiting for {me} to stream" + (f" with PostgreSQL {target}" if target else ""))
    deadline = time.monotonic() + settings.update_wait_timeout_s
    seen = "unknown"
    while time.monotonic() < deadline:
        try:
            view = cluster.overview(settings)
            mine = next(m for m in view["members"] if m["name"] == me)
            version = cluster.server_versions(settings, view["cluster"]).get(me)
        except (ClusterError, StopIteration):
            time.sleep(1)
            continue
        seen = f"{mine['role']}, {mine['state']}, PostgreSQL {version}"
        if (mine["role"] in ("replica", "sync_standby")
                and mine["state"] in cluster.HEALTHY_STATES and version
                and (target is None or version_key(version) >= version_key(target))):
            return version
        time.sleep(1)
    raise UpdateFailed(f"{me} was not a streaming replica{' on ' + target if target else ''} "
                       f"{settings.update_wait_timeout_s:.0f}s later (now: {seen}): check "
                       f"`donnactl cluster list` and patroni's log; `donnactl cluster "
                       f"restart {me}` starts it again")

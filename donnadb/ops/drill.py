"""The failure drill: what an outage of the primary costs, measured under load.

Each round runs the load test's Locust scenarios (:mod:`donnadb.loadtest`) through the
routing layer (``DB_HOST``/``PGBOUNCER_PORT``, as the application connects) while a
ledger of writer threads appends messages through the DAL to a chat of its own and
keeps every id whose commit was acknowledged (:mod:`.drillledger`). Then the fault
(:mod:`.drillfault`): writes fail, the drill waits until they succeed again, and reads
the ledger back from the leader. An acknowledged id that is missing is a lost write;
:func:`raise_for_failure` turns any (or an old leader that did not rejoin) into a
non-zero exit.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from donnadb import db
from donnadb.config import Settings
from donnadb.dal import PostgresDataAccess
from donnadb.errors import DonnaError, UsageError
from donnadb.loadtest import runner
from donnadb.ops import drillfault as fault
from donnadb.ops.drillledger import (
    MAX_WRITERS,
    WRITE_TIMEOUT,
    Ledger,
    outage,
    read_requests,
    split_requests,
)

log = logging.getLogger(__name__)

CLUSTER_FAULTS = ("node", "postmaster")
#: The ledger's DAL gives up waiting for a pooled connection after this long.
POOL_TIMEOUT = 2.0
DRILL_CHAT_PREFIX = "drill_"
MISSING_SQL = """
SELECT id::text FROM unnest(%(ids)s::uuid[]) AS acked(id)
 WHERE NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = acked.id)
"""
IN_RECOVERY_SQL = "SELECT pg_is_in_recovery()"
DELETE_CHAT_SQL = "DELETE FROM chat_sessions WHERE chat_id = %(chat_id)s"


class WritesLost(DonnaError):
    """Acknowledged writes are missing on the leader after the drill."""


class DrillFailed(DonnaError):
    """The service did not come back within the drill's bounds."""


@dataclass
class DrillPlan:
    fault: str = "node"  # a cluster's fault; a single host always kills its postmaster
    switchover: bool = False
    users: int = 150
    spawn_rate: float = 25.0
    writers: int = 4
    rounds: int = 1
    warmup: float = 20.0  # seconds of full load before the fault
    settle: float = 20.0  # seconds of load after recovery
    recovery_timeout: float = 120.0
    rejoin_timeout: float = 300.0
    keep: bool = False
    dbname: str | None = None
    out_dir: Path = Path("drill-results")

    def validate(self) -> None:
        """:raises UsageError: a value that cannot work."""
        if self.fault not in CLUSTER_FAULTS:
            raise UsageError(f"--fault must be one of {', '.join(CLUSTER_FAULTS)}, "
                             f"not {self.fault!r}")
        if self.users < 1 or self.writers < 1 or self.rounds < 1 or self.spawn_rate <= 0:
            raise UsageError("--users, --writers and --rounds must be >= 1, --spawn-rate > 0")
        if min(self.warmup, self.settle) < 0 or min(self.recovery_timeout,
                                                     self.rejoin_timeout) <= 0:
            raise UsageError("--warmup/--settle must be >= 0 and the timeouts > 0")


@dataclass
class Target:
    """Where the drill runs: a single host, or a member of a Patroni cluster."""

    kind: str  # "single" or "cluster"
    data_dir: Path
    version: int
    cluster: str
    config: Path | None = None
    member: str | None = None
    leader: str | None = None

    def action(self, plan: DrillPlan) -> str:
        """One line: what a round does to the service."""
        if self.kind == "single":
            return (f"SIGKILL the postmaster of {self.data_dir}, then "
                    f"`{' '.join(fault.start_command(self.version, self.cluster))}`")
        if plan.switchover:
            return f"switch over from the leader {self.leader} (patronictl switchover)"
        if plan.fault == "postmaster":
            return f"SIGKILL the postmaster of the leader {self.member} (Patroni restarts it)"
        return (f"freeze the leader {self.member} (SIGSTOP patroni and PostgreSQL) until "
                "another member leads and takes writes, then SIGCONT it")


def detect(settings: Settings, plan: DrillPlan) -> Target:
    """The target: a cluster member when ``PATRONI_CONFIG`` is set, else a single host.

    :raises DrillRefused: a fault is asked on a member that does not lead, or the node
        fault where systemd is not PID 1.
    :raises FaultFailed: patronictl cannot list the cluster.
    """
    here = (fault.data_dir(settings), settings.pg_version, settings.pg_cluster)
    if settings.patroni_config is None:
        return Target("single", *here)
    me = fault.member_name(settings.patroni_config)
    if plan.switchover:
        lead = fault.leader(fault.members(settings.patroni_config))
        if lead is None:
            raise fault.DrillRefused("the cluster has no leader to switch over from")
        return Target("cluster", *here, settings.patroni_config, me, lead.name)
    fault.require_leader(settings.patroni_config, me)
    if plan.fault == "node":
        fault.require_systemd()
    return Target("cluster", *here, settings.patroni_config, me, me)


# ------------------------------------------------------------------------ one round
@dataclass
class RoundResult:
    round: int
    action: str
    downtime_s: float | None
    acknowledged: int
    lost: int
    lost_ids: list[str]
    ledger_failed: int
    ledger_failed_in_window: int
    ledger_errors: dict[str, int]
    requests: dict[str, Any]
    restart_s: float | None = None
    leader_before: str | None = None
    leader_after: str | None = None
    rejoined: bool | None = None
    rejoin_s: float | None = None
    out_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Called after recovery, before the ledger is read back (tests plant a loss here).
CheckHook = Callable[[str, list[str]], None]


@dataclass
class _Load:
    proc: subprocess.Popen
    log: Any
    requests: Path


def _start_load(plan: DrillPlan, settings: Settings, out: Path) -> _Load:
    requests = out / "requests.log"
    budget = plan.warmup + plan.recovery_timeout + plan.rejoin_timeout + plan.settle + 60
    opts = runner.RunOptions(users=plan.users, spawn_rate=plan.spawn_rate,
                             duration=f"{math.ceil(budget + plan.users / plan.spawn_rate)}s",
                             out_dir=out, dbname=plan.dbname,
                             pgbouncer_port=settings.pgbouncer_port,
                             extra_args=["--donna-request-log", str(requests)])
    logf = (out / "locust.log").open("w", encoding="utf-8")
    return _Load(runner.start(runner.locust_command(opts), logf, settings), logf, requests)


def _stop_load(load: _Load) -> None:
    if load.proc.poll() is None:
        load.proc.send_signal(signal.SIGTERM)
        try:
            load.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            load.proc.kill()
            load.proc.wait(timeout=10)
    load.log.close()


def _wait(predicate: Callable[[], bool], timeout: float, ledger: Ledger | None = None,
          step: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout``; keeps the ledger's writers going.
    A patronictl that fails while the cluster changes hands counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger is not None:
            ledger.watch()
        try:
            if predicate():
                return True
        except fault.FaultFailed as exc:
            log.info("drill: still waiting (%s)", exc)
        time.sleep(step)
    return False


def _recovered(ledger: Ledger, fault_at: float) -> Callable[[], bool]:
    """Writes failed and succeed again; with no failure yet, not before a write could
    have timed out (a write hanging on a frozen server is no failure until then)."""
    def check() -> bool:
        now = time.time()
        attempts = ledger.snapshot()
        if not any(a.failed(now) for a in attempts if a.end is None or a.end >= fault_at):
            return now - fault_at > WRITE_TIMEOUT + 1
        return outage(attempts, fault_at, now)[1] is not None

    return check


def _inject(target: Target, plan: DrillPlan, settings: Settings, ledger: Ledger,
            fault_at: float, result: dict[str, Any]) -> None:
    """Do the round's fault and undo it; waits until writes succeed again.

    :raises DrillFailed: writes did not come back within the plan's bounds.
    """
    recovered = _recovered(ledger, fault_at)
    if target.kind == "single":
        fault.kill_postmaster(target.data_dir)
        result["restart_s"] = round(fault.start_cluster(
            target.version, target.cluster, timeout=plan.recovery_timeout), 3)
    elif plan.switchover:
        fault.switchover(target.config)
    elif plan.fault == "postmaster":
        fault.kill_postmaster(target.data_dir)
    else:
        fault.freeze_node(settings)
        try:
            promoted = _wait(lambda: (lead := fault.leader(fault.members(target.config)))
                             is not None and lead.name != target.member,
                             plan.recovery_timeout, ledger, step=1.0)
            came_back = promoted and _wait(recovered, plan.recovery_timeout, ledger)
        finally:
            fault.resume_node(settings)
            result["resumed_at"] = time.time()
        if not came_back:
            raise DrillFailed(f"no other member took over writes within "
                              f"{plan.recovery_timeout:g}s of freezing {target.member}; "
                              "check `patronictl list` and the etcd members")
    if not _wait(recovered, plan.recovery_timeout, ledger):
        raise DrillFailed(f"writes did not succeed again within {plan.recovery_timeout:g}s "
                          "of the fault; check `pg_lsclusters` / `patronictl list`")


def _rejoin(target: Target, plan: DrillPlan, ledger: Ledger, old_leader: str,
            since: float, result: dict[str, Any]) -> None:
    """Wait until the old leader runs again as a member (a replica after a failover)."""
    def back() -> bool:
        found = fault.members(target.config)
        me = next((m for m in found if m.name == old_leader), None)
        lead = fault.leader(found)
        result["leader_after"] = lead.name if lead else None
        if me is None or lead is None:
            return False
        return me.replica_running or (me is lead and me.state in fault.RUNNING_STATES)

    result["rejoined"] = _wait(back, plan.rejoin_timeout, ledger, step=1.0)
    if result["rejoined"]:
        result["rejoin_s"] = round(time.time() - since, 3)


def _read_back(settings: Settings, plan: DrillPlan, ids: list[str]) -> list[str]:
    """The acknowledged ids missing on the leader (read through the write route).

    :raises DrillFailed: the write route leads to a server in recovery.
    """
    with db.connection("app", settings=settings, dbname=plan.dbname, autocommit=True) as c:
        if c.execute(IN_RECOVERY_SQL).fetchone()[0]:
            raise DrillFailed("the write route leads to a replica: cannot check the ledger "
                              "on the leader; check DB_HOST/PGBOUNCER_PORT and HAProxy")
        return [r[0] for r in c.execute(MISSING_SQL, {"ids": ids}).fetchall()]


def _drop_chat_quietly(settings: Settings, plan: DrillPlan, chat_id: str) -> None:
    """Remove the drill's chat (its messages go by cascade); a failure is only logged:
    the drill's own verdict matters more than its litter."""
    try:
        with db.connection("app", settings=settings, dbname=plan.dbname,
                           autocommit=True) as c:
            c.execute(DELETE_CHAT_SQL, {"chat_id": chat_id})
    except Exception as exc:  # noqa: BLE001
        log.warning("drill chat %s not removed (%s): delete that chat_sessions row by hand",
                    chat_id, exc)


def run_round(n: int, target: Target, plan: DrillPlan, settings: Settings,
              check_hook: CheckHook | None = None) -> RoundResult:
    """One round: load and ledger, the fault, recovery, read-back; the figures.

    :raises DrillFailed: the service did not come back in time (the load is stopped and,
        for a frozen node, the node resumed, before this is raised).
    :raises FaultFailed, DrillRefused: the fault could not be done.
    """
    out = plan.out_dir / f"round-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, mode=0o700)
    chat_id = f"{DRILL_CHAT_PREFIX}{uuid.uuid4().hex}"
    leader_before = target.leader
    if target.kind == "cluster":
        lead = fault.leader(fault.members(target.config))
        leader_before = lead.name if lead else None
    ledger_settings = settings.model_copy(update={"db_max_connections": MAX_WRITERS + 4})
    dal = PostgresDataAccess(ledger_settings, dbname=plan.dbname, pool_timeout=POOL_TIMEOUT)
    dal.create_chat_session(chat_id, None, {"drill": True}, title="failure drill")
    extra: dict[str, Any] = {}
    try:
        load = _start_load(plan, settings, out)
        ledger = Ledger(dal, chat_id, plan.writers)
        try:
            ledger.start()
            loaded_at = time.time() + plan.users / plan.spawn_rate
            time.sleep(plan.users / plan.spawn_rate + plan.warmup)
            if load.proc.poll() is not None:
                raise DrillFailed(f"Locust stopped before the fault (exit "
                                  f"{load.proc.returncode}); see {out / 'locust.log'}")
            fault_at = time.time()
            _inject(target, plan, settings, ledger, fault_at, extra)
            if target.kind == "cluster" and leader_before:
                _rejoin(target, plan, ledger, leader_before,
                        extra.get("resumed_at", fault_at), extra)
            _wait(lambda: False, plan.settle, ledger)
        finally:
            ledger.stop()
            _stop_load(load)
        attempts = ledger.snapshot()
        # Judged once every write has ended (or hung past the timeout).
        first_fail, recovered_at = outage(attempts, fault_at, time.time())
        if recovered_at is None:
            raise DrillFailed("no write succeeded after the first failed one: the service "
                              "did not come back; check `pg_lsclusters` / `patronictl list`")
        acked = ledger.acknowledged()
        if check_hook is not None:
            check_hook(chat_id, acked)
        missing = _read_back(settings, plan, acked)
    finally:
        dal.close()
        if not plan.keep:
            _drop_chat_quietly(settings, plan, chat_id)
    now = time.time()
    failures = [a for a in attempts if a.failed(now)]
    errors: dict[str, int] = {}
    for a in failures:
        errors[a.error or "Timeout"] = errors.get(a.error or "Timeout", 0) + 1
    return RoundResult(
        round=n, action=target.action(plan),
        downtime_s=round(recovered_at - first_fail, 3), acknowledged=len(acked),
        lost=len(missing), lost_ids=missing, ledger_failed=len(failures),
        ledger_failed_in_window=sum(1 for a in failures if first_fail <= a.start
                                    <= recovered_at),
        ledger_errors=errors,
        requests=split_requests(read_requests(load.requests), loaded_at, fault_at,
                                recovered_at),
        restart_s=extra.get("restart_s"), leader_before=leader_before,
        leader_after=extra.get("leader_after", leader_before),
        rejoined=extra.get("rejoined"), rejoin_s=extra.get("rejoin_s"), out_dir=str(out))


# ------------------------------------------------------------------------ the drill
@dataclass
class DrillReport:
    target: str
    action: str
    rounds: list[RoundResult] = field(default_factory=list)
    #: Why fewer rounds ran than asked (None: all ran).
    stopped: str | None = None

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.rounds)

    def ranges(self) -> dict[str, dict[str, float | None]]:
        """min and max over the rounds of the figures worth comparing."""
        out = {}
        for key in ("downtime_s", "rejoin_s", "restart_s"):
            values = [getattr(r, key) for r in self.rounds if getattr(r, key) is not None]
            out[key] = {"min": min(values) if values else None,
                        "max": max(values) if values else None}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "action": self.action, "lost": self.lost,
                "ok": self.lost == 0 and self.stopped is None
                and all(r.rejoined is not False for r in self.rounds),
                "stopped": self.stopped,
                "rounds": [r.to_dict() for r in self.rounds], "range": self.ranges()}


def _leader_name(target: Target) -> str | None:
    lead = fault.leader(fault.members(target.config))
    return lead.name if lead else None


def _back_to(target: Target, plan: DrillPlan) -> None:
    """Before another fault round: make this member the leader again (patronictl).

    With synchronous_mode Patroni switches over only to the synchronous standby.

    :raises DrillRefused: this member does not become the synchronous standby in time.
    :raises DrillFailed: it did not lead again after the switchover.
    """
    def sync_standby() -> bool:
        found = fault.members(target.config)
        me = next((m for m in found if m.name == target.member), None)
        return me is not None and (me.role in ("Leader", "Sync Standby")
                                   or not any(m.role == "Sync Standby" for m in found))

    if _leader_name(target) == target.member:
        return
    if not _wait(sync_standby, plan.recovery_timeout, step=1.0):
        raise fault.DrillRefused(
            f"{target.member} is not the synchronous standby, so Patroni will not switch "
            f"over to it; run the next rounds on the leader {_leader_name(target)}")
    if _leader_name(target) == target.member:
        return
    fault.switchover(target.config, candidate=target.member)
    if not _wait(lambda: _leader_name(target) == target.member, plan.recovery_timeout,
                 step=1.0):
        raise DrillFailed(f"{target.member} did not lead again within "
                          f"{plan.recovery_timeout:g}s of the switchover back")


def run(plan: DrillPlan, settings: Settings, *, target: Target | None = None,
        check_hook: CheckHook | None = None,
        progress: Callable[[str], None] | None = None) -> DrillReport:
    """Run ``plan.rounds`` rounds; the report (check it with :func:`raise_for_failure`).

    :raises UsageError: a bad plan. :raises DrillRefused: not the leader (cluster).
    :raises PreconditionError: Locust or the seeded data is missing (nothing done).
    :raises DrillFailed, FaultFailed: the service did not come back, or a fault failed.
    """
    plan.validate()
    target = target or detect(settings, plan)
    runner.preflight(runner.RunOptions(users=plan.users, dbname=plan.dbname,
                                       pgbouncer_port=settings.pgbouncer_port), settings)
    report = DrillReport(target.kind, target.action(plan))
    for n in range(1, plan.rounds + 1):
        if n > 1 and target.kind == "cluster" and not plan.switchover:
            try:
                _back_to(target, plan)
            except fault.DrillRefused as exc:
                report.stopped = f"stopped after round {n - 1}: {exc}"
                break
        if progress:
            progress(f"round {n}/{plan.rounds}: {target.action(plan)}")
        report.rounds.append(run_round(n, target, plan, settings, check_hook))
    return report


def raise_for_failure(report: DrillReport) -> None:
    """:raises WritesLost: any acknowledged write is missing (the ids are in the report).
    :raises DrillFailed: an old leader did not rejoin, or fewer rounds ran than asked
        (the report says why)."""
    if report.lost:
        first = next(r for r in report.rounds if r.lost)
        raise WritesLost(f"{report.lost} acknowledged write(s) missing on the leader after "
                         f"the drill (round {first.round}: {first.lost_ids[:3]}); "
                         "the HA setup loses committed data: check synchronous_mode")
    stuck = next((r for r in report.rounds if r.rejoined is False), None)
    if stuck is not None:
        raise DrillFailed(f"the old leader {stuck.leader_before} did not rejoin as a replica "
                          f"within the rejoin timeout (round {stuck.round}); see "
                          "`patronictl list` and its Patroni log (pg_rewind)")
    if report.stopped:
        raise DrillFailed(report.stopped)

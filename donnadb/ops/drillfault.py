"""The failure drill's faults: what is killed, how it comes back, and who leads.

A single host (no ``PATRONI_CONFIG``): the postmaster of the Debian cluster is killed
with SIGKILL and started again the way the host runs it (systemd's
``postgresql@<version>-<cluster>`` where systemd is PID 1, else ``pg_ctlcluster``).
A Patroni cluster: the leader's postmaster is killed (Patroni restarts it), or the whole
node is frozen (SIGSTOP to every process of ``patroni@<version>-<cluster>``'s cgroup stops
Patroni and PostgreSQL together, like a hung host) and later resumed; a planned
switchover goes through ``patronictl``. Who leads is always what ``patronictl list``
says: there is no failover logic here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from donnadb.config import Settings, debian_data_dir
from donnadb.errors import DonnaError, PreconditionError

log = logging.getLogger(__name__)
audit = logging.getLogger("donnadb.audit")

#: Bounds of the commands the drill runs (seconds).
PATRONICTL_TIMEOUT = 20.0
START_TIMEOUT = 60.0
SWITCHOVER_TIMEOUT = 90.0
#: patronictl's roles of a member that follows the leader, and its healthy states.
REPLICA_ROLES = ("Replica", "Sync Standby")
RUNNING_STATES = ("running", "streaming")


class DrillRefused(PreconditionError):
    """The drill cannot run here as asked (not the leader, no systemd, no cluster)."""


class FaultFailed(DonnaError):
    """The fault could not be injected or undone (a kill, a start, a switchover)."""


def systemd_running() -> bool:
    """True when systemd is PID 1 (a server), False in a container without it."""
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd``; :raises FaultFailed: it failed, hung or is not installed."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd="/")
    except FileNotFoundError:
        raise FaultFailed(f"{cmd[0]} is not installed on this host") from None
    except subprocess.TimeoutExpired:
        raise FaultFailed(f"`{' '.join(cmd)}` did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise FaultFailed(f"`{' '.join(cmd)}` exited {done.returncode}: {last}")
    return done


# --------------------------------------------------------------------- the postmaster
def postmaster_pid(data_dir: Path) -> int:
    """The running postmaster's pid, from ``postmaster.pid`` in ``data_dir``.

    :raises FaultFailed: no pid file (PostgreSQL is not running), or its pid is gone.
    """
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        raise FaultFailed(f"no postmaster.pid in {data_dir}: is PostgreSQL running "
                          "(`pg_lsclusters`)?") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise FaultFailed(f"postmaster pid {pid} of {data_dir} is not running: start it "
                          "first (`pg_lsclusters`)") from None
    return pid


def kill_postmaster(data_dir: Path) -> int:
    """SIGKILL the postmaster of ``data_dir``; its pid. :raises FaultFailed: see above."""
    pid = postmaster_pid(data_dir)
    os.kill(pid, signal.SIGKILL)
    audit.info("failure drill: postmaster killed",
                  extra={"audit": {"pid": pid, "data_dir": str(data_dir)}})
    return pid


def ctl_command(version: int, cluster: str, action: str) -> list[str]:
    """How this host starts, stops or restarts the Debian cluster: its systemd unit where
    systemd is PID 1 (so systemd keeps tracking it), else pg_ctlcluster."""
    if systemd_running():
        return ["systemctl", action, f"postgresql@{version}-{cluster}"]
    return ["pg_ctlcluster", str(version), cluster, action]


def start_command(version: int, cluster: str) -> list[str]:
    """How this host starts the Debian cluster (see :func:`ctl_command`)."""
    return ctl_command(version, cluster, "start")


def start_cluster(version: int, cluster: str, timeout: float = START_TIMEOUT) -> float:
    """Start the killed cluster again; seconds it took.

    A killed postmaster's backends exit on their own within moments; until they have,
    PostgreSQL refuses to start (its shared memory is still in use), so starting is
    retried until ``timeout``.

    :raises FaultFailed: it did not start within ``timeout``.
    """
    began = time.monotonic()
    cmd = start_command(version, cluster)
    if systemd_running():
        _noticed_down(f"postgresql@{version}-{cluster}", timeout)
    while True:
        try:
            _run(cmd, timeout=START_TIMEOUT)
            return time.monotonic() - began
        except FaultFailed as exc:
            if time.monotonic() - began > timeout:
                raise FaultFailed(f"PostgreSQL did not start again within {timeout:g}s after "
                                  f"the kill ({exc}); start it: `{' '.join(cmd)}`") from None
            time.sleep(0.5)


def _noticed_down(unit: str, timeout: float) -> None:
    """Wait (bounded) until systemd has seen the killed unit go down: a start asked for
    while it still calls the unit active does nothing, and the unit fails a moment
    later with nobody to start it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["systemctl", "is-active", unit], capture_output=True,
                               text=True, check=False).stdout.strip()
        if state not in ("active", "reloading", "deactivating"):
            return
        time.sleep(0.2)


# --------------------------------------------------------------------- Patroni
@dataclass
class Member:
    name: str
    host: str
    role: str
    state: str
    timeline: Any
    lag_mb: Any

    @property
    def replica_running(self) -> bool:
        return self.role in REPLICA_ROLES and self.state in RUNNING_STATES


def patroni_unit(settings: Settings) -> str:
    return f"patroni@{settings.pg_version}-{settings.pg_cluster}"


def member_name(config: Path) -> str:
    """This node's Patroni name (``name:`` in its configuration).

    :raises DrillRefused: the file cannot be read or names no member.
    """
    import yaml

    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DrillRefused(f"cannot read PATRONI_CONFIG {config} ({exc}); run donnactl "
                           "as root on a database host") from None
    name = doc.get("name") if isinstance(doc, dict) else None
    if not name:
        raise DrillRefused(f"PATRONI_CONFIG {config} has no `name:`; run `make deploy`")
    return str(name)


def members(config: Path) -> list[Member]:
    """``patronictl -c CONFIG list --format json``, one :class:`Member` per node.

    :raises FaultFailed: patronictl failed or printed no JSON.
    """
    done = _run(["patronictl", "-c", str(config), "list", "--format", "json"],
                timeout=PATRONICTL_TIMEOUT)
    try:
        rows = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        raise FaultFailed("patronictl list printed no JSON: run "
                          f"`patronictl -c {config} list` to see why") from None
    return [Member(name=str(r.get("Member", "")), host=str(r.get("Host", "")),
                   role=str(r.get("Role", "")), state=str(r.get("State", "")),
                   timeline=r.get("TL"), lag_mb=r.get("Lag in MB")) for r in rows]


def leader(found: list[Member]) -> Member | None:
    return next((m for m in found if m.role == "Leader"), None)


def require_leader(config: Path, me: str) -> list[Member]:
    """The members, when ``me`` leads. :raises DrillRefused: another member (or none) does."""
    found = members(config)
    lead = leader(found)
    if lead is None:
        raise DrillRefused("the cluster has no leader now (`patronictl list`): fix that "
                           "before a drill")
    if lead.name != me:
        raise DrillRefused(f"this host ({me}) is not the leader: run the drill on the leader "
                           f"{lead.name} ({lead.host})")
    return found


def require_systemd() -> None:
    """:raises DrillRefused: systemd is not PID 1 (the node fault needs it)."""
    if not systemd_running():
        raise DrillRefused("the node fault freezes the patroni unit through systemd, which "
                           "is not PID 1 here; use --fault postmaster")


#: Where a unit's cgroup lists its processes (cgroup v2, then v1's systemd hierarchy).
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"),
                Path("/sys/fs/cgroup/systemd"))


def unit_pids(unit: str) -> list[int]:
    """Every process of ``unit``, read from its cgroup (systemd names the group) in each
    hierarchy that has it (a hybrid host tracks processes in both v1 and v2).

    :raises FaultFailed: systemd does not know the unit, or its cgroup cannot be read.
    """
    group = _run(["systemctl", "show", "-p", "ControlGroup", "--value", unit],
                 timeout=30).stdout.strip()
    pids: set[int] = set()
    found = False
    for root in CGROUP_ROOTS:
        procs = root / group.lstrip("/") / "cgroup.procs"
        if group and procs.is_file():
            found = True
            # 0 stands for a process of another PID namespace; kill(0) would signal our
            # own process group.
            pids.update(int(p) for p in procs.read_text().split() if int(p) > 0)
    if not found:
        raise FaultFailed(f"cannot find the processes of {unit} (cgroup {group or 'unknown'}); "
                          "is it running?")
    return sorted(pids - {os.getpid()})


def _signal_unit(unit: str, signo: signal.Signals) -> int:
    """Send ``signo`` to every process of ``unit``, twice over its process list (a child
    forked while the first pass ran is caught by the second); how many got it."""
    done: set[int] = set()
    for _ in range(2):
        for pid in unit_pids(unit):
            if pid not in done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signo)
                    done.add(pid)
    return len(done)


def freeze_node(settings: Settings) -> None:
    """SIGSTOP Patroni and PostgreSQL together (every process of the unit's cgroup): a
    hung host. The signals are sent here, not by ``systemctl kill``, which cannot reach
    every process in some containers.

    :raises DrillRefused: systemd is not PID 1. :raises FaultFailed: no processes found.
    """
    require_systemd()
    count = _signal_unit(patroni_unit(settings), signal.SIGSTOP)
    audit.info("failure drill: node frozen",
               extra={"audit": {"unit": patroni_unit(settings), "processes": count}})


def resume_node(settings: Settings) -> None:
    """SIGCONT every process of the frozen unit. :raises FaultFailed: none found."""
    count = _signal_unit(patroni_unit(settings), signal.SIGCONT)
    audit.info("failure drill: node resumed",
               extra={"audit": {"unit": patroni_unit(settings), "processes": count}})


def switchover(config: Path, *, candidate: str | None = None) -> None:
    """A planned switchover through patronictl (Patroni picks the candidate unless named).

    :raises FaultFailed: patronictl refused or failed.
    """
    cmd = ["patronictl", "-c", str(config), "switchover", "--force"]
    if candidate:
        cmd += ["--candidate", candidate]
    _run(cmd, timeout=SWITCHOVER_TIMEOUT)
    audit.info("failure drill: switchover", extra={"audit": {"candidate": candidate}})


def data_dir(settings: Settings) -> Path:
    """The Debian cluster's data directory (Patroni keeps the same layout)."""
    return settings.pg_data_dir or debian_data_dir(settings.pg_version, settings.pg_cluster)

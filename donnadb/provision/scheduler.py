"""A scheduler for the /etc/cron.d jobs on hosts without systemd.

Where systemd is PID 1 the backup and ops jobs are systemd timers and nothing is
needed here. Elsewhere (containers, CI) they are /etc/cron.d files, which only fire
when a cron daemon runs: Debian's minimal images ship none, so install and start it.
"""

from __future__ import annotations

import posixpath
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from donnadb.errors import ConfigError
from donnadb.provision.facts import SystemdRunning
from donnadb.provision.settings import DeploySettings

CRON_PACKAGE = "cron"
#: Started by every job's OnFailure=: one line in the journal/syslog naming the unit.
FAILURE_UNIT = "donna-job-failed@.service"
FAILURE_UNIT_TEXT = """# Managed by the donnadb deploy: OnFailure= of every donnadb job.
[Unit]
Description=Report the failure of %i

[Service]
Type=oneshot
ExecStart=/usr/bin/logger --tag donnadb-jobs --priority daemon.err "%i failed; see journalctl -u %i"
"""
#: Where systemd (PID 1) loads system units from: the administrator's, then the runtime one.
SYSTEMD_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system")
# pidof exits 1 when no cron runs; the echo turns that into a value, not a failed fact.
CRON_RUNNING_CMD = "pidof cron >/dev/null && echo running || echo stopped"


@operation()
def cron_started():
    """Start the cron daemon when no cron process runs (it daemonises itself)."""
    if host.get_fact(Command, command=CRON_RUNNING_CMD) == "running":
        host.noop("cron is running")
    else:
        yield "/usr/sbin/cron"


@deploy("Scheduler for cron.d jobs (no systemd)")
def ensure_cron(settings: DeploySettings) -> None:
    """Install and run cron unless systemd's timers do the scheduling."""
    if host.get_fact(SystemdRunning):
        return
    installed = host.get_fact(DebPackages) or {}
    apt.packages(name="Install cron (systemd is not running)", packages=[CRON_PACKAGE],
                 update=CRON_PACKAGE not in installed,
                 cache_time=settings.pg_apt_cache_time)
    cron_started(name="Start cron (systemd is not running)")


def hardening(*, read_write: list[str], user: str | None = None,
              environment: dict[str, str] | None = None) -> str:
    """The [Service] lines every scheduled job gets: no privilege gain, a read-only
    system except ``read_write`` (a leading ``-`` marks a path that may be absent),
    a private /tmp, and a failure report (:data:`FAILURE_UNIT`).
    """
    lines = [f"User={user}"] if user else []
    lines += [f"Environment={k}={v}" for k, v in sorted((environment or {}).items())]
    lines += ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
              "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
              "ProtectKernelModules=yes", "ProtectControlGroups=yes", "LockPersonality=yes",
              f"ReadWritePaths={' '.join(read_write)}"]
    return "\n".join(lines) + "\n"


def on_failure() -> str:
    """The [Unit] line that reports a failed job."""
    return f"OnFailure={FAILURE_UNIT.replace('@', '@%n')}\n"


def _check_calendars(label: str, units: dict[str, tuple[str, str]]) -> None:
    """Refuse a timer whose OnCalendar systemd would not load, before anything changes.

    :raises ConfigError: ``systemd-analyze calendar`` refuses one (names job and value).
    """
    specs = {job: line.split("=", 1)[1] for job, (_, timer) in units.items()
             for line in timer.splitlines() if line.startswith("OnCalendar=")}
    if not specs:
        return
    # One round trip for every timer: the command prints the number of each refused one.
    checks = "; ".join(f"systemd-analyze calendar {shlex.quote(spec)} >/dev/null 2>&1 "
                       f"|| echo {n}" for n, spec in enumerate(specs.values()))
    refused = host.get_fact(Command, command=f"{checks}; true")
    if refused:
        job, spec = list(specs.items())[int(refused.split()[0])]
        raise ConfigError(f"{label} job {job!r}: OnCalendar {spec!r} is refused by "
                          f"`systemd-analyze calendar`; fix group_data {label}_schedule")


def install_jobs(
    *,
    label: str,
    prefix: str,
    unit_dir: str,
    units: dict[str, tuple[str, str]],
    removed: list[str],
    cron_file: str,
    cron_text: str,
) -> None:
    """Schedule jobs: systemd units where systemd runs, else one /etc/cron.d file.

    ``units`` maps a job to its (service, timer) unit texts, installed as
    ``{prefix}{job}.service|.timer`` in every case so a host that boots with systemd
    later has them; ``removed`` are jobs left out whose units must go. Without systemd
    the jobs are ``cron_text`` in ``cron_file`` (run by :func:`ensure_cron`'s daemon).

    :raises ConfigError: systemd runs but ``unit_dir`` is not a directory it loads, or
        it refuses a timer's OnCalendar.
    """
    systemd_runs = host.get_fact(SystemdRunning)
    if systemd_runs and posixpath.normpath(unit_dir) not in SYSTEMD_UNIT_DIRS:
        raise ConfigError(f"{label} units go to {unit_dir}, which systemd does not load "
                          f"units from, so their timers would never run; use one of "
                          f"{', '.join(SYSTEMD_UNIT_DIRS)}")
    if systemd_runs:
        _check_calendars(label, units)
    changed = [files.put(name=f"Install {FAILURE_UNIT}", src=StringIO(FAILURE_UNIT_TEXT),
                         dest=f"{unit_dir}/{FAILURE_UNIT}", user="root", group="root",
                         mode="644")]
    timers = {}
    for job, texts in units.items():
        for kind, text in zip(("service", "timer"), texts, strict=True):
            unit = f"{prefix}{job}.{kind}"
            timers[job] = files.put(name=f"Install {unit}", src=StringIO(text),
                                    dest=f"{unit_dir}/{unit}", user="root", group="root",
                                    mode="644")
            changed.append(timers[job])
    for job in removed:
        # What `systemctl disable` removes, then the units themselves.
        for path in (f"{unit_dir}/timers.target.wants/{prefix}{job}.timer",
                     f"{unit_dir}/{prefix}{job}.timer", f"{unit_dir}/{prefix}{job}.service"):
            changed.append(files.file(name=f"Remove {path} (job left out)", path=path,
                                      present=False))
    if systemd_runs:
        files.file(name=f"No cron duplicate of the timers ({cron_file})", path=cron_file,
                   present=False)
        systemd.daemon_reload(name=f"Reload systemd ({label} units changed)",
                              _if=lambda: any(op.did_change() for op in changed))
        for job, timer in timers.items():
            # Restarted so an active timer surely recomputes its next run from the new file.
            systemd.service(name=f"Restart {prefix}{job}.timer (schedule changed)",
                            service=f"{prefix}{job}.timer", restarted=True,
                            _if=timer.did_change)
            systemd.service(name=f"Enable {prefix}{job}.timer",
                            service=f"{prefix}{job}.timer", running=True, enabled=True)
        return
    # cron reads /etc/cron.d files that are not group/world-writable; no secrets inside.
    files.put(name=f"Schedule the {label} jobs in {cron_file} (systemd is not running)",
              src=StringIO(cron_text), dest=cron_file, user="root", group="root", mode="644")

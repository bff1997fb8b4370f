"""The scheduled operations jobs: partition maintenance, retention, metrics textfile.

Like the backup jobs (provision/backups.py): systemd service + timer files are always
installed under /etc/systemd/system; they are enabled only where systemd is PID 1.
Elsewhere (containers, CI) the same jobs go to /etc/cron.d/donna-ops, each run under
``flock -n`` so a slow run is skipped rather than stacked. Every job runs the
installed ``donnactl`` (provision/install.py) as the ``donna-ops`` system user with
its own passfile (provision/consumers.py), never as root; the units add systemd's
sandboxing and a failure report. donnactl reads /etc/donnadb/donnadb.env itself and
logs one JSON line per run to the user's own OPS_LOG_FILE.

An application host in dual-write (no database) gets the metrics job alone, as the
same user without a passfile: ``donnactl metrics textfile --host-only`` writes that
host's own figures (:func:`install_host_metrics_job`).

Settings (group_data/all.py): ``ops_schedule`` (job -> (OnCalendar, cron) or None to
leave a job out), ``ops_env`` (thresholds and paths, written to donnadb.env by
provision/envfile.py).
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from donnadb import config
from donnadb.errors import ConfigError
from donnadb.provision import consumers, install, logs, scheduler
from donnadb.provision.settings import DeploySettings


@dataclass(frozen=True)
class Job:
    name: str
    on_calendar: str
    cron: str
    what: str
    args: tuple[str, ...]
    #: Spread daily jobs over a few minutes; the per-minute scrape must not drift.
    randomized_delay_s: int = 300


#: job -> (systemd OnCalendar, cron schedule, what it does, donnactl arguments)
DEFAULT_JOBS = {
    "partitions": Job("partitions", "*-*-* 01:10:00", "10 1 * * *",
                      "Premake, archive and drop system_logs partitions",
                      ("partitions", "maintain", "--yes", "--json")),
    "retention": Job("retention", "*-*-* 01:40:00", "40 1 * * *",
                     "Delete rows past their retention", ("retention", "run", "--yes", "--json")),
    "metrics": Job("metrics", "*-*-* *:*:00", "* * * * *",
                   "Write the donnadb metrics for node_exporter's textfile collector",
                   ("metrics", "textfile"), randomized_delay_s=0),
}
UNIT_DIR = "/etc/systemd/system"
CRON_FILE = "/etc/cron.d/donna-ops"
#: The jobs' system user: a consumer (group_data db_consumers) like the application.
OPS_USER = "donna-ops"
LOG_DIR = logs.LOG_DIR
CRON_LOG = f"{LOG_DIR}/{OPS_USER}-cron.log"
#: The jobs' JSON run log (OPS_LOG_FILE), apart from root's donnactl.jsonl.
JOB_LOG = f"{LOG_DIR}/{OPS_USER}.jsonl"
PREFIX = "donna-ops-"


def load_jobs(data: Any) -> tuple[dict[str, Job], list[str]]:
    """(the jobs to schedule, the names left out) from group_data ``ops_schedule``.

    :raises ConfigError: an unknown job, or a schedule that is not (OnCalendar, cron).
    """
    jobs = dict(DEFAULT_JOBS)
    dropped = []
    for name, value in (data.get("ops_schedule") or {}).items():
        if name not in DEFAULT_JOBS:
            raise ConfigError(f"group_data ops_schedule: unknown job {name!r}; "
                              f"use {', '.join(DEFAULT_JOBS)}")
        if value is None:
            del jobs[name]
            dropped.append(name)
            continue
        if not (isinstance(value, tuple | list) and len(value) == 2
                and all(isinstance(v, str) and v.strip() and "\n" not in v for v in value)
                and len(value[1].split()) == 5):
            raise ConfigError(f"group_data ops_schedule[{name!r}] must be (OnCalendar, "
                              "cron), e.g. ('*-*-* 01:10:00', '10 1 * * *'), or None")
        job = DEFAULT_JOBS[name]
        jobs[name] = Job(name, value[0], value[1], job.what, job.args, job.randomized_delay_s)
    return jobs, dropped


def host_metrics_job(settings: DeploySettings, job: Job) -> Job:
    """The metrics ``job`` of a host without a database: this host's own figures only,
    to the textfile node_exporter reads (named, as that host's settings file has no
    METRICS_TEXTFILE)."""
    return dataclasses.replace(
        job, what="Write this host's dual-write figures for node_exporter's textfile "
                  "collector",
        args=("metrics", "textfile", "--host-only", textfile_path(settings)))


def job_environment(settings: DeploySettings, *, login: bool = True) -> dict[str, str]:
    """What the jobs' user needs besides donnadb.env: its log and, where the jobs log in
    (``login``), its passfile and the migrations shipped with the code (status compares
    against them)."""
    env = {"OPS_LOG_FILE": JOB_LOG}
    if login:
        env |= {"DB_PASSFILE": consumers.passfile_of(settings, OPS_USER),
                "SCHEMA_DIR": install.schema_dir(settings)}
    return env


def command(settings: DeploySettings, job: Job) -> str:
    return " ".join(shlex.quote(a) for a in (install.donnactl_path(settings), *job.args))


def service_unit(settings: DeploySettings, job: Job, *, login: bool = True) -> str:
    sandbox = scheduler.hardening(read_write=[textfile_dir(settings), LOG_DIR], user=OPS_USER,
                                  environment=job_environment(settings, login=login))
    return f"""# Managed by the donnadb deploy (group_data ops_schedule).
[Unit]
Description={job.what}
After=postgresql.service
{scheduler.on_failure()}
[Service]
Type=oneshot
UMask=0077
Nice=10
WorkingDirectory=/
{sandbox}ExecStart={command(settings, job)}
"""


def timer_unit(job: Job) -> str:
    return f"""# Managed by the donnadb deploy (group_data ops_schedule).
[Unit]
Description={job.what} (schedule)

[Timer]
OnCalendar={job.on_calendar}
RandomizedDelaySec={job.randomized_delay_s}
AccuracySec=1s
Persistent={'true' if job.randomized_delay_s else 'false'}

[Install]
WantedBy=timers.target
"""


def cron_text(settings: DeploySettings, jobs: dict[str, Job], *, login: bool = True) -> str:
    lines = ["# Managed by the donnadb deploy: used where systemd is not running.",
             "SHELL=/bin/sh", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    lines += [f"{k}={v}" for k, v in sorted(job_environment(settings, login=login).items())]
    for job in jobs.values():
        lock = f"/run/lock/{PREFIX}{job.name}.lock"
        lines.append(f"# {job.what}")
        lines.append(f"{job.cron} {OPS_USER} cd / && flock -n {lock} "
                     f"{command(settings, job)} >>{CRON_LOG} 2>&1")
    return "\n".join(lines) + "\n"


def textfile_path(settings: DeploySettings) -> str:
    """METRICS_TEXTFILE (group_data ops_env, else the runtime default)."""
    return str(settings.ops_env.get("METRICS_TEXTFILE")
               or config.Settings.model_fields["metrics_textfile"].default)


def textfile_dir(settings: DeploySettings) -> str:
    """The directory of METRICS_TEXTFILE."""
    return posixpath.dirname(textfile_path(settings))


@deploy("Operations jobs")
def install_ops_jobs(settings: DeploySettings) -> None:
    """Timers (systemd) or /etc/cron.d/donna-ops for partitions, retention and metrics.

    :raises ConfigError: group_data ops_schedule is malformed.
    """
    jobs, dropped = load_jobs(host.data)
    if OPS_USER not in settings.db_consumers:
        raise ConfigError(f"group_data db_consumers must keep {OPS_USER!r}: the ops jobs "
                          "run as that user with its own passfile")
    logs.log_directory()
    # Where the jobs logged while they ran as root.
    files.file(name="Remove the former root-run cron log", path=f"{LOG_DIR}/ops-cron.log",
               present=False)
    _schedule(settings, jobs, dropped, login=True)


@deploy("Operations jobs: this host's metrics")
def install_host_metrics_job(settings: DeploySettings) -> None:
    """The metrics job alone (:func:`host_metrics_job`) on a host without a database, as
    :data:`OPS_USER` (made here, in the consumers' group, which reads the dual-write
    figures; no passfile), unless group_data ops_schedule leaves metrics out.

    :raises ConfigError: group_data ops_schedule is malformed.
    """
    jobs, dropped = load_jobs(host.data)
    consumers.system_user(OPS_USER)
    logs.log_directory()
    scheduled = {"metrics": host_metrics_job(settings, jobs["metrics"])} \
        if "metrics" in jobs else {}
    _schedule(settings, scheduled, [job for job in dropped if job == "metrics"], login=False)


def _schedule(settings: DeploySettings, jobs: dict[str, Job], dropped: list[str], *,
              login: bool) -> None:
    """The jobs' logs, the textfile directory and the jobs' units or cron file."""
    for path in (CRON_LOG, JOB_LOG):
        files.file(name=f"{path} is {OPS_USER}'s", path=path, user=OPS_USER, group=OPS_USER,
                   mode="600")
    if "metrics" in jobs:
        # node_exporter (its own user) reads the textfile: the directory is not secret.
        files.directory(name=f"Create the metrics textfile directory {textfile_dir(settings)}",
                        path=textfile_dir(settings), user=OPS_USER, group=OPS_USER,
                        mode="755")
    scheduler.install_jobs(
        label="ops", prefix=PREFIX, unit_dir=UNIT_DIR,
        units={j.name: (service_unit(settings, j, login=login), timer_unit(j))
               for j in jobs.values()},
        removed=list(dropped), cron_file=CRON_FILE,
        cron_text=cron_text(settings, jobs, login=login))

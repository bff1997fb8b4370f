"""Backups on the host: the repository, the settings file and the schedule.

The schedule is systemd timers (daily snapshot, daily prune, weekly ``verify
--restore`` drill, hourly freshness check). The unit files are always installed; they
are enabled only where systemd is PID 1. Elsewhere (containers, CI) the same jobs go
to /etc/cron.d/donna-backup. Every job runs ``<donnadb_install_dir>/bin/donna-backup
JOB`` (shipped by provision/install.py), which calls ``donnactl backup ...``.

pgBackRest is always installed and, unless ``pgbackrest_enabled = False`` (or on a
Patroni cluster without a bucket), configured: pgbackrest.conf with repo1 on this
host and, when ``backup_s3`` names a bucket, repo2 in it encrypted by pgBackRest with
a passphrase generated on the host (a 0600 include file of the cluster owner's, never
in pgbackrest.conf), WAL archiving in the cluster's conf.d (a restart, done here only
when that file changed), the stanza (created when new or when the repositories
changed), a first full backup into every repository without one, weekly full + daily
differential backups into every repository and a weekly ``pgbackrest verify``. On a
cluster the members share repo2 alone and reach each other through pgBackRest's TLS
server (:func:`_install_pgbackrest_member`); Patroni archives (:func:`archive_parameters`).

Settings (group_data/all.py, all optional here): ``backup_repo_dir``, ``backup_jobs``,
``backup_compress_level``, ``backup_keep_{last,daily,weekly,monthly}``,
``backup_max_age_hours``, ``backup_signing_key_file`` (generated once if missing),
``backup_age_recipients`` (age public keys: installs ``age`` and writes
``backup_age_recipients_file``, root:postgres 0640),
``backup_s3`` (bucket, prefix, region, storage_class, sse,
kms_key_id, endpoint_url), ``backup_schedule``, ``backup_env_file``,
``pgbackrest_enabled``, ``pgbackrest_repo_path``, ``pgbackrest_config``,
``pgbackrest_stanza``, ``pgbackrest_retention_full``, ``pgbackrest_retention_diff``,
``pgbackrest_s3_retention_full``, ``pgbackrest_s3_retention_diff``,
``pgbackrest_s3_key_type``;
and where the schedule goes, ``backup_unit_dir``, ``backup_unit_prefix`` and
``backup_cron_file`` (the tests point them away from the deployed jobs).
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import shlex
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.api.host import Host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from donnadb import config
from donnadb.backup import agecrypt, pitr
from donnadb.errors import ConfigError
from donnadb.provision import consumers, ha, hostcopy, install, logs, scheduler, tls
from donnadb.provision.settings import DeploySettings

#: job -> (systemd OnCalendar, cron schedule, what it does)
DEFAULT_SCHEDULE = {
    "snapshot": ("*-*-* 02:15:00", "15 2 * * *", "Logical snapshot (pg_dump -Fd) of Donna's DB"),
    "prune": ("*-*-* 03:30:00", "30 3 * * *", "Apply the backup retention policy"),
    # The job keeps its name (units, group_data overrides); it runs `backup drill`.
    "verify": ("Sun *-*-* 04:00:00", "0 4 * * 0",
               "Weekly restore drill: counts, checksums and PITR of the newest backups"),
    "check": ("*-*-* *:40:00", "40 * * * *", "Fail when the last good backup is too old"),
}
#: Added when pgBackRest is enabled.
PHYSICAL_SCHEDULE = {
    "physical-full": ("Sat *-*-* 01:00:00", "0 1 * * 6", "pgBackRest weekly full backup"),
    # systemd's weekday ranges do not wrap around: "Sun..Fri" is refused.
    "physical-diff": ("Sun,Mon..Fri *-*-* 01:00:00", "0 1 * * 0-5",
                      "pgBackRest daily differential backup"),
    "physical-verify": ("Sun *-*-* 05:00:00", "0 5 * * 0",
                        "pgBackRest weekly verify of every repository"),
}
UNIT_DIR = "/etc/systemd/system"
UNIT_PREFIX = "donna-backup-"
CRON_FILE = "/etc/cron.d/donna-backup"

#: group_data key -> environment variable read by donnadb.config.Settings.
ENV_KEYS = {
    "backup_repo_dir": "BACKUP_REPO_DIR",
    "backup_jobs": "BACKUP_JOBS",
    "backup_compress_level": "BACKUP_COMPRESS_LEVEL",
    "backup_keep_last": "BACKUP_KEEP_LAST",
    "backup_keep_daily": "BACKUP_KEEP_DAILY",
    "backup_keep_weekly": "BACKUP_KEEP_WEEKLY",
    "backup_keep_monthly": "BACKUP_KEEP_MONTHLY",
    "backup_max_age_hours": "BACKUP_MAX_AGE_HOURS",
    "backup_encryption_key_file": "BACKUP_ENCRYPTION_KEY_FILE",
    "backup_signing_key_file": "BACKUP_SIGNING_KEY_FILE",
}
#: Where the deploy writes group_data's backup_age_recipients unless it says otherwise.
AGE_RECIPIENTS_FILE = "/etc/donnadb/backup-age-recipients.txt"
#: Where the deploy generates the manifest signing key unless group_data says otherwise.
SIGNING_KEY_FILE = str(config.DEFAULT_SIGNING_KEY_FILE)
S3_KEYS = ("bucket", "prefix", "region", "storage_class", "sse", "kms_key_id", "endpoint_url",
           "ca_file")


@dataclass(frozen=True)
class BackupDeploy:
    repo_dir: str
    env_file: str
    env: dict[str, str]
    schedule: dict[str, tuple[str, str, str]]
    script: str
    #: The jobs' user's own passfile (consumers.passfile_of).
    passfile: str
    unit_dir: str = UNIT_DIR
    unit_prefix: str = UNIT_PREFIX
    cron_file: str = CRON_FILE
    pgbackrest: bool = False
    pgbackrest_config: str = "/etc/pgbackrest/pgbackrest.conf"
    pgbackrest_repo: str = "/var/lib/pgbackrest"
    pgbackrest_stanza: str = "donna"
    pgbackrest_retention_full: int = 2
    pgbackrest_retention_diff: int = 6
    #: The directory of pgBackRest's secret files (root:postgres 0750).
    pgbackrest_include: str = "/etc/pgbackrest/conf.d"
    #: repo2 (group_data backup_s3 with a bucket).
    pgbackrest_s3: pitr.S3Repo | None = None
    #: group_data backup_age_recipients: public keys new backups are encrypted to.
    age_recipients: tuple[str, ...] = ()
    age_recipients_file: str = AGE_RECIPIENTS_FILE


#: group_data keys of pgBackRest's place and retention -> BackupDeploy fields.
PGBACKREST_KEYS = ("pgbackrest_config", "pgbackrest_repo_path", "pgbackrest_stanza",
                   "pgbackrest_retention_full", "pgbackrest_retention_diff",
                   "pgbackrest_include_path")


def _s3_env(s3: dict[str, Any]) -> dict[str, str]:
    """``BACKUP_S3_*`` lines from group_data's ``backup_s3``."""
    unknown = set(s3) - set(S3_KEYS)
    if unknown:
        raise ConfigError(f"group_data backup_s3 has unknown keys {sorted(unknown)}; "
                          f"use {', '.join(S3_KEYS)}")
    return {f"BACKUP_S3_{key.upper()}": str(value) for key, value in s3.items()
            if value is not None}


def _age_recipients(data: Any) -> tuple[str, ...]:
    """group_data's ``backup_age_recipients``, each an age public key."""
    keys = data.get("backup_age_recipients") or []
    if isinstance(keys, str) or not all(isinstance(k, str) and agecrypt.RECIPIENT_RE.match(k)
                                        for k in keys):
        raise ConfigError("group_data backup_age_recipients must be a list of age public "
                          "keys (age1..., from `age-keygen -y key.txt`), never a private key")
    return tuple(keys)


def _pgbackrest_on(data: Any, settings: DeploySettings) -> bool:
    """group_data pgbackrest_enabled: None (the default) is on, except on a cluster
    without a bucket in backup_s3.

    :raises ConfigError: asked for on a cluster without a bucket.
    """
    wanted = data.get("pgbackrest_enabled")
    if wanted is not None and str(wanted).lower() in ("false", "0", "no", "off", ""):
        return False
    if settings.ha and not (data.get("backup_s3") or {}).get("bucket"):
        if wanted is None:
            return False
        # A member's own disk is no repository for the cluster: each new leader would
        # archive WAL where the others never look, and it is lost with the member.
        raise ConfigError("group_data pgbackrest_enabled with ha = True needs a bucket in "
                          "backup_s3: the members share their pgBackRest repository there")
    return True


def s3_repo(data: Any) -> pitr.S3Repo | None:
    """repo2 from group_data's ``backup_s3`` (the bucket of the logical backups, under
    ``<prefix>pgbackrest``), or None without a bucket.

    :raises ConfigError: the endpoint is not https (pgBackRest speaks TLS only) or a
        pgbackrest_s3_* value is malformed.
    """
    s3 = data.get("backup_s3") or {}
    if not s3.get("bucket"):
        return None
    region = s3.get("region") or "us-east-1"
    endpoint, port, style = f"s3.{region}.amazonaws.com", 443, "host"
    if s3.get("endpoint_url"):
        url = urlsplit(str(s3["endpoint_url"]))
        if url.scheme != "https" or not url.hostname:
            raise ConfigError(f"group_data backup_s3 endpoint_url {s3['endpoint_url']!r}: "
                              "pgBackRest reaches S3 over TLS only; use https://host[:port]")
        # Servers other than AWS rarely resolve bucket.host names: path style.
        endpoint, port, style = url.hostname, url.port or 443, "path"
    key_type = data.get("pgbackrest_s3_key_type") or "auto"
    if key_type not in ("auto", "shared"):
        raise ConfigError(f"group_data pgbackrest_s3_key_type {key_type!r}: use auto "
                          f"(the instance role) or shared (keys in {pitr.S3_KEY_FILE})")
    prefix = str(s3.get("prefix") or "donna/").strip("/")
    return pitr.S3Repo(
        bucket=str(s3["bucket"]), path=f"/{prefix}/pgbackrest" if prefix else "/pgbackrest",
        region=region, endpoint=endpoint, port=port, uri_style=style,
        ca_file=s3.get("ca_file"), key_type=key_type, kms_key_id=s3.get("kms_key_id"),
        retention_full=int(data.get("pgbackrest_s3_retention_full") or 4),
        retention_diff=int(data.get("pgbackrest_s3_retention_diff") or 6))


def _schedule(overrides: dict[str, Any], pgbackrest: bool) -> dict[str, tuple[str, str, str]]:
    """The jobs to schedule, with group_data's ``backup_schedule`` times applied."""
    known = {**DEFAULT_SCHEDULE, **PHYSICAL_SCHEDULE}
    schedule = dict(DEFAULT_SCHEDULE, **(PHYSICAL_SCHEDULE if pgbackrest else {}))
    for job, value in overrides.items():
        if job not in known or not (isinstance(value, tuple | list) and len(value) == 2):
            raise ConfigError(f"group_data backup_schedule[{job!r}] must be (OnCalendar, "
                              f"cron) for one of {', '.join(known)}")
        if job in schedule:
            schedule[job] = (value[0], value[1], known[job][2])
    return schedule


def load_backup_deploy(data: Any, settings: DeploySettings) -> BackupDeploy:
    """Backup settings from ``host.data``; unset ones keep the runtime defaults. The jobs'
    script and passfile follow ``settings`` (donnadb_install_dir, db_passfile).

    :raises ConfigError: a schedule or S3 entry is malformed (the message names it);
        pgBackRest asked for on a cluster.
    """
    env: dict[str, str] = {"BACKUP_SIGNING_KEY_FILE": SIGNING_KEY_FILE}
    env.update({var: str(data.get(key)) for key, var in ENV_KEYS.items()
                if data.get(key) is not None})
    env.update(_s3_env(data.get("backup_s3") or {}))
    age_recipients = _age_recipients(data)
    age_file = data.get("backup_age_recipients_file") or AGE_RECIPIENTS_FILE
    if age_recipients:
        env["BACKUP_AGE_RECIPIENTS_FILE"] = age_file
    pgbackrest = _pgbackrest_on(data, settings)
    places = {key.replace("_path", ""): data.get(key) for key in PGBACKREST_KEYS
              if data.get(key) is not None}
    cfg = BackupDeploy(
        repo_dir=data.get("backup_repo_dir") or "/var/backups/donna",
        env_file=data.get("backup_env_file") or "/etc/donnadb/backup.env",
        env=env, schedule=_schedule(data.get("backup_schedule") or {}, pgbackrest),
        script=install.backup_script(settings),
        passfile=consumers.passfile_of(settings, JOB_USER), pgbackrest=pgbackrest,
        unit_dir=data.get("backup_unit_dir") or UNIT_DIR,
        unit_prefix=data.get("backup_unit_prefix") or UNIT_PREFIX,
        cron_file=data.get("backup_cron_file") or CRON_FILE, age_recipients=age_recipients,
        age_recipients_file=age_file, pgbackrest_s3=s3_repo(data) if pgbackrest else None,
        **places,
    )
    if pgbackrest:
        env.update(PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=cfg.pgbackrest_config,
                   PGBACKREST_STANZA=cfg.pgbackrest_stanza,
                   PGBACKREST_INCLUDE_PATH=cfg.pgbackrest_include)
        if cfg.pgbackrest_s3:
            env["PGBACKREST_S3"] = "true"
        if settings.ha:
            env["PGBACKREST_LOCAL_REPO"] = "false"
    return cfg


def engine_of(cfg: BackupDeploy, settings: DeploySettings) -> pitr.Engine:
    """The stanza the deploy configures on this host."""
    cluster = pitr.Cluster(settings.pg_version, settings.pg_cluster, settings.pg_port,
                           pitr_data_dir(settings))
    return pitr.Engine(Path(cfg.pgbackrest_config), cfg.pgbackrest_stanza, cluster,
                       include=Path(cfg.pgbackrest_include),
                       repos=pitr.repositories(local=not settings.ha,
                                               s3=cfg.pgbackrest_s3 is not None))


def archive_parameters(data: Any, settings: DeploySettings) -> dict[str, str]:
    """A cluster member's WAL archiving, as Patroni's PostgreSQL parameters (Patroni
    writes postgresql.conf there); empty without pgBackRest."""
    cfg = load_backup_deploy(data, settings)
    if not cfg.pgbackrest:
        return {}
    return {"archive_mode": "on", "archive_command": pitr.archive_command(engine_of(cfg, settings)),
            "archive_timeout": str(pitr.ARCHIVE_TIMEOUT)}


def env_text(cfg: BackupDeploy) -> str:
    lines = ["# Managed by the donnadb deploy (group_data/all.py): edits are overwritten.",
             "# Read by donnactl (donnadb/config.py Settings). No secrets here:",
             "# S3 credentials come from the instance role / AWS profile."]
    lines += [f"{k}={v}" for k, v in sorted(cfg.env.items())]
    return "\n".join(lines) + "\n"


#: The jobs' user: the cluster's owner, whose peer login is the superuser the restore
#: drill needs (it creates and drops its scratch database); never root.
JOB_USER = consumers.CLUSTER_OWNER
LOG_DIR = logs.LOG_DIR
#: The jobs' JSON run log (OPS_LOG_FILE) and the cron output, the job user's own.
JOB_LOG = f"{LOG_DIR}/{JOB_USER}-backup.jsonl"
CRON_LOG = f"{LOG_DIR}/{JOB_USER}-backup-cron.log"


def job_environment(cfg: BackupDeploy) -> dict[str, str]:
    return {"DB_PASSFILE": cfg.passfile, "OPS_LOG_FILE": JOB_LOG}


def writable_paths(cfg: BackupDeploy) -> list[str]:
    """What a backup job writes; the rest of the system is read-only to it."""
    paths = [cfg.repo_dir, LOG_DIR, "/run/lock", "/run/postgresql"]
    if cfg.pgbackrest:
        paths += [cfg.pgbackrest_repo, "-/var/log/pgbackrest", "-/var/spool/pgbackrest"]
    return paths


def service_unit(cfg: BackupDeploy, job: str) -> str:
    return f"""# Managed by the donnadb deploy.
[Unit]
Description={cfg.schedule[job][2]}
After=postgresql.service network-online.target
Wants=network-online.target
{scheduler.on_failure()}
[Service]
Type=oneshot
UMask=0077
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
{scheduler.hardening(read_write=writable_paths(cfg), user=JOB_USER,
                     environment=job_environment(cfg))}ExecStart={cfg.script} {job}
"""


def timer_unit(cfg: BackupDeploy, job: str) -> str:
    return f"""# Managed by the donnadb deploy.
[Unit]
Description={cfg.schedule[job][2]} (schedule)

[Timer]
OnCalendar={cfg.schedule[job][0]}
RandomizedDelaySec=300
Persistent=true

[Install]
WantedBy=timers.target
"""


def cron_text(cfg: BackupDeploy) -> str:
    lines = ["# Managed by the donnadb deploy: used where systemd is not running.",
             "SHELL=/bin/sh", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    lines += [f"{k}={v}" for k, v in sorted(job_environment(cfg).items())]
    for job, (_, cron, what) in cfg.schedule.items():
        lines.append(f"# {what}")
        lines.append(f"{cron} {JOB_USER} {cfg.script} {job} >>{CRON_LOG} 2>&1")
    return "\n".join(lines) + "\n"


@operation()
def owned_by(path: str, user: str, group: str):
    """Everything under ``path`` belongs to ``user``:``group`` (chown only when not)."""
    stray = host.get_fact(Command, command=f"find {path} ! -user {user} -print -quit "
                                           "2>/dev/null || true")
    if stray:
        yield f"chown -R {user}:{group} {path}"
    else:
        host.noop(f"{path} belongs to {user}")


@deploy("Install backups")
def install_backups(settings: DeploySettings, leader: Host | None = None) -> None:
    """Repository (0700), settings file (0600), timers or cron jobs for every job.
    ``leader``: on a cluster, the member that runs the writing steps (ha.leader)."""
    cfg = load_backup_deploy(host.data, settings)
    apt.packages(name="Install pgBackRest", packages=["pgbackrest"],
                 update=host.get_fact(DebPackages).get("pgbackrest") is None)
    if cfg.pgbackrest and leader is not None:
        _install_pgbackrest_member(cfg, settings, leader)
    elif cfg.pgbackrest:
        _install_pgbackrest(cfg, settings)
    # The jobs' user owns it; the consumers' group lists backups and reads manifests
    # (the metrics job); the dumps inside stay the owner's (storage_local.ensure_repo).
    files.directory(name=f"Backup repository {cfg.repo_dir}", path=cfg.repo_dir,
                    user=JOB_USER, group=consumers.GROUP, mode="2750")
    owned_by(name=f"Backups made as root before belong to {JOB_USER}", path=cfg.repo_dir,
             user=JOB_USER, group=consumers.GROUP)
    logs.log_directory()
    for path in (JOB_LOG, CRON_LOG):
        files.file(name=f"{path} is {JOB_USER}'s", path=path, user=JOB_USER,
                   group=JOB_USER, mode="600")
    consumers.settings_dir(f"Create {posixpath.dirname(cfg.env_file)}",
                           posixpath.dirname(cfg.env_file))
    files.put(name=f"Write {cfg.env_file}", src=StringIO(env_text(cfg)), dest=cfg.env_file,
              user="root", group=consumers.GROUP, mode="640")
    signing_key = cfg.env["BACKUP_SIGNING_KEY_FILE"]
    consumers.settings_dir(f"Create {posixpath.dirname(signing_key)}",
                           posixpath.dirname(signing_key))
    made_unless_present(name=f"Generate the manifest signing key {signing_key} (once)",
                        path=signing_key, command=key_file_command(signing_key))
    files.file(name=f"{signing_key} is {JOB_USER}'s alone", path=signing_key, user=JOB_USER,
               group=JOB_USER, mode="600")
    encryption_key = cfg.env.get("BACKUP_ENCRYPTION_KEY_FILE")
    if encryption_key and host.get_fact(File, path=encryption_key):
        # The operator's key (never generated here): the jobs must read it, nobody else.
        files.file(name=f"{encryption_key} is {JOB_USER}'s alone", path=encryption_key,
                   user=JOB_USER, group=JOB_USER, mode="600")
    _install_age_recipients(cfg)
    scheduler.install_jobs(
        label="backup", prefix=cfg.unit_prefix, unit_dir=cfg.unit_dir,
        units={job: (service_unit(cfg, job), timer_unit(cfg, job)) for job in cfg.schedule},
        # pgBackRest turned off: its physical-backup units go.
        removed=sorted(set(PHYSICAL_SCHEDULE) - set(cfg.schedule)),
        cron_file=cfg.cron_file, cron_text=cron_text(cfg))


def _install_age_recipients(cfg: BackupDeploy) -> None:
    """``age`` and the recipients file: public keys, but root's, so that only the deploy
    chooses whom the backups are readable by; the jobs' group reads it. No recipients: the
    file goes (backup.env no longer names it)."""
    if not cfg.age_recipients:
        files.file(name=f"No age recipients: remove {cfg.age_recipients_file}",
                   path=cfg.age_recipients_file, present=False)
        return
    apt.packages(name="Install age", packages=["age"],
                 update=host.get_fact(DebPackages).get("age") is None)
    text = "# Managed by the donnadb deploy (group_data backup_age_recipients).\n" + \
        "".join(f"{key}\n" for key in cfg.age_recipients)
    files.put(name=f"Write the age recipients {cfg.age_recipients_file}", src=StringIO(text),
              dest=cfg.age_recipients_file, user="root", group=JOB_USER, mode="640")


@operation()
def made_unless_present(path: str, command: str):
    """Run ``command``, which makes ``path``, unless ``path`` already exists."""
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists")
        return
    yield command


def key_file_command(path: str) -> str:
    """A random 256-bit key (64 hex characters, 0600) at ``path``.

    Made on the host by its own python3, so the key never passes through argv, the
    deploy's output or this machine. Run only when no key is there (made_unless_present):
    backups signed with an existing key would no longer verify if it were replaced.
    """
    quoted, new = shlex.quote(path), shlex.quote(f"{path}.new")
    return (f"umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > {new} "
            f"&& mv {new} {quoted}")


def _pgbackrest_dirs(cfg: BackupDeploy) -> None:
    files.directory(name="pgBackRest log directory", path="/var/log/pgbackrest",
                    user="postgres", group="postgres", mode="750")
    for directory in (posixpath.dirname(cfg.pgbackrest_config), cfg.pgbackrest_include):
        files.directory(name=f"Create {directory}", path=directory, user="root",
                        group="postgres", mode="750")


def _write_pgbackrest_config(cfg: BackupDeploy, engine: pitr.Engine,
                             peers: pitr.Peers | None = None):
    text = pitr.config_text(stanza=cfg.pgbackrest_stanza,
                            repo_path=Path(cfg.pgbackrest_repo) if 1 in engine.repos else None,
                            cluster=engine.cluster, retention_full=cfg.pgbackrest_retention_full,
                            retention_diff=cfg.pgbackrest_retention_diff, s3=cfg.pgbackrest_s3,
                            peers=peers)
    return files.put(name=f"Write {cfg.pgbackrest_config}", src=StringIO(text),
                     dest=cfg.pgbackrest_config, user="root", group="postgres", mode="640")


def _install_pgbackrest(cfg: BackupDeploy, settings) -> None:
    """pgbackrest.conf, its repositories and secrets, WAL archiving and the stanza."""
    engine = engine_of(cfg, settings)
    cluster = engine.cluster
    files.directory(name=f"pgBackRest repository {cfg.pgbackrest_repo}",
                    path=cfg.pgbackrest_repo, user="postgres", group="postgres", mode="750")
    _pgbackrest_dirs(cfg)
    if cfg.pgbackrest_s3:
        _install_s3_secrets(cfg)
    config = _write_pgbackrest_config(cfg, engine)
    archive = files.put(
        name="Archive WAL to pgBackRest (conf.d/donna-archive.conf)",
        src=StringIO(pitr.archive_conf_text(engine)),
        dest=f"{cluster.conf_dir}/conf.d/donna-archive.conf",
        user="postgres", group="postgres", mode="644")
    # archive_mode only changes at a restart.
    server.shell(name=f"Restart cluster {cluster.version}/{cluster.name} (archiving changed)",
                 commands=[f"pg_ctlcluster {int(cluster.version)} {cluster.name} restart"],
                 _if=archive.did_change)
    stanza = stanza_create_command(engine)
    # stanza-create leaves the stanza's backup.info in the repository; run again when the
    # repositories changed (a new repo2 needs its stanza; pgBackRest accepts the rerun).
    made_unless_present(name=f"pgBackRest stanza {cfg.pgbackrest_stanza}", command=stanza,
                        path=posixpath.join(cfg.pgbackrest_repo, "backup",
                                            cfg.pgbackrest_stanza, "backup.info"))
    server.shell(name=f"pgBackRest stanza {cfg.pgbackrest_stanza} in every repository",
                 commands=[stanza], _if=config.did_change)
    first_full_backup(name="A first full backup into every repository (PITR from now on)",
                      engine=engine)


def _owner_pgbackrest(engine: pitr.Engine, *args: str) -> str:
    cmd = ["runuser", "-u", JOB_USER, "--", "pgbackrest", *engine.options(), *args]
    return " ".join(shlex.quote(a) for a in cmd)


class BackedUpRepos(FactBase):
    """The repositories of a stanza holding at least one backup (pgBackRest's info, as
    the cluster owner); empty before the stanza or the owner exist."""

    def command(self, info: str) -> str:
        return f"{info} 2>/dev/null || true"

    def process(self, output):
        try:
            info = json.loads("\n".join(output) or "[]")
        except ValueError:
            return []
        return sorted({b["database"]["repo-key"] for stanza in info
                       for b in stanza.get("backup", [])})


@operation()
def first_full_backup(engine: pitr.Engine):
    """A full backup into each repository that has none: without a base backup there
    is nothing to recover to a moment from until the weekly job runs. Monitoring sees it
    at the next hourly ``backup check``, which records pgBackRest's state."""
    done = host.get_fact(BackedUpRepos, info=_owner_pgbackrest(engine, "info", "--output=json"))
    missing = [repo for repo in engine.repos if repo not in done]
    if not missing:
        host.noop("every repository holds a backup")
        return
    for repo in missing:
        yield _owner_pgbackrest(engine, "backup", "--type=full", f"--repo={repo}")


def stanza_create_command(engine: pitr.Engine) -> str:
    """``pgbackrest stanza-create`` as the cluster owner on the target, which the deploy
    reaches as root. Built here, not by Engine.command: that one asks this machine for
    the owner's account, and the deploy may run where PostgreSQL is not installed yet."""
    return _owner_pgbackrest(engine, "stanza-create")


def _install_s3_secrets(cfg: BackupDeploy, source: Host | None = None) -> None:
    """repo2's passphrase: generated on the host once (never replaced: the backups in
    the bucket need it), the cluster owner's alone; a cluster member other than
    ``source`` (the leader) copies the leader's (they share the repository). Shared
    S3 keys are the operator's file: the deploy only checks it is there and keeps it
    private."""
    cipher = posixpath.join(cfg.pgbackrest_include, pitr.CIPHER_FILE)
    if source is None or source.name == host.name:
        made_unless_present(name=f"Generate the S3 repository passphrase {cipher} (once)",
                            path=cipher, command=cipher_file_command(cipher))
    else:
        hostcopy.copied(name=f"The leader's S3 repository passphrase {cipher}",
                        source=source, source_path=cipher, dest=cipher, owner="postgres")
    files.file(name=f"{cipher} is postgres' alone", path=cipher, user="postgres",
               group="postgres", mode="600")
    if cfg.pgbackrest_s3.key_type != "shared":
        return
    keys = posixpath.join(cfg.pgbackrest_include, pitr.S3_KEY_FILE)
    if not host.get_fact(File, path=keys):
        raise ConfigError(f"pgbackrest_s3_key_type = 'shared' needs {keys} on the host with "
                          "[global] repo2-s3-key=... and repo2-s3-key-secret=... (0600 "
                          "postgres); write it, or use 'auto' (the instance role)")
    files.file(name=f"{keys} is postgres' alone", path=keys, user="postgres",
               group="postgres", mode="600")


def cipher_file_command(path: str) -> str:
    """A pgBackRest include file with a random repo2-cipher-pass (0600, postgres).

    Made on the host by its own python3, like the signing key: the passphrase never
    passes through argv, the deploy's output or this machine.
    """
    quoted, new = shlex.quote(path), shlex.quote(f"{path}.new")
    script = ("import secrets; print('[global]'); "
              "print('repo2-cipher-pass=' + secrets.token_urlsafe(48))")
    return (f"umask 077 && python3 -c {shlex.quote(script)} > {new} "
            f"&& chown postgres:postgres {new} && mv {new} {quoted}")


def pitr_data_dir(settings) -> Path:
    return config.debian_data_dir(settings.pg_version, settings.pg_cluster)


#: Debian's unit for ``pgbackrest server``; the deploy's drop-in points it at our files.
SERVER_UNIT = "pgbackrest.service"


def member_peers(settings: DeploySettings, target: Host) -> pitr.Peers:
    """``target``'s view of the other members (:class:`pitr.Peers`), from the inventory.

    :raises ConfigError: a member is named by an address (pgBackRest checks names).
    """
    members = ha.members(target)
    for member in members:
        try:
            ipaddress.ip_address(member.name)
        except ValueError:
            continue
        raise ConfigError(f"db_servers host {member.name} is named by its address: pgBackRest "
                          "checks a member's certificate by host name; name it (e.g. db1) and "
                          "give the address in ssh_hostname and db_host")
    return pitr.Peers(address=settings.db_host,
                      hosts=tuple(m.name for m in members if m.name != target.name),
                      clients=tuple(dict.fromkeys(m.address for m in members)),
                      cert=tls.SERVER_CERT, key=tls.SERVER_KEY, ca=tls.CA_FILE)


def _install_pgbackrest_member(cfg: BackupDeploy, settings: DeploySettings,
                               leader: Host) -> None:
    """A Patroni member's stanza: the S3 repository the members share (no repo1), every
    other member reachable through its pgBackRest TLS server, the leader's passphrase.
    Patroni sets archive_command (patroni.yml, :func:`archive_parameters`)."""
    engine = engine_of(cfg, settings)
    peers = member_peers(settings, host)
    _pgbackrest_dirs(cfg)
    _install_s3_secrets(cfg, source=leader)
    for member in ha.members(host):
        if member.name != host.name:
            ha.hosts_entry(member.name, member.address, "a cluster member")
    config = _write_pgbackrest_config(cfg, engine, peers)
    dropin = files.put(
        name=f"{SERVER_UNIT} reads {cfg.pgbackrest_config}",
        src=StringIO("# Managed by the donnadb deploy.\n[Service]\nExecStart=\n"
                     f"ExecStart=/usr/bin/pgbackrest {' '.join(engine.options()[:-1])} "
                     "server\n"),
        dest=f"{UNIT_DIR}/{SERVER_UNIT}.d/donna.conf", user="root", group="root",
        mode="644", create_remote_dir=True)
    systemd.daemon_reload(name=f"systemd reads {SERVER_UNIT}'s drop-in", _if=dropin.did_change)
    started = systemd.service(name=f"pgBackRest's TLS server ({SERVER_UNIT}) runs",
                              service=SERVER_UNIT, running=True, enabled=True)
    systemd.service(name=f"Restart {SERVER_UNIT} (its settings changed)", service=SERVER_UNIT,
                    restarted=True,
                    _if=lambda: not started.did_change() and any_changed(config, dropin)())
    if leader.name != host.name:
        return
    # On the leader only (the stanza is the cluster's); run again when the settings
    # changed, and until it succeeded once here (the marker).
    marker = f"/var/lib/pgbackrest/donna-stanza-{cfg.pgbackrest_stanza}.created"
    create = f"{stanza_create_command(engine)} && touch {shlex.quote(marker)}"
    made_unless_present(name=f"pgBackRest stanza {cfg.pgbackrest_stanza} (the cluster's)",
                        command=create, path=marker)
    server.shell(name=f"pgBackRest stanza {cfg.pgbackrest_stanza}: its settings changed",
                 commands=[create], _if=config.did_change)
    first_full_backup(name="A first full backup into the bucket (PITR from now on)",
                      engine=engine)

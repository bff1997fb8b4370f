"""Physical backups and point-in-time recovery with pgBackRest.

We do not ship WAL by hand: PostgreSQL's ``archive_command`` hands every WAL segment
to ``pgbackrest archive-push``, and pgBackRest takes full/differential/incremental
backups, expires them (never WAL that a kept backup needs) and restores to a moment.

Everything runs as the cluster's owner (``runuser -u postgres``), which is what
pgBackRest requires; no password is involved (the local socket, peer auth).

A PITR restore goes into a NEW data directory and is started there on another port
(socket only), checked, and left running for the operator to inspect or dump from;
``in_place`` (``--force``) instead stops the cluster, keeps its old data directory
aside (renamed, never deleted) and restores over the original path.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from donnadb import db
from donnadb.backup.errors import BackupError, RestoreRefused
from donnadb.config import Settings, debian_bin_dir, debian_data_dir
from donnadb.errors import ConfigError

log = logging.getLogger(__name__)

PG_OWNER = db.CLUSTER_OWNER
SOCKET_DIR = "/var/run/postgresql"
SQL_IN_RECOVERY = "SELECT pg_is_in_recovery()"
SQL_SANITY = ("SELECT now(), (SELECT count(*) FROM pg_database WHERE datallowconn), "
              "pg_is_in_recovery()")


@dataclass(frozen=True)
class Cluster:
    """A Debian cluster (``pg_lsclusters``): its config lives in /etc/postgresql."""

    version: int
    name: str
    port: int
    data_dir: Path

    @property
    def conf_dir(self) -> Path:
        return Path(f"/etc/postgresql/{self.version}/{self.name}")

    @property
    def bin_dir(self) -> Path:
        return debian_bin_dir(self.version)


@dataclass(frozen=True)
class Engine:
    """One pgBackRest stanza: its config file and the cluster it backs up."""

    config: Path
    stanza: str
    cluster: Cluster

    def command(self, *args: str) -> list[str]:
        return db.as_cluster_owner(["pgbackrest", f"--config={self.config}",
                                    f"--stanza={self.stanza}", *args])

    def run(self, *args: str, timeout: float = 3600) -> str:
        """Run a pgBackRest command as the cluster owner; return stdout.

        :raises BackupError: it failed (the message has pgBackRest's own error line).
        """
        try:
            done = subprocess.run(self.command(*args), capture_output=True, text=True,
                                  check=False, timeout=timeout, cwd="/")
        except FileNotFoundError:
            raise BackupError("pgbackrest is not installed; `apt-get install pgbackrest` "
                              "or run `make deploy`") from None
        if done.returncode != 0:
            text = (done.stderr.strip() or done.stdout.strip()).splitlines()
            first = next((ln for ln in text if "ERROR" in ln), text[0] if text else "")
            raise BackupError(f"pgbackrest {args[0]} failed (exit {done.returncode}): {first}")
        return done.stdout


def engine_from_settings(settings: Settings) -> Engine:
    """The stanza the deploy configured (settings ``pgbackrest_*``, ``pg_*``, ``db_port``).

    :raises ConfigError: pgBackRest is not enabled on this host.
    """
    if not settings.pgbackrest_enabled:
        raise ConfigError("pgBackRest is not enabled; set pgbackrest_enabled in "
                          "group_data/all.py and run `make deploy`")
    cluster = Cluster(settings.pg_version, settings.pg_cluster, settings.db_port,
                      settings.pg_data_dir or debian_data_dir(settings.pg_version,
                                                              settings.pg_cluster))
    return Engine(settings.pgbackrest_config, settings.pgbackrest_stanza, cluster)


def config_text(*, stanza: str, repo_path: Path, cluster: Cluster, retention_full: int = 2,
                retention_diff: int = 6, process_max: int = 2, log_path: Path | None = None,
                lock_path: Path | None = None) -> str:
    """pgbackrest.conf for one local repository and one cluster.

    Retention counts backups, and pgBackRest expires WAL only up to the oldest kept
    backup, so every kept backup stays restorable to any moment after it.
    """
    lines = [
        "# Managed by donnadb (donnadb/backup/pitr.py).",
        "[global]",
        f"repo1-path={repo_path}",
        f"repo1-retention-full={retention_full}",
        f"repo1-retention-diff={retention_diff}",
        "compress-type=zst",
        "compress-level=3",
        f"process-max={process_max}",
        "start-fast=y",
        "archive-async=n",
        "log-level-console=warn",
        "log-level-file=info",
    ]
    if log_path:
        lines.append(f"log-path={log_path}")
    if lock_path:
        lines.append(f"lock-path={lock_path}")
    lines += [
        "",
        f"[{stanza}]",
        f"pg1-path={cluster.data_dir}",
        f"pg1-port={cluster.port}",
        f"pg1-socket-path={SOCKET_DIR}",
        "",
    ]
    return "\n".join(lines)


def archive_conf_text(engine: Engine) -> str:
    """postgresql.conf lines (conf.d) that hand every WAL segment to pgBackRest."""
    return (
        "# Managed by donnadb: WAL archiving to pgBackRest (needs a restart to change).\n"
        "wal_level = replica\n"
        "archive_mode = on\n"
        f"archive_command = 'pgbackrest --config={engine.config} --stanza={engine.stanza} "
        "archive-push %p'\n"
        "archive_timeout = 60\n"
    )


def stanza_create(engine: Engine) -> None:
    engine.run("stanza-create")


def check(engine: Engine) -> dict:
    """pgBackRest's own check (archiving works) plus the archive lag from ``info``.

    Never raises: the result says ``ok`` and carries the error line.
    """
    try:
        engine.run("check", timeout=300)
        info = stanza_info(engine)
    except BackupError as exc:
        return {"ok": False, "error": str(exc)}
    backups = info.get("backup", [])
    archive = (info.get("archive") or [{}])[-1]
    newest = backups[-1] if backups else None
    return {
        "ok": True,
        "backups": len(backups),
        "newest_backup": newest["label"] if newest else None,
        "newest_backup_age_hours": round(
            (time.time() - newest["timestamp"]["stop"]) / 3600, 3) if newest else None,
        "wal_min": archive.get("min"),
        "wal_max": archive.get("max"),
    }


def stanza_info(engine: Engine) -> dict:
    out = json.loads(engine.run("info", "--output=json") or "[]")
    return out[0] if out else {}


def physical_backup(engine: Engine, kind: str = "full") -> dict:
    """Take a ``full``, ``diff`` or ``incr`` backup; return its ``info`` entry."""
    if kind not in ("full", "diff", "incr"):
        raise BackupError(f"unknown backup type {kind!r}; use full, diff or incr")
    engine.run("backup", f"--type={kind}")
    engine.run("expire")
    backups = stanza_info(engine).get("backup", [])
    return backups[-1] if backups else {}


@dataclass
class PitrResult:
    target_time: str
    data_dir: str
    port: int
    seconds: float
    server_now: str
    in_place: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _psql(sql: str, port: int) -> str:
    done = subprocess.run(db.as_cluster_owner(["psql", "-X", "-A", "-t", "-q", "-h", SOCKET_DIR,
                                               "-p", str(port), "-d", "postgres", "-c", sql]),
                          capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        raise BackupError(f"psql on port {port}: {done.stderr.strip()}")
    return done.stdout.strip()


def _pg_ctl(cluster: Cluster, data_dir: Path, *args: str) -> None:
    cmd = db.as_cluster_owner([str(cluster.bin_dir / "pg_ctl"), "-D", str(data_dir), *args])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        raise BackupError(f"pg_ctl {args[-1]} on {data_dir} failed: "
                          f"{(done.stderr or done.stdout).strip()[-300:]}")


def _pg_ctlcluster(cluster: Cluster, action: str, *options: str) -> None:
    """``pg_ctlcluster VERSION NAME action``; stopping a stopped cluster is fine.

    :raises BackupError: it failed (the message has its last line).
    """
    cmd = ["pg_ctlcluster", str(cluster.version), cluster.name, action, *options]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    # pg_ctlcluster exits 2 for "stop" when the cluster is not running.
    if done.returncode == 0 or (action == "stop" and done.returncode == 2):
        return
    last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
    raise BackupError(f"pg_ctlcluster {cluster.version} {cluster.name} {action} failed "
                      f"(exit {done.returncode}): {last}")


def start_copy(cluster: Cluster, data_dir: Path, port: int) -> None:
    """Start a restored data directory with the cluster's own config, on ``port``,
    socket only, not archiving (it must never push WAL into the cluster's repository)."""
    options = " ".join([
        f"-c config_file={cluster.conf_dir / 'postgresql.conf'}",
        f"-c data_directory={data_dir}",
        f"-c port={port}",
        "-c listen_addresses=''",
        f"-c external_pid_file={data_dir / 'pitr.pid'}",
        f"-c cluster_name={cluster.name}-pitr",
        "-c archive_mode=off",
    ])
    _pg_ctl(cluster, data_dir, "-o", options, "-l", str(data_dir / "pitr.log"),
            "-w", "-t", "300", "start")


def stop_copy(cluster: Cluster, data_dir: Path) -> None:
    _pg_ctl(cluster, data_dir, "-m", "fast", "-w", "stop")


def _wait_promoted(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _psql(SQL_IN_RECOVERY, port) == "f":
            return
        time.sleep(0.2)
    raise BackupError(f"the restored server on port {port} is still recovering after "
                      f"{timeout:.0f} s; see its pitr.log")


def restore_to_time(engine: Engine, target_time: datetime, *, data_dir: Path | None = None,
                    port: int | None = None, in_place: bool = False) -> PitrResult:
    """Restore the cluster as it was at ``target_time`` and check it answers queries.

    :raises RestoreRefused: ``data_dir`` is not empty, or in place without a data dir plan.
    :raises BackupError: pgBackRest or the restored server failed.
    """
    if target_time.tzinfo is None:
        raise RestoreRefused("give the PITR target with a time zone, e.g. "
                             "'2026-11-25 10:00:00+00'")
    started = time.monotonic()
    cluster = engine.cluster
    target = target_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    aside = None
    if in_place:
        dest, port = cluster.data_dir, cluster.port
        if not (dest / "PG_VERSION").exists():
            raise RestoreRefused(f"{dest} is not a data directory; check PG_CLUSTER and "
                                 "PG_DATA_DIR")
        _pg_ctlcluster(cluster, "stop", "-m", "fast")
        if (dest / "postmaster.pid").exists():
            # Renaming the directory under a running server would corrupt it.
            raise BackupError(f"cluster {cluster.version}/{cluster.name} did not stop "
                              "(postmaster.pid remains); nothing was changed")
        aside = dest.with_name(f"{dest.name}.before-pitr-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        dest.rename(aside)  # kept, never deleted: the operator removes it when satisfied
    else:
        if data_dir is None or port is None:
            raise RestoreRefused("a PITR copy needs --data-dir and --port (or --in-place)")
        dest = data_dir.resolve()
        if any(c in str(dest) for c in " '\"\\"):
            # it is passed inside pg_ctl's -o option string
            raise RestoreRefused(f"--data-dir {dest} must not contain spaces or quotes")
        if dest.exists() and any(dest.iterdir()):
            raise RestoreRefused(f"{dest} is not empty; choose an empty --data-dir")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(dest, PG_OWNER, PG_OWNER)
    engine.run("restore", f"--pg1-path={dest}", "--type=time", f"--target={target}",
               "--target-action=promote",
               *(() if in_place else ("--archive-mode=off",)))
    if in_place:
        try:
            _pg_ctlcluster(cluster, "start")
        except BackupError as exc:
            raise BackupError(f"{exc}; the data before the restore is kept in {aside}") \
                from None
    else:
        start_copy(cluster, dest, port)
    _wait_promoted(port)
    now = _psql(SQL_SANITY, port).split("|")[0]
    return PitrResult(target, str(dest), port, round(time.monotonic() - started, 2), now,
                      in_place)

"""Physical backups and point-in-time recovery with pgBackRest.

We do not ship WAL by hand: PostgreSQL's ``archive_command`` hands every WAL segment
to ``pgbackrest archive-push``, and pgBackRest takes full/differential/incremental
backups, expires them (never WAL that a kept backup needs) and restores to a moment.

Everything runs as the cluster's owner (``runuser -u postgres``), which is what
pgBackRest requires; no password is involved (the local socket, peer auth).

Two repositories: repo1 on the host's own disk (fast restores) and, when an S3 bucket
is configured, repo2 in the bucket, encrypted by pgBackRest (aes-256-cbc) with a
passphrase kept only in a 0600 file of the cluster owner's in the include directory
(never in pgbackrest.conf, argv or logs): losing the host loses neither WAL nor backups.
``archive-push`` writes every segment to both.

A PITR restore goes into a NEW data directory and is started there on another port
(socket only), checked, and left running for the operator to inspect or dump from;
``in_place`` (``--force``) instead stops the cluster, keeps its old data directory
aside (renamed, never deleted) and restores over the original path; when the restore
fails before its server is promoted, the old directory goes back and the cluster
starts on it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from donnadb import db
from donnadb.backup import room, storage_local
from donnadb.backup.errors import BackupError, RestoreRefused
from donnadb.config import Settings, debian_bin_dir, debian_data_dir
from donnadb.errors import ConfigError

log = logging.getLogger(__name__)

PG_OWNER = db.CLUSTER_OWNER
SOCKET_DIR = "/var/run/postgresql"
SQL_IN_RECOVERY = "SELECT pg_is_in_recovery()"
SQL_REPLAY = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"
#: A restored server replays as much WAL as lies between its backup and the target (up
#: to a day's with daily differentials), at whatever speed the machine has: it has failed
#: only when replay stops moving for this long (seconds).
REPLAY_STALL_TIMEOUT = 300.0
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
class S3Repo:
    """repo2: an S3 bucket (or an S3-protocol server), encrypted by pgBackRest."""

    bucket: str
    #: Path inside the bucket, e.g. /donna/pgbackrest.
    path: str
    region: str
    #: Host name of the endpoint (s3.<region>.amazonaws.com for AWS itself).
    endpoint: str
    port: int = 443
    #: "host" (AWS virtual-hosted) or "path" (other S3-protocol servers).
    uri_style: str = "host"
    ca_file: str | None = None
    #: "auto": the instance role's temporary keys; "shared": repo2-s3-key and
    #: repo2-s3-key-secret from a file of the include directory (the operator's).
    key_type: str = "auto"
    kms_key_id: str | None = None
    retention_full: int = 4
    retention_diff: int = 6


@dataclass(frozen=True)
class Peers:
    """The other members of a Patroni cluster, for the stanza of one member.

    Each member runs pgBackRest's TLS server (``pgbackrest server``) with the deploy's
    certificate; pgBackRest reaches the others through theirs (``pgN-host-type=tls``),
    so a replica backs up its own files (``--backup-standby``) while the leader starts
    and stops the backup. Host names, not addresses: pgBackRest 2.45 matches a server
    certificate's DNS entries only.
    """

    #: Where this member's TLS server listens.
    address: str
    #: The other members' names (entries of their certificates) and data directories.
    hosts: tuple[str, ...]
    #: The certificate CNs allowed to connect (every member's).
    clients: tuple[str, ...]
    cert: str
    key: str
    ca: str


#: The include file holding repo2's passphrase (generated once on the host).
CIPHER_FILE = "donna-repo2-cipher.conf"
#: The include file the operator writes with repo2-s3-key/-key-secret (key_type shared).
S3_KEY_FILE = "donna-repo2-s3-key.conf"


@dataclass(frozen=True)
class Engine:
    """One pgBackRest stanza: its config file and the cluster it backs up.

    ``include`` is the directory of the secret files (pgBackRest loads every *.conf in
    it; it ignores its default include directory once --config is given).
    """

    config: Path
    stanza: str
    cluster: Cluster
    include: Path | None = None
    #: The repositories configured: (1,), (1, 2), or (2,) on a cluster (S3 only).
    repos: tuple[int, ...] = (1,)

    def options(self) -> list[str]:
        opts = [f"--config={self.config}"]
        if self.include is not None:
            opts.append(f"--config-include-path={self.include}")
        return [*opts, f"--stanza={self.stanza}"]

    def command(self, *args: str) -> list[str]:
        return db.as_cluster_owner(["pgbackrest", *self.options(), *args])

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
            error = _error_of(done.stderr.strip() or done.stdout.strip())
            raise BackupError(f"pgbackrest {args[0]} failed (exit {done.returncode}): {error}")
        return done.stdout


def _error_of(output: str) -> str:
    """pgBackRest's ERROR line with its indented cause lines (the errno of a write often
    comes on the next one), without its retry notes; a full disk says what to do."""
    lines = output.splitlines()
    start = next((i for i, ln in enumerate(lines) if "ERROR" in ln), 0)
    parts = lines[start:start + 1]
    for line in lines[start + 1:]:
        if not line[:1].isspace():
            break
        if "on retry after" not in line:
            parts.append(line.strip())
    error = " ".join(parts)
    if "No space left on device" in error:
        error += "; free space on that file system, then run the command again"
    return error


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
    return Engine(settings.pgbackrest_config, settings.pgbackrest_stanza, cluster,
                  include=settings.pgbackrest_include_path,
                  repos=repositories(local=settings.pgbackrest_local_repo,
                                     s3=settings.pgbackrest_s3))


def repositories(*, local: bool, s3: bool) -> tuple[int, ...]:
    """repo1 on the host's own disk (not on a cluster: a member's disk is not shared),
    repo2 in S3."""
    return tuple(number for number, on in ((1, local), (2, s3)) if on)


def _s3_lines(repo: S3Repo) -> list[str]:
    lines = [
        "repo2-type=s3",
        f"repo2-path={repo.path}",
        f"repo2-s3-bucket={repo.bucket}",
        f"repo2-s3-region={repo.region}",
        f"repo2-s3-endpoint={repo.endpoint}",
        f"repo2-s3-uri-style={repo.uri_style}",
        f"repo2-s3-key-type={repo.key_type}",
        # One object per backup set instead of one per small file: far fewer requests.
        "repo2-bundle=y",
        "repo2-cipher-type=aes-256-cbc",
        f"repo2-retention-full={repo.retention_full}",
        f"repo2-retention-diff={repo.retention_diff}",
    ]
    if repo.port != 443:
        lines.append(f"repo2-storage-port={repo.port}")
    if repo.ca_file:
        lines.append(f"repo2-storage-ca-file={repo.ca_file}")
    if repo.kms_key_id:
        lines.append(f"repo2-s3-kms-key-id={repo.kms_key_id}")
    return lines


def config_text(*, stanza: str, repo_path: Path | None, cluster: Cluster,
                retention_full: int = 2, retention_diff: int = 6, process_max: int = 2,
                log_path: Path | None = None, lock_path: Path | None = None,
                s3: S3Repo | None = None, peers: Peers | None = None) -> str:
    """pgbackrest.conf for a local repository (``repo_path``) and/or an S3 one, and one
    cluster (with ``peers``: a member of a Patroni cluster, see :class:`Peers`).

    Retention counts backups, and pgBackRest expires WAL only up to the oldest kept
    backup, so every kept backup stays restorable to any moment after it. No secret is
    written here (see ``cipher_file_command``).
    """
    local = [f"repo1-path={repo_path}", f"repo1-retention-full={retention_full}",
             f"repo1-retention-diff={retention_diff}"] if repo_path else []
    lines = [
        "# Managed by donnadb (donnadb/backup/pitr.py).",
        "[global]",
        *local,
        *(_s3_lines(s3) if s3 else ()),
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
    if peers:
        lines += _tls_server_lines(peers, stanza)
    lines += [
        "",
        f"[{stanza}]",
        f"pg1-path={cluster.data_dir}",
        f"pg1-port={cluster.port}",
        f"pg1-socket-path={SOCKET_DIR}",
        *(_peer_lines(peers, cluster) if peers else ()),
        "",
    ]
    return "\n".join(lines)


def _tls_server_lines(peers: Peers, stanza: str) -> list[str]:
    """This member's ``pgbackrest server``: the deploy's certificate, clients with a
    certificate of the deploy's CA whose CN is a member's, for this stanza only."""
    return [f"tls-server-address={peers.address}",
            f"tls-server-cert-file={peers.cert}",
            f"tls-server-key-file={peers.key}",
            f"tls-server-ca-file={peers.ca}",
            *(f"tls-server-auth={client}={stanza}" for client in peers.clients)]


def _peer_lines(peers: Peers, cluster: Cluster) -> list[str]:
    """pg2.. : the other members, through their TLS servers."""
    lines = []
    for index, name in enumerate(peers.hosts, start=2):
        lines += [f"pg{index}-host={name}", f"pg{index}-host-type=tls",
                  f"pg{index}-host-cert-file={peers.cert}",
                  f"pg{index}-host-key-file={peers.key}",
                  f"pg{index}-host-ca-file={peers.ca}",
                  f"pg{index}-path={cluster.data_dir}", f"pg{index}-port={cluster.port}",
                  f"pg{index}-socket-path={SOCKET_DIR}"]
    return lines


#: Seconds after which a quiet server switches WAL anyway: the most a restore can lose.
ARCHIVE_TIMEOUT = 60


def archive_command(engine: Engine) -> str:
    return f"pgbackrest {' '.join(engine.options())} archive-push %p"


def archive_conf_text(engine: Engine) -> str:
    """postgresql.conf lines (conf.d) that hand every WAL segment to pgBackRest."""
    return (
        "# Managed by donnadb: WAL archiving to pgBackRest (needs a restart to change).\n"
        "wal_level = replica\n"
        "archive_mode = on\n"
        f"archive_command = '{archive_command(engine)}'\n"
        f"archive_timeout = {ARCHIVE_TIMEOUT}\n"
    )


def stanza_create(engine: Engine) -> None:
    engine.run("stanza-create")


def check(engine: Engine, *, verify: bool = False) -> dict:
    """pgBackRest's own check (archiving works into every repository), each repository's
    newest backup from ``info``, and with ``verify`` pgBackRest's ``verify`` of each
    repository (every file of every backup and WAL segment against its checksum).

    Never raises: the result says ``ok`` and carries the error line.
    """
    try:
        engine.run("check", timeout=300)
        info = stanza_info(engine)
        verified = {str(repo): verify_repo(engine, repo) for repo in engine.repos} \
            if verify else None
    except BackupError as exc:
        return {"ok": False, "error": str(exc)}
    report = overview(engine, info)
    if verified is not None:
        report["verified"] = verified
        bad = [f"repo{repo}: {error}" for repo, error in verified.items() if error]
        if bad:
            report.update(ok=False, error="pgbackrest verify failed: " + "; ".join(bad))
    return report


def overview(engine: Engine, info: dict) -> dict:
    """What ``info`` says of the stanza: its backups, archived WAL, each repository."""
    backups = info.get("backup", [])
    archive = (info.get("archive") or [{}])[-1]
    newest = backups[-1] if backups else None
    return {
        "ok": True,
        "backups": len(backups),
        "newest_backup": newest["label"] if newest else None,
        "newest_backup_age_hours": _age_hours(newest),
        "wal_min": archive.get("min"),
        "wal_max": archive.get("max"),
        "repos": repo_summary(info, engine.repos),
    }


def _age_hours(backup: dict | None) -> float | None:
    if not backup:
        return None
    return round((time.time() - backup["timestamp"]["stop"]) / 3600, 3)


def repo_summary(info: dict, repos: tuple[int, ...]) -> dict[str, dict]:
    """Per repository: its status line, how many backups, the newest and when it ended."""
    status = {r.get("key"): r.get("status", {}) for r in info.get("repo", [])}
    summary = {}
    for repo in repos:
        own = [b for b in info.get("backup", [])
               if b.get("database", {}).get("repo-key") == repo]
        newest = own[-1] if own else None
        summary[str(repo)] = {
            "status": status.get(repo, {}).get("message"),
            "backups": len(own),
            "newest_backup": newest["label"] if newest else None,
            "newest_backup_stop": newest["timestamp"]["stop"] if newest else None,
            "newest_backup_age_hours": _age_hours(newest),
        }
    return summary


def verify_repo(engine: Engine, repo: int) -> str | None:
    """``pgbackrest verify`` of one repository: None when clean, else its error line."""
    try:
        engine.run("verify", f"--repo={repo}", timeout=6 * 3600)
    except BackupError as exc:
        return str(exc)
    return None


#: pgBackRest's view of its repositories, saved by the jobs that can read them (the
#: cluster owner's) for monitoring, which cannot run pgBackRest: `status` reads it.
STATE_FILE = "pgbackrest-state.json"


def save_state(directory: Path, report: dict) -> None:
    """Keep a successful check's per-repository summary in ``directory`` (0640).

    Never raises: a backup that worked is not failed by its bookkeeping.
    """
    if not report.get("ok"):
        return
    state = {"checked_at": time.time(), "wal_max": report.get("wal_max"),
             "repos": {repo: {key: seen[key] for key in
                              ("backups", "newest_backup", "newest_backup_stop")}
                       for repo, seen in report["repos"].items()}}
    path = Path(directory) / STATE_FILE
    try:
        storage_local.write_group_readable(Path(directory), path, json.dumps(state))
    except OSError as exc:
        log.warning("cannot save pgBackRest's state in %s: %s", path, exc)


def load_state(directory: Path) -> dict | None:
    """The state :func:`save_state` kept, or None (none yet, or unreadable)."""
    try:
        return json.loads((Path(directory) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def stanza_info(engine: Engine) -> dict:
    out = json.loads(engine.run("info", "--output=json") or "[]")
    return out[0] if out else {}


def physical_backup(engine: Engine, kind: str = "full", repo: int | None = None) -> list[dict]:
    """Take a ``full``, ``diff`` or ``incr`` backup into ``repo`` (every configured
    repository by default, local first), then expire; return each new ``info`` entry.

    :raises BackupError: pgBackRest failed (backups taken before it are kept).
    """
    if kind not in ("full", "diff", "incr"):
        raise BackupError(f"unknown backup type {kind!r}; use full, diff or incr")
    repos = engine.repos if repo is None else (repo,)
    if not set(repos) <= set(engine.repos):
        raise BackupError(f"repository {repo} is not configured; this stanza has "
                          + ", ".join(f"repo{r}" for r in engine.repos))
    # A replica (a cluster's member) copies its own files; the leader, which pgBackRest
    # finds among the stanza's other hosts, starts and stops the backup.
    standby = ["--backup-standby"] if _psql(SQL_IN_RECOVERY, engine.cluster.port) == "t" \
        else []
    for each in repos:
        engine.run("backup", f"--repo={each}", f"--type={kind}", *standby)
    engine.run("expire")
    summary = stanza_info(engine).get("backup", [])
    return [next(b for b in reversed(summary) if b["database"]["repo-key"] == each)
            for each in repos]


#: A time target as pgBackRest takes it (always in UTC).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f+00"
LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


@dataclass(frozen=True)
class Target:
    """A recovery target as pgBackRest takes it: ``--type=time|lsn|xid --target=...``."""

    kind: str
    value: str

    @classmethod
    def at_time(cls, moment: datetime) -> Target:
        if moment.tzinfo is None:
            raise RestoreRefused("give the PITR target with a time zone, e.g. "
                                 "'2026-11-25 10:00:00+00'")
        return cls("time", moment.astimezone(UTC).strftime(TIME_FORMAT))

    @classmethod
    def at_lsn(cls, lsn: str) -> Target:
        if not LSN_RE.match(lsn):
            raise RestoreRefused(f"--lsn {lsn!r} is not a WAL location; use e.g. 0/3000060 "
                                 "(SELECT pg_current_wal_lsn())")
        return cls("lsn", lsn.upper())

    @classmethod
    def at_xid(cls, xid: str) -> Target:
        if not xid.isdigit():
            raise RestoreRefused(f"--xid {xid!r} is not a transaction id; use e.g. 7412 "
                                 "(SELECT pg_current_xact_id())")
        return cls("xid", xid)

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass
class PitrResult:
    target: str
    repo: int | None
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
    socket only, not archiving (it must never push WAL into the cluster's repository).

    pg_partman's worker is given no database: its maintenance would add partitions to a
    copy a drill is comparing, and a worker launching its per-database job when the
    copy is told to stop can keep the postmaster from ever exiting.
    """
    options = " ".join([
        f"-c config_file={cluster.conf_dir / 'postgresql.conf'}",
        f"-c data_directory={data_dir}",
        f"-c port={port}",
        "-c listen_addresses=''",
        f"-c external_pid_file={data_dir / 'pitr.pid'}",
        f"-c cluster_name={cluster.name}-pitr",
        "-c archive_mode=off",
        "-c pg_partman_bgw.dbname=''",
    ])
    _pg_ctl(cluster, data_dir, "-o", options, "-l", str(data_dir / "pitr.log"),
            "-w", "-t", "300", "start")


def stop_copy(cluster: Cluster, data_dir: Path, *, fast_timeout: int = 60) -> None:
    """Stop a copy: fast, then immediate if it has not stopped within ``fast_timeout``
    seconds (a copy is throwaway; a stop that never returns would hold up every later
    drill on this host).

    :raises BackupError: not even the immediate stop worked.
    """
    try:
        _pg_ctl(cluster, data_dir, "-m", "fast", "-w", "-t", str(fast_timeout), "stop")
    except BackupError:
        try:
            _pg_ctl(cluster, data_dir, "-m", "immediate", "-w", "-t", "60", "stop")
        except BackupError:
            # pg_ctl fails too when the fast stop ended just before it: no server left.
            if copy_running(cluster, data_dir):
                raise


def copy_running(cluster: Cluster, data_dir: Path) -> bool:
    """A server runs in ``data_dir`` (a machine that died leaves a stale postmaster.pid
    behind, which pg_ctl status tells apart)."""
    cmd = db.as_cluster_owner([str(cluster.bin_dir / "pg_ctl"), "-D", str(data_dir), "status"])
    return subprocess.run(cmd, capture_output=True, check=False, cwd="/").returncode == 0


def _wait_promoted(port: int, stall_timeout: float = REPLAY_STALL_TIMEOUT,
                   probe: Callable[[], list[str]] | None = None) -> None:
    """Wait until the restored server on ``port`` has left recovery, however long its
    replay takes, as long as it moves: no new WAL replayed for ``stall_timeout`` seconds
    fails. ``probe`` gives ``[in recovery 't'|'f', replay LSN]`` (default: ask the server).

    :raises BackupError: replay stalled, or the server went away (its log says why: a
        target past the end of the WAL stops it).
    """
    probe = probe or (lambda: _psql(SQL_REPLAY, port).split("|"))
    replayed, deadline = None, time.monotonic() + stall_timeout
    while True:
        recovering, lsn = probe()
        if recovering == "f":
            return
        if lsn != replayed:
            replayed, deadline = lsn, time.monotonic() + stall_timeout
        elif time.monotonic() > deadline:
            raise BackupError(f"the restored server on port {port} has replayed no WAL for "
                              f"{stall_timeout:.0f} s (still at {lsn or 'its start'}); "
                              "see its pitr.log")
        time.sleep(0.2)


def _chosen_backup(engine: Engine, target: Target, repo: int | None) -> dict | None:
    """The backup a restore to ``target`` starts from, as pgBackRest chooses it: for a
    time, the newest (of ``repo``, or of any) that ended before it; else the newest.
    None: the stanza has no backup (pgBackRest says so itself).

    :raises RestoreRefused: every backup ended after the target time.
    """
    backups = [b for b in stanza_info(engine).get("backup", [])
               if repo is None or b.get("database", {}).get("repo-key") == repo]
    if backups and target.kind == "time":
        moment = datetime.strptime(target.value, TIME_FORMAT).replace(tzinfo=UTC)
        before = [b for b in backups if b["timestamp"]["stop"] <= moment.timestamp()]
        if not before:
            oldest = datetime.fromtimestamp(backups[0]["timestamp"]["stop"], UTC)
            raise RestoreRefused(f"no backup ended before {target.value}: the oldest "
                                 f"ended at {oldest:%Y-%m-%d %H:%M:%S}+00; choose a later "
                                 "time; nothing was changed")
        backups = before
    return backups[-1] if backups else None


def _require_room(engine: Engine, target: Target, repo: int | None, where: Path) -> None:
    """Refuse a restore that cannot succeed, before anything is stopped or written: no
    backup before the target, or a copy that cannot fit on the file system of ``where``
    (found now, not as a full disk half-way through).

    :raises RestoreRefused: no backup ended before the target time.
    :raises DiskWriteError: less free space than the backup plus :data:`room.MARGIN`.
    """
    backup = _chosen_backup(engine, target, repo)
    if backup is not None:
        room.require(where, backup["info"]["size"] + room.MARGIN,
                     f"the restore of backup {backup['label']} (and its WAL)")


def _put_back(cluster: Cluster, dest: Path, aside: Path, cause: BackupError) -> NoReturn:
    """An in-place restore that failed before its server was promoted (pgBackRest failed:
    a file missing from the repository, a full disk; or the restored server did not
    start): the old data directory goes back in place and the cluster starts on it, as
    if nothing ran.

    :raises BackupError: always: ``cause``, and what became of the cluster.
    """
    try:
        _pg_ctlcluster(cluster, "stop", "-m", "immediate")
        if (dest / "postmaster.pid").exists():
            raise BackupError("the restored server did not stop (postmaster.pid remains)")
        shutil.rmtree(dest)  # only what the failed restore wrote (dest was new)
        aside.rename(dest)
        _pg_ctlcluster(cluster, "start")
    except (BackupError, OSError) as exc:
        raise BackupError(f"{cause}; putting the cluster back failed too ({exc}): its data "
                          f"before the restore is kept in {aside}") from None
    raise BackupError(f"{cause}; nothing was changed: the cluster runs again on its data "
                      "from before the restore") from None


def restore_to_time(engine: Engine, target_time: datetime, **where) -> PitrResult:
    """Restore the cluster as it was at ``target_time``: :func:`restore_to`."""
    return restore_to(engine, Target.at_time(target_time), **where)


def restore_to(engine: Engine, target: Target, *, repo: int | None = None,
               data_dir: Path | None = None, port: int | None = None,
               in_place: bool = False) -> PitrResult:
    """Restore the cluster up to ``target`` from ``repo`` (pgBackRest's choice: the
    first repository holding a backup before the target) and check it answers queries.

    :raises RestoreRefused: ``data_dir`` is not empty, or in place without a data dir plan;
        ``repo`` is not configured; no backup ended before the target time.
    :raises DiskWriteError: the copy would not fit (checked before anything changes).
    :raises BackupError: pgBackRest or the restored server failed (in place: the
        cluster is back on its old data when that happened before promotion).
    """
    if repo is not None and repo not in engine.repos:
        raise RestoreRefused(f"repository {repo} is not configured; this stanza has "
                             + ", ".join(f"repo{r}" for r in engine.repos))
    started = time.monotonic()
    cluster = engine.cluster
    aside = None
    if in_place:
        dest, port = cluster.data_dir, cluster.port
        if not (dest / "PG_VERSION").exists():
            raise RestoreRefused(f"{dest} is not a data directory; check PG_CLUSTER and "
                                 "PG_DATA_DIR")
        if dest.is_mount():
            raise RestoreRefused(f"{dest} is a mount point, which cannot be renamed aside: "
                                 "restore into a --data-dir, then move the data over; "
                                 "nothing was changed")
        # The old directory stays beside the new one: check before the cluster stops.
        _require_room(engine, target, repo, dest.parent)
        _pg_ctlcluster(cluster, "stop", "-m", "fast")
        if (dest / "postmaster.pid").exists():
            # Renaming the directory under a running server would corrupt it.
            raise BackupError(f"cluster {cluster.version}/{cluster.name} did not stop "
                              "(postmaster.pid remains); nothing was changed")
        aside = dest.with_name(f"{dest.name}.before-pitr-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        try:
            dest.rename(aside)  # kept, never deleted: the operator removes it when satisfied
        except OSError as exc:
            _pg_ctlcluster(cluster, "start")
            raise BackupError(f"cannot rename {dest} aside ({exc.strerror}); nothing was "
                              "changed: the cluster runs again") from None
    else:
        if data_dir is None or port is None:
            raise RestoreRefused("a PITR copy needs --data-dir and --port (or --in-place)")
        dest = data_dir.resolve()
        if any(c in str(dest) for c in " '\"\\"):
            # it is passed inside pg_ctl's -o option string
            raise RestoreRefused(f"--data-dir {dest} must not contain spaces or quotes")
        if dest.exists() and any(dest.iterdir()):
            raise RestoreRefused(f"{dest} is not empty; choose an empty --data-dir")
        _require_room(engine, target, repo,
                      next(p for p in (dest, *dest.parents) if p.exists()))
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(dest, PG_OWNER, PG_OWNER)
    restore = ("restore", f"--pg1-path={dest}", f"--type={target.kind}",
               f"--target={target.value}", "--target-action=promote",
               *(() if repo is None else (f"--repo={repo}",)),
               *(() if in_place else ("--archive-mode=off",)))
    if in_place:
        try:
            engine.run(*restore)
            _pg_ctlcluster(cluster, "start")
        except BackupError as exc:
            _put_back(cluster, dest, aside, exc)
    else:
        engine.run(*restore)
        start_copy(cluster, dest, port)
    _wait_promoted(port)
    now = _psql(SQL_SANITY, port).split("|")[0]
    return PitrResult(str(target), repo, str(dest), port,
                      round(time.monotonic() - started, 2), now, in_place)

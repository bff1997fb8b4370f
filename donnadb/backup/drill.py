"""``backup drill``: restore the newest backups into throwaway copies and prove the data.

Logical: the newest good backup is restored into a throwaway database (the same path
as ``backup restore``, which checks files, schema version and row counts), then every
table's content checksum and every partition's row count are taken again in the copy
and compared with those the manifest recorded in the dump's own snapshot
(dbfacts.table_facts). One byte changed in one row fails the drill, naming the table.

Physical (pgBackRest), once per repository (every configured one unless one is named):
a marker row is written to the live database just before a target moment and one just
after it, their WAL is switched out and waited for in the archive, and the cluster is
restored from that repository's newest backup to that moment into a throwaway data
directory on a scratch port: the first marker must be there and the second must not. The
markers go to ``system_logs``: the audit trail already takes the drill's result, the
application role may not change it (so nothing else writes there under our trace id),
it is indexed by ``trace_id`` and its partitions age out with log retention, so no
migration and no table of the drill's own are needed.

Each run measures RTO (seconds to restore and check) and RPO (the age of the restored
data: the drill's end minus the snapshot, or minus the target moment), writes one
``system_logs`` row per drill and keeps the last result of each (``logical``,
``physical-repo<N>``) in ``BACKUP_REPO_DIR/drill-state.json``, which `donnactl metrics`
and `health` read. What killed drills left behind is removed first (drillclean).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from donnadb import db
from donnadb.backup import bootstrap, dbfacts, drillclean, pitr, restore, storage_local
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupError
from donnadb.config import Settings
from donnadb.errors import DonnaError, UsageError
from donnadb.ops import archiving, eventlog
from donnadb.ops.backups import pgbackrest_repos

log = logging.getLogger(__name__)

STATE_NAME = "drill-state.json"
#: drill-state.json's key of a physical drill: one per repository.
PHYSICAL_KEY_RE = re.compile(r"^physical-repo([0-9]+)$")
MARKER_MESSAGE = "backup drill marker"
#: Markers and results are written as the superuser: the backup jobs' user holds only
#: the backup role's password, and that role may read, not write.
SQL_INSERT_LOG = ("INSERT INTO public.system_logs (level, message, context, trace_id) "
                  "VALUES ({level}, {message}, {context}::jsonb, {trace_id})")
SQL_NOW = "SELECT now()"
#: The segment holding everything written so far, closed so it is archived now.
SQL_SWITCH_WAL = "SELECT pg_walfile_name(pg_switch_wal())"
SQL_MARKERS = ("SELECT count(*) FILTER (WHERE trace_id = {before}), "
               "count(*) FILTER (WHERE trace_id = {after}) FROM public.system_logs "
               "WHERE trace_id IN ({before}, {after})")


@dataclass
class DrillResult:
    """One kind's drill. ``ok`` is False on any mismatch; ``skipped`` says why none ran."""

    kind: str
    ok: bool
    started_at: str = field(default_factory=mf.now_utc)
    backup_id: str | None = None
    #: Seconds from the start of the restore to the end of the checks.
    rto_seconds: float | None = None
    #: Age of the restored data when the drill ended: its end minus the snapshot (or the
    #: physical target moment).
    rpo_seconds: float | None = None
    backup_size_bytes: int | None = None
    database_size_bytes: int | None = None
    #: Per table: rows expected/restored, checksum equal (None: not in the manifest).
    tables: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[dict[str, Any]] = field(default_factory=list)
    checksums_available: bool = False
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    target_time: str | None = None
    #: The pgBackRest repository a physical drill restored from.
    repo: int | None = None

    @property
    def key(self) -> str:
        """Its entry in drill-state.json: the kind, per repository for physical drills."""
        return self.kind if self.repo is None else f"{self.kind}-repo{self.repo}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def _age_seconds(since: datetime) -> float:
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - since).total_seconds(), 1)


def logical_drill(settings: Settings, backup: storage_local.LocalBackup) -> DrillResult:
    """Restore ``backup`` into a throwaway database and compare it with its manifest.

    Never raises for a damaged backup or a mismatch: the result says so.

    :raises ConfigError, BackupError: the backup's key is missing here (nothing ran).
    """
    result = DrillResult("logical", True, backup_id=backup.backup_id)
    manifest = backup.manifest
    if manifest is None:
        result.fail(f"backup {backup.backup_id} has no readable manifest")
        return result
    result.backup_size_bytes = manifest.total_size
    result.database_size_bytes = manifest.database_size
    expected_sums = manifest.checksums
    expected_parts = manifest.partition_counts
    result.checksums_available = expected_sums is not None
    restore.decryption(settings, manifest)  # no key here: an error before any work
    scratch = f"{drillclean.SCRATCH_PREFIX}{secrets.token_hex(4)}"
    started = time.monotonic()
    try:
        try:
            # Compared with the backup's own checksums, then dropped: erasing users in
            # it would make it differ, and nobody reads it.
            restored = restore.restore_backup(settings, backup, scratch,
                                              apply_erasures=False)
            with db.connection("backup", settings=settings, dbname=scratch) as conn:
                # the method the manifest names: older backups keep theirs
                got = dbfacts.table_facts(
                    conn, algorithm=manifest.checksum_algorithm or dbfacts.CHECKSUM_ALGORITHM)
        except (DonnaError, psycopg.Error) as exc:
            result.fail(f"restore: {exc}")
            return result
        result.rto_seconds = round(time.monotonic() - started, 3)
        _compare(result, manifest, restored.row_counts, got, expected_sums, expected_parts)
    finally:
        _drop_quietly(settings, scratch)
    result.rpo_seconds = _age_seconds(manifest.started)
    return result


def _compare(result: DrillResult, manifest: mf.Manifest, restored_counts: dict[str, int],
             got: dbfacts.TableFacts, expected_sums: dict[str, str] | None,
             expected_parts: dict[str, int] | None) -> None:
    for table, rows in sorted(manifest.row_counts.items()):
        entry = {"table": table, "rows_expected": rows,
                 "rows_restored": restored_counts.get(table), "checksum_equal": None}
        if expected_sums is not None:
            entry["checksum_equal"] = expected_sums.get(table) == got.checksums.get(table)
            if not entry["checksum_equal"]:
                result.fail(f"table {table}: content checksum differs from the backup's "
                            "snapshot (same row count, different data)")
        result.tables.append(entry)
    for part, rows in sorted((expected_parts or {}).items()):
        restored_rows = got.partition_counts.get(part)
        result.partitions.append({"partition": part, "rows_expected": rows,
                                  "rows_restored": restored_rows})
        if restored_rows != rows:
            result.fail(f"partition {part}: {restored_rows} rows restored != {rows}")
    for part in sorted(set(got.partition_counts) - set(expected_parts or got.partition_counts)):
        result.fail(f"partition {part}: in the restored copy, not in the backup")


def _drop_quietly(settings: Settings, name: str) -> None:
    try:
        bootstrap.drop_database(name, port=settings.db_port)
    except DonnaError as exc:
        log.error("could not drop the drill's copy %s (%s); drop it by hand", name, exc)


def _live_sql(settings: Settings, query: sql.Composable) -> str:
    return db.superuser_psql(query.as_string(None), dbname=settings.db_name,
                             port=settings.db_port)


def _write_marker(settings: Settings, marker: str, note: str) -> None:
    _live_sql(settings, sql.SQL(SQL_INSERT_LOG).format(
        level=sql.Literal("info"), message=sql.Literal(MARKER_MESSAGE),
        context=sql.Literal(json.dumps({"drill": "physical", "marker": note})),
        trace_id=sql.Literal(marker)))


def _wait_archived(settings: Settings, segment: str, timeout: float) -> None:
    """Wait until ``segment`` (or a later one) is in the archive.

    :raises BackupError: it is not after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        row = _archiver(settings)
        archived, failed = row["last_archived_wal"] or "", row["last_failed_wal"]
        # WAL file names sort in the order they are written (timeline, then position).
        if archived >= segment:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"WAL segment {segment} was not archived within {timeout:.0f} s "
                              f"(last archived {archived or 'none'}, last failed "
                              f"{failed or 'none'}); fix archiving, see `donnactl backup "
                              "check`")
        time.sleep(0.5)


def _archiver(settings: Settings) -> dict[str, Any]:
    """pg_stat_archiver as monitoring reads it (archiving.ARCHIVER_SQL), one JSON row."""
    query = f"SELECT row_to_json(a) FROM ({archiving.ARCHIVER_SQL}) a"
    return json.loads(db.superuser_psql(query, dbname=settings.db_name, port=settings.db_port))


def drill_repos(settings: Settings, repo: int | None = None) -> tuple[int, ...]:
    """The repositories a physical drill goes through: ``repo``, or every configured one
    (the local one first: a broken local copy shows before the long download).

    :raises ConfigError: pgBackRest is not enabled.
    :raises UsageError: ``repo`` is not configured.
    """
    configured = pitr.engine_from_settings(settings).repos
    if repo is not None and repo not in configured:
        raise UsageError(f"repository {repo} is not configured; this host's pgBackRest has "
                         + ", ".join(f"repo{r}" for r in configured) + " only")
    return configured if repo is None else (repo,)


def physical_drills(settings: Settings, *, repo: int | None = None,
                    **options: Any) -> list[DrillResult]:
    """:func:`physical_drill` of each of :func:`drill_repos`, one after the other.

    :raises ConfigError, UsageError: as :func:`drill_repos`.
    """
    return [physical_drill(settings, repo=each, **options)
            for each in drill_repos(settings, repo)]


def physical_drill(settings: Settings, *, repo: int | None = None, port: int | None = None,
                   work_dir: Path | None = None, archive_timeout: float = 300) -> DrillResult:
    """Restore the newest pgBackRest backup of ``repo`` (default: the first configured)
    to a moment just after a marker row, into a throwaway data directory on a scratch
    port; check the marker; remove the copy.

    Never raises for a failed restore or a missing marker: the result says so.

    :raises ConfigError: pgBackRest is not enabled.
    """
    engine = pitr.engine_from_settings(settings)
    repo = repo or engine.repos[0]
    result = DrillResult("physical", True, repo=repo)
    port = port or settings.backup_drill_port
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    data_dir = (work_dir or settings.backup_drill_dir) / f"drill-{stamp}-repo{repo}"
    try:
        backups = [b for b in pitr.stanza_info(engine).get("backup", [])
                   if b.get("database", {}).get("repo-key") == repo]
        if not backups:
            # A fresh host before its first physical-diff run: nothing to prove yet. The
            # missing backup is `backup check`'s and health's (physical_backup_age) to report.
            result.skipped = (f"skipped: no pgBackRest backup in repo{repo} yet (`donnactl "
                              "backup physical` takes one)")
            return result
        newest = backups[-1]
        result.backup_id = newest.get("label")
        result.backup_size_bytes = newest.get("info", {}).get("repository", {}).get("size")
        result.database_size_bytes = newest.get("info", {}).get("size")
        target, marker = _mark_target(settings, newest, archive_timeout)
        result.target_time = target.isoformat()
        _private_dir(data_dir.parent)
        started = time.monotonic()
        pitr.restore_to_time(engine, target, repo=repo, data_dir=data_dir, port=port)
        found = db.superuser_psql(sql.SQL(SQL_MARKERS).format(
            before=sql.Literal(marker), after=sql.Literal(f"{marker}-after")).as_string(None),
            dbname=settings.db_name, port=port)
        result.rto_seconds = round(time.monotonic() - started, 3)
        result.rpo_seconds = _age_seconds(target)
        if found != "1|0":
            before, after = found.split("|")
            result.fail(f"the copy restored to {target.isoformat()} has {before} of the marker "
                        f"rows written before it (want 1) and {after} written after (want 0)")
    except DonnaError as exc:
        result.fail(f"restore: {exc}")
    finally:
        _remove_copy(engine, data_dir)
    return result


def _mark_target(settings: Settings, newest: dict[str, Any],
                 archive_timeout: float) -> tuple[datetime, str]:
    """Write the marker rows around a target moment after ``newest`` (a backup's
    ``info`` entry) stopped and wait until their WAL is archived: (target, marker).

    :raises DonnaError: the live database or archiving failed.
    """
    # pgBackRest restores to a moment only from a backup that stopped before it, and
    # keeps stop times to the second: a backup taken just now must be left behind.
    stopped = newest.get("timestamp", {}).get("stop", 0)
    time.sleep(max(0.0, stopped + 1.1 - time.time()))
    marker = f"drill-{secrets.token_hex(8)}"
    _write_marker(settings, marker, "before the target: must be restored")
    target = datetime.fromisoformat(_live_sql(settings, sql.SQL(SQL_NOW)))
    # Recovery stops at the first commit after the target, so one must follow it.
    _write_marker(settings, f"{marker}-after", "after the target: must not be restored")
    segment = _live_sql(settings, sql.SQL(SQL_SWITCH_WAL))
    _wait_archived(settings, segment, archive_timeout)
    return target, marker


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700, the cluster owner's) or accept it only as a real directory
    of root's or the owner's that nobody else can write: it may sit in /var/tmp, where
    anyone could have made it first to steer a copy of the whole cluster.

    :raises BackupError: it exists and is not such a directory.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
        if os.geteuid() == 0:
            shutil.chown(path, pitr.PG_OWNER, pitr.PG_OWNER)
        return
    except FileExistsError:
        pass
    st = path.lstat()
    owners = {0, pwd.getpwnam(pitr.PG_OWNER).pw_uid}
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o022:
        raise BackupError(f"{path} must be a directory owned by root or {pitr.PG_OWNER} "
                          "that nobody else can write; remove it or set BACKUP_DRILL_DIR")


def _remove_copy(engine: pitr.Engine, data_dir: Path) -> None:
    try:
        drillclean.remove_copy(engine.cluster, data_dir)
    except DonnaError as exc:
        log.error("could not stop the drill's copy in %s (%s); the next drill removes it",
                  data_dir, exc)


def record(settings: Settings, results: list[DrillResult]) -> None:
    """Keep each result that ran as the last of its kind and repository
    (drill-state.json) and write it to ``system_logs``; a database that cannot take the
    row is logged, not raised: the state file, which the metrics read, is what must
    not be lost."""
    ran = [r for r in results if r.skipped is None]
    if not ran:
        return
    state = read_state(settings.backup_repo_dir)
    for r in ran:
        previous = state.get(r.key, {})
        state[r.key] = {
            "kind": r.kind, "repo": r.repo,
            "last_run_at": r.started_at, "ok": r.ok, "backup_id": r.backup_id,
            "rto_seconds": r.rto_seconds, "rpo_seconds": r.rpo_seconds,
            "problem": r.problems[0] if r.problems else None,
            "last_success_at": r.started_at if r.ok else previous.get("last_success_at"),
        }
    if any(r.kind == "physical" for r in ran):
        _forget_unconfigured(settings, state, keep={r.key for r in ran})
    repo = storage_local.ensure_repo(settings.backup_repo_dir)
    storage_local.write_group_readable(repo, repo / STATE_NAME,
                                       json.dumps(state, indent=2, sort_keys=True) + "\n")
    for r in ran:
        where = f" repo{r.repo}" if r.repo is not None else ""
        query = sql.SQL(SQL_INSERT_LOG).format(
            level=sql.Literal("info" if r.ok else "error"),
            message=sql.Literal(f"backup drill {r.kind}{where} "
                                + ("passed" if r.ok else "FAILED")),
            context=sql.Literal(json.dumps(r.to_dict(), default=str)),
            trace_id=sql.Literal(eventlog.trace_id()))
        try:
            _live_sql(settings, query)
        except DonnaError as exc:
            log.warning("could not write the drill's result to system_logs: %s", exc)


def _forget_unconfigured(settings: Settings, state: dict[str, dict[str, Any]],
                         keep: set[str]) -> None:
    """Drop the physical drills of repositories not configured here any more (the bucket
    went, or an entry from before drills were per repository was taken for repo1's on
    a cluster, which has repo2 only): nothing would refresh them, and health would call
    them stale for ever."""
    configured = pgbackrest_repos(settings)
    for key in [k for k, v in state.items() if v["kind"] == "physical"
                and v["repo"] not in configured and k not in keep]:
        del state[key]


def read_state(repo: Path) -> dict[str, dict[str, Any]]:
    """The last drill result of each kind and repository, keyed ``logical`` and
    ``physical-repo<N>`` (empty when none ran or the file is unreadable). A ``physical``
    entry written before drills were per repository is repo1's: pgBackRest restored
    from its first repository then."""
    try:
        data = json.loads((repo / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    state = {k: v for k, v in data.items() if isinstance(v, dict)
             and (k == "logical" or PHYSICAL_KEY_RE.match(k))}
    legacy = data.get("physical")
    if isinstance(legacy, dict) and "physical-repo1" not in state:
        state["physical-repo1"] = {**legacy, "kind": "physical", "repo": 1}
    for key, entry in state.items():
        entry.setdefault("kind", key.split("-")[0])
        entry.setdefault("repo", None)
    return state

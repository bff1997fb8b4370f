"""``backup drill``: restore the newest backups into throwaway copies and prove the data.

Logical: the newest good backup is restored into a throwaway database (the same path
as ``backup restore``, which checks files, schema version and row counts), then every
table's content checksum and every partition's row count are taken again in the copy
and compared with those the manifest recorded in the dump's own snapshot
(dbfacts.table_facts). One byte changed in one row fails the drill, naming the table.

Physical (pgBackRest): a marker row is written to the live database just before a
target moment and one just after it, their WAL is switched out and waited for in the
archive, and the cluster is restored to that moment into a throwaway data directory
on a scratch port: the first marker must be there and the second must not. The
markers go to ``system_logs``: the audit trail already takes the drill's result, the
application role may not change it (so nothing else writes there under our trace id),
it is indexed by ``trace_id`` and its partitions age out with log retention, so no
migration and no table of the drill's own are needed.

Each run measures RTO (seconds to restore and check) and RPO (the age of the restored
data: the drill's end minus the snapshot, or minus the target moment), writes one
``system_logs`` row per kind and keeps the last result per kind in
``BACKUP_REPO_DIR/drill-state.json``, which `donnactl metrics` and `health` read.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
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
from donnadb.backup import bootstrap, dbfacts, pitr, restore, storage_local
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupError
from donnadb.config import Settings
from donnadb.errors import DonnaError
from donnadb.ops import eventlog

log = logging.getLogger(__name__)

KINDS = ("logical", "physical")
STATE_NAME = "drill-state.json"
SCRATCH_PREFIX = "donna_drill_"
MARKER_MESSAGE = "backup drill marker"
#: Markers and results are written as the superuser: the backup jobs' user holds only
#: the backup role's password, and that role may read, not write.
SQL_INSERT_LOG = ("INSERT INTO public.system_logs (level, message, context, trace_id) "
                  "VALUES ({level}, {message}, {context}::jsonb, {trace_id})")
SQL_NOW = "SELECT now()"
#: The segment holding everything written so far, closed so it is archived now.
SQL_SWITCH_WAL = "SELECT pg_walfile_name(pg_switch_wal())"
SQL_ARCHIVER = ("SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') "
                "FROM pg_stat_archiver")
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
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    started = time.monotonic()
    try:
        try:
            restored = restore.restore_backup(settings, backup, scratch)
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
        archived, failed = _live_sql(settings, sql.SQL(SQL_ARCHIVER)).split("|")
        # WAL file names sort in the order they are written (timeline, then position).
        if archived >= segment:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"WAL segment {segment} was not archived within {timeout:.0f} s "
                              f"(last archived {archived or 'none'}, last failed "
                              f"{failed or 'none'}); fix archiving, see `donnactl backup "
                              "check`")
        time.sleep(0.5)


def physical_drill(settings: Settings, *, port: int | None = None,
                   work_dir: Path | None = None, archive_timeout: float = 300) -> DrillResult:
    """Restore the newest pgBackRest backup to a moment just after a marker row, into a
    throwaway data directory on a scratch port; check the marker; remove the copy.

    Never raises for a failed restore or a missing marker: the result says so.

    :raises ConfigError: pgBackRest is not enabled.
    """
    engine = pitr.engine_from_settings(settings)
    result = DrillResult("physical", True)
    port = port or settings.backup_drill_port
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    data_dir = (work_dir or settings.backup_drill_dir) / f"drill-{stamp}"
    try:
        backups = pitr.stanza_info(engine).get("backup", [])
        if not backups:
            # A fresh host before its first physical-diff run: nothing to prove yet. The
            # missing backup is `backup check`'s and health's (physical_backup_age) to report.
            result.skipped = ("skipped: no pgBackRest backup yet (`donnactl backup physical` "
                              "takes one)")
            return result
        newest = backups[-1]
        result.backup_id = newest.get("label")
        result.backup_size_bytes = newest.get("info", {}).get("repository", {}).get("size")
        result.database_size_bytes = newest.get("info", {}).get("size")
        # pgBackRest restores to a moment only from a backup that stopped before it, and
        # keeps stop times to the second: a backup taken just now must be left behind.
        stopped = newest.get("timestamp", {}).get("stop", 0)
        time.sleep(max(0.0, stopped + 1.1 - time.time()))
        marker = f"drill-{secrets.token_hex(8)}"
        _write_marker(settings, marker, "before the target: must be restored")
        target = datetime.fromisoformat(_live_sql(settings, sql.SQL(SQL_NOW)))
        # Recovery stops at the first commit after the target, so one must follow it.
        _write_marker(settings, f"{marker}-after", "after the target: must not be restored")
        result.target_time = target.isoformat()
        segment = _live_sql(settings, sql.SQL(SQL_SWITCH_WAL))
        _wait_archived(settings, segment, archive_timeout)
        _private_dir(data_dir.parent)
        started = time.monotonic()
        pitr.restore_to_time(engine, target, data_dir=data_dir, port=port)
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
    if (data_dir / "postmaster.pid").exists():
        try:
            pitr.stop_copy(engine.cluster, data_dir)
        except DonnaError as exc:
            log.error("could not stop the drill's copy in %s (%s)", data_dir, exc)
            return  # deleting files under a running server would only add damage
    shutil.rmtree(data_dir, ignore_errors=True)


def record(settings: Settings, results: list[DrillResult]) -> None:
    """Keep each result that ran as its kind's last (drill-state.json) and write it to
    ``system_logs``; a database that cannot take the row is logged, not raised: the
    state file, which the metrics read, is what must not be lost."""
    ran = [r for r in results if r.skipped is None]
    if not ran:
        return
    state = read_state(settings.backup_repo_dir)
    for r in ran:
        previous = state.get(r.kind, {})
        state[r.kind] = {
            "last_run_at": r.started_at, "ok": r.ok, "backup_id": r.backup_id,
            "rto_seconds": r.rto_seconds, "rpo_seconds": r.rpo_seconds,
            "problem": r.problems[0] if r.problems else None,
            "last_success_at": r.started_at if r.ok else previous.get("last_success_at"),
        }
    repo = storage_local.ensure_repo(settings.backup_repo_dir)
    storage_local.write_group_readable(repo, repo / STATE_NAME,
                                       json.dumps(state, indent=2, sort_keys=True) + "\n")
    for r in ran:
        query = sql.SQL(SQL_INSERT_LOG).format(
            level=sql.Literal("info" if r.ok else "error"),
            message=sql.Literal(f"backup drill {r.kind} " + ("passed" if r.ok else "FAILED")),
            context=sql.Literal(json.dumps(r.to_dict(), default=str)),
            trace_id=sql.Literal(eventlog.trace_id()))
        try:
            _live_sql(settings, query)
        except DonnaError as exc:
            log.warning("could not write the drill's result to system_logs: %s", exc)


def read_state(repo: Path) -> dict[str, dict[str, Any]]:
    """The last drill result per kind (empty when none ran or the file is unreadable)."""
    try:
        data = json.loads((repo / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in KINDS and isinstance(v, dict)} \
        if isinstance(data, dict) else {}

"""`donnactl partitions status|maintain`: system_logs' monthly partitions via pg_partman.

Maintenance runs as the migrator with ``SET ROLE`` to the owner (the role that owns
system_logs and pg_partman's configuration). Partitions older than the retention
(``LOG_RETENTION_MONTHS``) are first copied to a gzip'd CSV in ``LOG_ARCHIVE_DIR``,
then dropped by ``partman.drop_partition_time`` in the same transaction, under a lock,
so a partition is never dropped unless its archive was written and counted.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.dal.fileio import name_path
from donnadb.errors import DonnaError
from donnadb.ops import eventlog
from donnadb.ops.status import PARTITIONED_PARENT, PARTITIONS_SQL, partition_coverage

log = logging.getLogger(__name__)

PART_CONFIG_SQL = """
SELECT premake, retention, infinite_time_partitions
FROM partman.part_config WHERE parent_table = %s
"""
SET_PREMAKE_SQL = "UPDATE partman.part_config SET premake = %s WHERE parent_table = %s"
# The same rule as partman.drop_partition_time: whole partition older than reference - retention.
OLD_PARTITIONS_SQL = """
SELECT p.partition_schemaname AS schema, p.partition_tablename AS name,
       i.child_start_time AS starts, i.child_end_time AS ends
FROM partman.show_partitions(%(parent)s) AS p,
     LATERAL partman.show_partition_info(p.partition_schemaname || '.' || p.partition_tablename,
                                         p_parent_table := %(parent)s) AS i
WHERE i.child_end_time < %(reference)s::timestamptz - %(retention)s::interval
ORDER BY i.child_start_time
"""
DROP_OLD_SQL = """
SELECT partman.drop_partition_time(%(parent)s, p_retention := %(retention)s::interval,
                                   p_keep_table := false,
                                   p_reference_timestamp := %(reference)s::timestamptz)
"""
RUN_MAINTENANCE_SQL = "SELECT partman.run_maintenance(%s)"
# run_maintenance only extends past the newest partition; a month dropped by hand is a gap.
GAP_FILL_SQL = "SELECT partman.partition_gap_fill(%s)"
DEFAULT_ROWS_SQL = "SELECT count(*) FROM {}"
NOW_SQL = "SELECT now()"

PARTITION_DETAIL_SQL = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
       greatest(c.reltuples, 0)::bigint AS rows_estimate,
       pg_total_relation_size(c.oid) AS size_bytes
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%(parent)s)
ORDER BY c.relname
"""


class PartitionError(DonnaError):
    """Partition maintenance cannot run (table not managed, archive not writable)."""

    exit_code = 13


def status(settings: Settings, *, dbname: str | None = None) -> dict[str, Any]:
    """Coverage and per-partition sizes of system_logs, read as the readonly role.

    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        now = cur.execute(NOW_SQL).fetchone()["now"]
        present = cur.execute("SELECT to_regclass(%s) AS t", (PARTITIONED_PARENT,)).fetchone()
        if present["t"] is None:
            return {"table": PARTITIONED_PARENT, "present": False, "partitions": []}
        rows = cur.execute(PARTITION_DETAIL_SQL, {"parent": PARTITIONED_PARENT}).fetchall()
        coverage = partition_coverage(cur.execute(PARTITIONS_SQL,
                                                  {"parent": PARTITIONED_PARENT}).fetchall(), now)
    return {"table": PARTITIONED_PARENT, **coverage,
            "retention_months": settings.log_retention_months,
            "premake": settings.partition_premake, "partitions": rows}


def _archive(conn: psycopg.Connection, schema: str, name: str, target: Path) -> int:
    """COPY one partition into ``target`` (gzip'd CSV with header, 0600); return the rows.

    :raises PartitionError: the rows written differ from the rows counted (nothing is dropped).
    """
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
    expected = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
    tmp = target.with_name(f".{target.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lines = 0
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                       mtime=0) as out:
            copy_sql = sql.SQL("COPY (SELECT * FROM {} ORDER BY created_at) TO STDOUT "
                               "WITH (FORMAT csv, HEADER)").format(table)
            with conn.cursor().copy(copy_sql) as copy:
                for chunk in copy:
                    out.write(chunk)
                    lines += bytes(chunk).count(b"\n")
            out.flush()
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException as exc:  # a full disk: no partial archive; nothing is dropped
        with contextlib.suppress(OSError):  # the first error is the one to report
            os.unlink(tmp)
        name_path(exc, target)
        raise
    # CSV fields may contain newlines, so lines >= rows + header; equality is the common case
    # and fewer lines than rows means a short write.
    if lines < expected + 1:
        tmp.unlink(missing_ok=True)
        raise PartitionError(f"archive of {name} is short ({lines - 1} of {expected} rows); "
                             "nothing dropped")
    tmp.replace(target)
    return expected


def maintain(settings: Settings, *, dbname: str | None = None, dry_run: bool = False
             ) -> dict[str, Any]:
    """Premake partitions ahead (partman.run_maintenance, then partition_gap_fill for holes)
    and archive then drop those older than ``LOG_RETENTION_MONTHS``; one transaction.

    :raises PartitionError: system_logs is not managed by pg_partman, or the archive
        directory cannot be written.
    :raises DatabaseError: the database cannot be reached.
    """
    retention = f"{settings.log_retention_months} months"
    archive_dir = settings.log_archive_dir
    with db.connection("migrator", settings=settings, dbname=dbname) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.db_role_owner)))
        cur = conn.cursor(row_factory=dict_row)
        config = cur.execute(PART_CONFIG_SQL, (PARTITIONED_PARENT,)).fetchone()
        if config is None:
            raise PartitionError(f"{PARTITIONED_PARENT} is not managed by pg_partman; "
                                 "run `donnactl migrate apply`")
        reference: datetime = cur.execute(NOW_SQL).fetchone()["now"]
        params = {"parent": PARTITIONED_PARENT, "retention": retention, "reference": reference}
        old = cur.execute(OLD_PARTITIONS_SQL, params).fetchall()
        before = {r["name"] for r in cur.execute(PARTITIONS_SQL, params).fetchall()}
        archived: list[dict[str, Any]] = []
        if dry_run:
            conn.rollback()
            return {"dry_run": True, "retention": retention, "premake": settings.partition_premake,
                    "would_archive": [{"partition": r["name"], "starts": r["starts"],
                                       "ends": r["ends"]} for r in old],
                    "archive_dir": str(archive_dir), "partitions": len(before)}
        if old:
            try:
                archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise PartitionError(f"cannot create LOG_ARCHIVE_DIR {archive_dir}: "
                                     f"{exc.strerror}") from None
        for row in old:
            target = archive_dir / f"{row['name']}.csv.gz"
            rows = _archive(conn, row["schema"], row["name"], target)
            archived.append({"partition": row["name"], "rows": rows, "file": str(target)})
        dropped = cur.execute(DROP_OLD_SQL, params).fetchone()["drop_partition_time"] if old else 0
        if config["premake"] != settings.partition_premake:
            cur.execute(SET_PREMAKE_SQL, (settings.partition_premake, PARTITIONED_PARENT))
        cur.execute(RUN_MAINTENANCE_SQL, (PARTITIONED_PARENT,))
        cur.execute(GAP_FILL_SQL, (PARTITIONED_PARENT,))
        after = {r["name"] for r in cur.execute(PARTITIONS_SQL, params).fetchall()}
        default_rows = cur.execute(sql.SQL(DEFAULT_ROWS_SQL).format(
            sql.Identifier("public", "system_logs_default"))).fetchone()["count"] \
            if "system_logs_default" in after else 0
        result = {"dry_run": False, "retention": retention, "premake": settings.partition_premake,
                  "created": sorted(after - before), "archived": archived, "dropped": dropped,
                  "partitions": len(after), "default_rows": default_rows,
                  "archive_dir": str(archive_dir)}
        if archived or result["created"]:
            conn.execute(sql.SQL("RESET ROLE"))
            eventlog.record_event(conn, "info", "partitions maintained",
                               {k: result[k] for k in ("created", "archived", "dropped")})
    return result

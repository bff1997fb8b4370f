"""Collects the figures behind `donnactl status`, `health` and `metrics`.

Everything is read through the readonly role (member of ``pg_read_all_stats``), so
looking never needs a role that can change anything. The report is a plain dict of
JSON-able values; ``None`` means "not known" (for example no replication).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.ops import archiving, backups, cluster, cutover, pgbouncer, tls

log = logging.getLogger(__name__)

SERVER_SQL = """
SELECT current_setting('server_version') AS version,
       extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime_seconds,
       pg_is_in_recovery() AS in_recovery,
       current_database() AS database,
       pg_database_size(current_database()) AS size_bytes,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved_connections
"""

CONNECTIONS_SQL = """
SELECT coalesce(state, 'unknown') AS state, count(*)::int AS n
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1 ORDER BY 1
"""

CACHE_SQL = """
SELECT blks_hit::float8 AS hit, blks_read::float8 AS read,
       age(datfrozenxid)::float8 AS xid_age
FROM pg_stat_database d JOIN pg_database USING (datname)
WHERE datname = current_database()
"""

# The session running this very query is excluded: it is never the slow one.
LONGEST_SQL = """
SELECT pid, usename, state,
       extract(epoch FROM now() - {start})::float8 AS seconds,
       left(query, 200) AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND {start} IS NOT NULL {extra}
ORDER BY {start} ASC LIMIT 1
"""
LONGEST_QUERY_SQL = LONGEST_SQL.format(start="query_start", extra="AND state = 'active'")
LONGEST_XACT_SQL = LONGEST_SQL.format(start="xact_start", extra="")

REPLICAS_SQL = """
SELECT application_name, client_addr::text AS client_addr, state,
       coalesce(extract(epoch FROM replay_lag), 0)::float8 AS replay_lag_seconds
FROM pg_stat_replication ORDER BY application_name
"""

REPLICA_LAG_SQL = """
SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END::float8
       AS lag_seconds
"""

SCHEMA_TABLE_SQL = "SELECT to_regclass('public.schema_migrations') IS NOT NULL AS present"
# The migration runner's table (donnadb.migrate): versions are zero-padded numbers.
SCHEMA_VERSION_SQL = "SELECT version FROM schema_migrations ORDER BY version DESC LIMIT 1"
SCHEMA_COUNT_SQL = "SELECT count(*)::int FROM schema_migrations"

# Range bounds of every partition of system_logs, read from the catalogue so the
# readonly role needs no access to pg_partman's configuration tables.
PARTITIONS_SQL = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%(parent)s)
ORDER BY c.relname
"""

# Tables this small cost nothing however bloated; they would only make the ratio noisy.
BLOAT_MIN_TUPLES = 1000
# Rows that fell outside every monthly range (a skewed clock, a bad import).
DEFAULT_ROWS_SQL = "SELECT count(*)::bigint AS n FROM {}"
BLOAT_SQL = """
SELECT relname AS table, n_live_tup::bigint AS live, n_dead_tup::bigint AS dead
FROM pg_stat_user_tables
WHERE n_live_tup + n_dead_tup >= %(min)s
ORDER BY n_dead_tup DESC
"""

PARTITIONED_PARENT = "public.system_logs"
_BOUND_RE = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
# Transaction ids are 32-bit; PostgreSQL stops accepting writes near 2^31.
XID_WRAP_LIMIT = 2**31


def parse_range_bound(bound: str | None) -> tuple[datetime, datetime] | None:
    """(lower, upper) of ``FOR VALUES FROM ('...') TO ('...')``; ``None`` for DEFAULT."""
    match = _BOUND_RE.search(bound or "")
    if not match:
        return None
    return tuple(datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())  # type: ignore[return-value]


def partition_coverage(rows: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Coverage of a time-partitioned table: how many partitions start after ``now``."""
    ranges = [(r["name"], parse_range_bound(r["bound"])) for r in rows]
    bounded = [(name, rng) for name, rng in ranges if rng]
    ahead = sum(1 for _, (lower, _) in bounded if lower > now)
    current = any(lower <= now < upper for _, (lower, upper) in bounded)
    return {
        "present": True,
        "partitions": len(bounded),
        "has_default": len(bounded) != len(ranges),
        "current_covered": current,
        "ahead": ahead,
        "oldest": min((lower for _, (lower, _) in bounded), default=None),
        "covered_until": max((upper for _, (_, upper) in bounded), default=None),
    }


def _schema(cur: psycopg.Cursor) -> dict[str, Any]:
    if not cur.execute(SCHEMA_TABLE_SQL).fetchone()["present"]:
        return {"version": None, "applied": 0}
    row = cur.execute(SCHEMA_VERSION_SQL).fetchone()
    count = cur.execute(SCHEMA_COUNT_SQL).fetchone()["count"]
    return {"version": row["version"] if row else None, "applied": count}


def _bloat(cur: psycopg.Cursor) -> dict[str, Any]:
    rows = cur.execute(BLOAT_SQL, {"min": BLOAT_MIN_TUPLES}).fetchall()
    live = sum(r["live"] for r in rows)
    dead = sum(r["dead"] for r in rows)
    return {
        "dead_tuples": dead,
        "live_tuples": live,
        # Dead tuples over all tuples: the cheap estimate that needs no extension.
        "dead_pct": round(100.0 * dead / (live + dead), 2) if live + dead else 0.0,
        "min_tuples": BLOAT_MIN_TUPLES,
        "worst_tables": [
            {"table": r["table"], "dead": r["dead"], "live": r["live"]}
            for r in rows[:3] if r["dead"]
        ],
    }


def collect(settings: Settings, *, dbname: str | None = None) -> dict[str, Any]:
    """Read every status figure of the database.

    :raises DatabaseError: the server is down or refused the readonly role.
    :raises CredentialsError: the passfile has no password for the readonly role.
    """
    now = datetime.now(UTC)
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        server = cur.execute(SERVER_SQL).fetchone()
        states = {r["state"]: r["n"] for r in cur.execute(CONNECTIONS_SQL).fetchall()}
        cache = cur.execute(CACHE_SQL).fetchone()
        longest_query = cur.execute(LONGEST_QUERY_SQL).fetchone()
        longest_xact = cur.execute(LONGEST_XACT_SQL).fetchone()
        if server["in_recovery"]:
            replication = {"role": "replica", "replicas": [],
                           "lag_seconds": cur.execute(REPLICA_LAG_SQL).fetchone()["lag_seconds"]}
        else:
            replicas = cur.execute(REPLICAS_SQL).fetchall()
            replication = {"role": "primary", "replicas": replicas,
                           "lag_seconds": max((r["replay_lag_seconds"] for r in replicas),
                                              default=None)}
        schema = _schema(cur)
        part_rows = cur.execute(PARTITIONS_SQL, {"parent": PARTITIONED_PARENT}).fetchall()
        present = cur.execute("SELECT to_regclass(%s) IS NOT NULL AS p",
                              (PARTITIONED_PARENT,)).fetchone()["p"]
        partitions = (partition_coverage(part_rows, now) if present
                      else {"present": False, "ahead": None})
        default = [r["name"] for r in part_rows if r["bound"] == "DEFAULT"]
        if default:
            # pg_partman ignores these rows (migration 0002); an operator must move them.
            partitions["default_rows"] = cur.execute(sql.SQL(DEFAULT_ROWS_SQL).format(
                sql.Identifier("public", default[0]))).fetchone()["n"]
        bloat = _bloat(cur)
        archiver = cur.execute(archiving.ARCHIVER_SQL).fetchone()
    total = sum(states.values())
    # Every manifest is read once per scrape: the newest backup and the drills share it.
    good = backups.good_backups(settings.backup_repo_dir)
    usable = server["max_connections"] - server["reserved_connections"]
    hits = cache["hit"] + cache["read"]
    return {
        "collected_at": now,
        "server": {
            "version": server["version"],
            "uptime_seconds": round(server["uptime_seconds"], 1),
            "role": replication["role"],
            "database": server["database"],
            "size_bytes": server["size_bytes"],
        },
        "schema": schema,
        "connections": {
            "by_state": states,
            "total": total,
            "max": usable,
            "used_pct": round(100.0 * total / usable, 2) if usable else 0.0,
        },
        "cache_hit_pct": round(100.0 * cache["hit"] / hits, 2) if hits else None,
        "longest_query": longest_query,
        "longest_transaction": longest_xact,
        "replication": replication,
        "wraparound": {
            "xid_age": int(cache["xid_age"]),
            "pct": round(100.0 * cache["xid_age"] / XID_WRAP_LIMIT, 3),
        },
        "partitions": {"table": PARTITIONED_PARENT, **partitions},
        "bloat": bloat,
        "backup": backups.latest(now=now, repo=settings.backup_repo_dir, good=good),
        "archiving": archiving.summary(
            archiver, settings.backup_repo_dir if settings.pgbackrest_enabled else None,
            now.timestamp()),
        "drill": backups.drills(now=now, repo=settings.backup_repo_dir, good=good),
        "pgbouncer": pgbouncer.pools(settings, dbname=dbname),
        "tls": tls.certificate(settings.tls_server_cert_file, now=now),
        # None on a single host; the members as Patroni sees them in a cluster.
        "cluster": cluster.summary(settings),
        # Each entity's phase, the reconcile backlog and dual-write's copy figures.
        "storage": cutover.collect(settings, now=now),
    }

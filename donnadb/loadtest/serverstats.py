"""Server-side figures for the verdict: pg_stat_statements and PgBouncer's pools.

**Pool efficiency** (the plan's "connection pool efficiency > 90%") is measured at
PgBouncer, from ``SHOW STATS`` taken before and after the run, for the load test's
database::

    efficiency = total_xact_time / (total_xact_time + total_wait_time)

the share of the time client transactions spent in PgBouncer that they were being
served by a server connection rather than queued for one. 1.0 means no transaction
ever waited for a server connection; 0.9 means queueing added 10% to the time spent in
the database. Reported beside it: the mean wait per transaction and, from ``SHOW POOLS``
sampled each second, the peak of client and server connections (the multiplexing
ratio) and the share of samples in which any client was waiting.

pg_stat_statements must be in shared_preload_libraries to collect; when it is not, the
figures say so instead of failing the run. Resetting it needs the superuser, reached as
the deploy does (``runuser -u postgres -- psql`` on the local socket).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import CredentialsError, PreconditionError

log = logging.getLogger(__name__)

# Only this database's entries: other databases' figures are someone else's.
RESET_SQL = """
SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database
                                     WHERE datname = current_database()), 0)
"""
# Planning is counted only while pg_stat_statements.track_planning is on (plan_ms 0
# otherwise); through PgBouncer's transaction pooling every statement is planned on each
# call, so with it on the top statements are ranked by planning + execution.
STATEMENTS_SQL = """
SELECT left(regexp_replace(s.query, '\\s+', ' ', 'g'), 90) AS query,
       s.calls, round(s.mean_exec_time::numeric, 3) AS mean_ms,
       round(s.max_exec_time::numeric, 3) AS max_ms,
       round(s.total_exec_time::numeric, 1) AS total_ms, s.rows,
       round(s.mean_plan_time::numeric, 3) AS plan_ms
  FROM pg_stat_statements AS s
  JOIN pg_database AS d ON d.oid = s.dbid
 WHERE d.datname = current_database()
 ORDER BY s.total_exec_time + s.total_plan_time DESC
 LIMIT %(limit)s
"""
STATEMENTS_TOTAL_SQL = """
SELECT coalesce(sum(s.calls), 0) AS calls,
       round(coalesce(sum(s.total_exec_time) / nullif(sum(s.calls), 0), 0)::numeric, 3)
           AS mean_ms
  FROM pg_stat_statements AS s
  JOIN pg_database AS d ON d.oid = s.dbid
 WHERE d.datname = current_database()
"""
STATS_FIELDS = ("total_xact_count", "total_query_count", "total_xact_time",
                "total_query_time", "total_wait_time")


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


# --- pg_stat_statements -----------------------------------------------------------------
def reset_statements(settings: Settings, dbname: str) -> str | None:
    """Reset pg_stat_statements as the superuser; None when done, else why not."""
    try:
        cmd = db.as_cluster_owner(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                   "-h", "/var/run/postgresql", "-p", str(settings.db_port),
                                   "-d", dbname])
    except PreconditionError as exc:  # an application host: no server here to reset
        return f"cannot reset pg_stat_statements: {exc}"
    try:
        done = subprocess.run(cmd, input=RESET_SQL, capture_output=True, text=True,
                              cwd="/", timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot reset pg_stat_statements: {_last_line(exc)} (run as root on the host)"
    if done.returncode != 0:
        return f"cannot reset pg_stat_statements: {done.stderr.strip().splitlines()[-1:]}"
    return None


def statements(settings: Settings, dbname: str, limit: int = 10) -> dict[str, Any]:
    """``{"total": {...}, "top": [...], "error": str | None}`` for ``dbname``."""
    try:
        with db.connection("readonly", settings=settings, dbname=dbname,
                           row_factory=dict_row, autocommit=True) as conn:
            total = conn.execute(STATEMENTS_TOTAL_SQL).fetchone()
            top = conn.execute(STATEMENTS_SQL, {"limit": limit}).fetchall()
    except (psycopg.Error, OSError, CredentialsError) as exc:
        # No read-only credential (an application host): the verdict stands without them.
        return {"total": None, "top": [], "error": _last_line(exc)}
    return {"total": _plain(total), "top": [_plain(r) for r in top], "error": None}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int) else v)
            for k, v in row.items()}


# --- PgBouncer --------------------------------------------------------------------------
def _admin(settings: Settings, port: int) -> psycopg.Connection:
    # The admin console speaks only the simple query protocol: client-side cursors.
    info = db.conninfo("readonly", settings=settings.model_copy(update={"pgbouncer_port": port}),
                       dbname="pgbouncer", via_pgbouncer=True)
    return psycopg.connect(info, autocommit=True, cursor_factory=psycopg.ClientCursor,
                           row_factory=dict_row)


def pgbouncer_stats(settings: Settings, port: int, dbname: str) -> dict[str, int] | None:
    """``SHOW STATS`` counters of ``dbname`` (cumulative since PgBouncer started)."""
    with _admin(settings, port) as conn:
        for row in conn.execute("SHOW STATS").fetchall():
            if row["database"] == dbname:
                return {k: int(row[k]) for k in STATS_FIELDS}
    return None


class PoolSampler:
    """Samples ``SHOW POOLS`` every ``interval`` seconds in a thread until stopped."""

    def __init__(self, settings: Settings, port: int, dbname: str, interval: float = 1.0):
        self.settings, self.port, self.dbname, self.interval = settings, port, dbname, interval
        self.samples: list[dict[str, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-sampler", daemon=True)

    def __enter__(self) -> PoolSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with _admin(self.settings, self.port) as conn:
                while not self._stop.is_set():
                    rows = [r for r in conn.execute("SHOW POOLS").fetchall()
                            if r["database"] == self.dbname]
                    self.samples.append({
                        "t": int(time.time()),
                        "clients": sum(r["cl_active"] + r["cl_waiting"] for r in rows),
                        "waiting": sum(r["cl_waiting"] for r in rows),
                        "servers": sum(r["sv_active"] + r["sv_idle"] + r["sv_used"]
                                       for r in rows),
                        "maxwait_us": max((r["maxwait"] * 1_000_000 + r["maxwait_us"]
                                           for r in rows), default=0),
                    })
                    self._stop.wait(self.interval)
        except (psycopg.Error, OSError, CredentialsError) as exc:
            # No stats credential (an application host): the run goes on, unmeasured.
            self.error = _last_line(exc)
            log.info("pool sampling stopped: %s", self.error)


def pool_report(before: dict[str, int] | None, after: dict[str, int] | None,
                samples: list[dict[str, int]]) -> dict[str, Any]:
    """Pool efficiency and friends from two SHOW STATS snapshots and the pool samples."""
    if after is None:
        return {"efficiency": None, "error": "no PgBouncer statistics for this database"}
    # No row before the run: PgBouncer had not served this database yet (a `*` entry).
    before = before or dict.fromkeys(STATS_FIELDS, 0)
    d = {k: after[k] - before[k] for k in STATS_FIELDS}
    served_us = d["total_xact_time"]
    waited_us = d["total_wait_time"]
    efficiency = served_us / (served_us + waited_us) if served_us + waited_us > 0 else None
    peak_clients = max((s["clients"] for s in samples), default=0)
    peak_servers = max((s["servers"] for s in samples), default=0)
    return {
        "efficiency": efficiency,
        "transactions": d["total_xact_count"],
        "queries": d["total_query_count"],
        "mean_xact_ms": round(served_us / d["total_xact_count"] / 1000, 3)
        if d["total_xact_count"] else None,
        "mean_wait_ms_per_xact": round(waited_us / d["total_xact_count"] / 1000, 3)
        if d["total_xact_count"] else None,
        "peak_client_connections": peak_clients,
        "peak_server_connections": peak_servers,
        "clients_per_server": round(peak_clients / peak_servers, 1) if peak_servers else None,
        "samples_with_waiting_clients": round(
            sum(1 for s in samples if s["waiting"]) / len(samples), 4) if samples else None,
        "error": None,
    }

"""`donnactl queries top|cancel|terminate`: pg_stat_statements and backend signals.

Reading uses the readonly role (``pg_read_all_stats`` shows every query text). A
backend is signalled by connecting as *the role that owns it*: PostgreSQL lets a role
cancel or terminate its own sessions, so no role needs ``pg_signal_backend`` or
superuser, and a superuser's (or a foreign role's) sessions can never be touched.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import DonnaError, NotFound, PreconditionError, UsageError

log = logging.getLogger(__name__)

TOP_SQL = """
SELECT s.queryid::text AS queryid, r.rolname AS role, s.calls::bigint AS calls,
       round(s.total_exec_time::numeric, 1)::float8 AS total_ms,
       round(s.mean_exec_time::numeric, 2)::float8 AS mean_ms,
       round(s.max_exec_time::numeric, 2)::float8 AS max_ms,
       s.rows::bigint AS rows,
       round((100.0 * s.shared_blks_hit
              / nullif(s.shared_blks_hit + s.shared_blks_read, 0))::numeric, 1)::float8
           AS hit_pct,
       left(regexp_replace(s.query, '\\s+', ' ', 'g'), %(width)s) AS query
FROM pg_stat_statements s
JOIN pg_database d ON d.oid = s.dbid AND d.datname = current_database()
LEFT JOIN pg_roles r ON r.oid = s.userid
ORDER BY {order} DESC NULLS LAST
LIMIT %(limit)s
"""
#: --by choices -> ORDER BY column (a fixed set, never user text in SQL).
ORDER_BY = {"total": "s.total_exec_time", "mean": "s.mean_exec_time", "calls": "s.calls"}

BACKEND_SQL = """
SELECT pid, usename, datname, state, backend_type, query_start,
       extract(epoch FROM now() - query_start)::float8 AS seconds,
       left(query, %(width)s) AS query
FROM pg_stat_activity WHERE pid = %(pid)s
"""
#: How much of a backend's query text is read (shown before a signal, and in --json).
QUERY_WIDTH = 200
SIGNAL_SQL = {"cancel": "SELECT pg_cancel_backend(%s)",
              "terminate": "SELECT pg_terminate_backend(%s)"}


class QueryError(NotFound):
    """No backend with that pid."""


def top(settings: Settings, *, by: str = "total", limit: int = 10, width: int = 120,
        dbname: str | None = None) -> list[dict[str, Any]]:
    """The ``limit`` statements with the most total time (or mean time, or calls).

    :raises UsageError: ``by`` is not total, mean or calls.
    :raises DatabaseError: the database is down.
    :raises PreconditionError: pg_stat_statements is missing (extension not created, or
        not in shared_preload_libraries); the message says which.
    """
    if by not in ORDER_BY:
        raise UsageError(f"--by must be one of {', '.join(ORDER_BY)}, not {by!r}")
    query = TOP_SQL.format(order=ORDER_BY[by])
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        try:
            return conn.cursor(row_factory=dict_row).execute(
                query, {"limit": limit, "width": width}).fetchall()
        except pgerrors.UndefinedTable:
            raise PreconditionError(
                f"pg_stat_statements is not installed in {dbname or settings.db_name}: "
                "run `make deploy` (it creates the extension in every database)") from None
        except pgerrors.ObjectNotInPrerequisiteState:
            raise PreconditionError(
                "pg_stat_statements is not loaded: add it to shared_preload_libraries and "
                "restart PostgreSQL (`make deploy` does both)") from None


def backend(settings: Settings, pid: int, *, dbname: str | None = None) -> dict[str, Any]:
    """What backend ``pid`` is doing.

    :raises QueryError: there is no such backend.
    """
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        row = conn.cursor(row_factory=dict_row).execute(
            BACKEND_SQL, {"pid": pid, "width": QUERY_WIDTH}).fetchone()
    if row is None:
        raise QueryError(f"no backend with pid {pid}: check `donnactl status` or pg_stat_activity")
    return row


def _kind_of(settings: Settings, role: str | None) -> str | None:
    for kind in ("app", "readonly", "migrator", "backup"):
        if settings.role(kind) == role:
            return kind
    return None


def target(settings: Settings, pid: int, action: str, *, dbname: str | None = None
           ) -> dict[str, Any]:
    """The backend ``action`` (cancel or terminate) would signal, with ``kind``: the donna
    role kind that owns it (the one that may signal it).

    :raises UsageError: ``action`` is unknown, or the backend belongs to a role donnadb
        does not manage.
    :raises QueryError: no such backend.
    :raises DatabaseError: the database cannot be reached.
    """
    if action not in SIGNAL_SQL:
        raise UsageError(f"action must be cancel or terminate, not {action!r}")
    row = backend(settings, pid, dbname=dbname)
    row["kind"] = _kind_of(settings, row["usename"])
    if row["kind"] is None:
        raise UsageError(f"pid {pid} belongs to {row['usename'] or row['backend_type']}, "
                         "not a donna role; use psql as postgres if you really mean it")
    return row


def signal(settings: Settings, pid: int, action: str, *, dbname: str | None = None,
           dry_run: bool = False) -> dict[str, Any]:
    """Cancel the backend's current query, or terminate the backend (``action``).

    With ``dry_run`` the backend is only checked and described: nothing is signalled.

    :raises QueryError: no such backend.
    :raises UsageError: the backend belongs to a role donnadb does not manage.
    :raises DonnaError: the server refused the signal.
    :raises DatabaseError: the database cannot be reached.
    """
    row = target(settings, pid, action, dbname=dbname)
    result = {"pid": pid, "action": action, "dry_run": dry_run, "signalled": False,
              "role": row["usename"], "state": row["state"], "query_start": row["query_start"],
              "seconds": row["seconds"], "query": row["query"]}
    if dry_run:
        return result
    # Signals are cluster-wide: any database the role may enter will do.
    with db.connection(row["kind"], settings=settings, dbname=dbname,
                       autocommit=True) as conn:
        try:
            done = conn.execute(SIGNAL_SQL[action], (pid,)).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DonnaError(f"cannot {action} pid {pid}: {exc}") from None
    log.warning("backend %s %s", pid, action, extra={"pid": pid, "action": action,
                                                      "role": row["usename"]})
    return {**result, "signalled": bool(done)}

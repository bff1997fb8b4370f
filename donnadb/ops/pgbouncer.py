"""PgBouncer pool figures for `donnactl status`, when a PgBouncer port is configured.

The admin console (the virtual ``pgbouncer`` database) speaks only the simple query
protocol, hence the client-side cursor. Any failure is reported in the result, never
raised: PgBouncer being absent or refusing us must not hide the database's status.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import DonnaError

log = logging.getLogger(__name__)

SHOW_POOLS = "SHOW POOLS"
POOL_FIELDS = ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle",
               "maxwait", "pool_mode")


def pools(settings: Settings, *, dbname: str | None = None) -> dict[str, Any]:
    """``{"configured": bool, "pools": [...], "error": str | None}`` for the pools of
    ``dbname`` (default DB_NAME); PgBouncer may serve other databases too."""
    if settings.pgbouncer_port is None:
        return {"configured": False, "pools": [], "error": None}
    try:
        info = db.conninfo("readonly", settings=settings, dbname="pgbouncer",
                           via_pgbouncer=True)
        with psycopg.connect(info, autocommit=True, cursor_factory=psycopg.ClientCursor,
                             row_factory=dict_row) as conn:
            rows = conn.execute(SHOW_POOLS).fetchall()
    except (psycopg.Error, DonnaError) as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.info("pgbouncer pools unavailable: %s", message)
        return {"configured": True, "pools": [], "error": message}
    wanted = dbname or settings.db_name
    pools_ = [{k: r.get(k) for k in POOL_FIELDS} for r in rows if r.get("database") == wanted]
    return {"configured": True, "pools": pools_, "error": None}

"""`donnactl vacuum report|run`: dead tuples, last (auto)vacuum, wraparound age.

The report reads statistics as the readonly role. ``run`` vacuums as the owner of the
tables (migrator + ``SET ROLE``), in autocommit mode since VACUUM cannot run inside a
transaction. Plain VACUUM (never FULL): it takes no lock that blocks reads or writes.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import UsageError

log = logging.getLogger(__name__)

REPORT_SQL = """
SELECT t.schemaname AS schema, t.relname AS table,
       t.n_live_tup::bigint AS live, t.n_dead_tup::bigint AS dead,
       round((100.0 * t.n_dead_tup / nullif(t.n_live_tup + t.n_dead_tup, 0))::numeric, 2)::float8
           AS dead_pct,
       t.last_vacuum, t.last_autovacuum, t.last_analyze, t.last_autoanalyze,
       t.autovacuum_count::bigint AS autovacuum_count,
       age(c.relfrozenxid)::bigint AS xid_age
FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
WHERE c.relkind = 'r' AND t.schemaname = 'public'
ORDER BY t.n_dead_tup DESC, t.relname
"""
DATABASE_SQL = """
SELECT age(datfrozenxid)::bigint AS xid_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age,
       current_setting('autovacuum')::text AS autovacuum
FROM pg_database WHERE datname = current_database()
"""
TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname
"""


def report(settings: Settings, *, dbname: str | None = None) -> dict[str, Any]:
    """Per-table dead tuples and vacuum history, plus the database's wraparound age.

    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        database = cur.execute(DATABASE_SQL).fetchone()
        tables = cur.execute(REPORT_SQL).fetchall()
    database["freeze_pct"] = round(100.0 * database["xid_age"] / database["freeze_max_age"], 2)
    return {"database": database, "tables": tables}


def _statement(table: str, analyze: bool) -> sql.Composed:
    options = sql.SQL("(ANALYZE) " if analyze else "")
    return sql.SQL("VACUUM {}{}").format(options, sql.Identifier("public", table))


def run(settings: Settings, *, tables: list[str] | None = None, analyze: bool = True,
        dbname: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """VACUUM (and ANALYZE) ``tables`` (default: every table in public).

    Returns ``{"dry_run", "tables", "statements"}``: the tables and the exact statements
    run (with ``dry_run``, the ones that would run; nothing is vacuumed).

    :raises UsageError: a named table is not a table in public.
    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.db_role_owner)))
        known = [r[0] for r in conn.execute(TABLES_SQL).fetchall()]
        wanted = tables or known
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise UsageError(f"not a table in public: {', '.join(unknown)}; "
                             "see `donnactl vacuum report`")
        statements = [_statement(name, analyze) for name in wanted]
        texts = [s.as_string(conn) for s in statements]
        if not dry_run:
            for name, statement in zip(wanted, statements, strict=True):
                log.info("vacuum %s", name, extra={"table": name})
                conn.execute(statement)
    return {"dry_run": dry_run, "tables": wanted, "statements": texts}

"""What a backup records about a database, asked the same way on the source and
on a restored copy so the two can be compared: schema version, size, row counts."""

from __future__ import annotations

import psycopg
from psycopg import sql

#: Ordinary and partitioned tables the connected role can read, except partitions
#: (their parent's count covers them) and extension members (pg_dump skips their
#: data, so a restore could never match them).
SQL_USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
  AND has_table_privilege(c.oid, 'SELECT')
ORDER BY 1, 2
"""
#: Every object of the database's own (tables of every kind, views, sequences, foreign
#: tables, functions), except the catalogs, extension members and the bootstrap's
#: PgBouncer lookup: "empty" means a restore loses nothing by replacing it.
SQL_COUNT_OWN_OBJECTS = """
WITH own AS (
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pgbouncer')
      AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'
)
SELECT (SELECT count(*) FROM pg_class c
        WHERE c.relnamespace IN (SELECT oid FROM own)
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype = 'e'))
     + (SELECT count(*) FROM pg_proc p
        WHERE p.pronamespace IN (SELECT oid FROM own)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                            AND d.deptype = 'e'))
"""
SQL_MIGRATION_COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = 'schema_migrations'
"""
SQL_DATABASE_SIZE = "SELECT pg_database_size(current_database())"
SQL_SERVER_VERSION = "SHOW server_version"


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(SQL_USER_TABLES).fetchall()]


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact ``count(*)`` of every readable user table, keyed ``schema.table``."""
    counts = {}
    for schema, table in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


def has_own_objects(conn: psycopg.Connection) -> bool:
    """True when the database holds any object of its own (readable or not)."""
    return conn.execute(SQL_COUNT_OWN_OBJECTS).fetchone()[0] > 0


def schema_version(conn: psycopg.Connection) -> str | None:
    """The newest applied migration (``schema_migrations``), or None without one."""
    columns = {r[0] for r in conn.execute(SQL_MIGRATION_COLUMNS).fetchall()}
    column = next((c for c in ("version", "name", "id") if c in columns), None)
    if column is None:
        return None
    query = sql.SQL("SELECT max({})::text FROM public.schema_migrations").format(
        sql.Identifier(column)
    )
    return conn.execute(query).fetchone()[0]


def database_size(conn: psycopg.Connection) -> int:
    return conn.execute(SQL_DATABASE_SIZE).fetchone()[0]


def server_version(conn: psycopg.Connection) -> str:
    return conn.execute(SQL_SERVER_VERSION).fetchone()[0]

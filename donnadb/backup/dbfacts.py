"""What a backup records about a database, asked the same way on the source and
on a restored copy so the two can be compared: schema version, size, row counts, and
(:func:`table_facts`) per-partition counts and a content checksum per table."""

from __future__ import annotations

from dataclasses import dataclass, field

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
#: Leaf partitions of every readable top-level partitioned table, with the oid the
#: per-partition aggregate groups by.
SQL_PARTITIONS = """
SELECT pn.nspname, pc.relname, c.oid, n.nspname, c.relname
FROM pg_class pc
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
CROSS JOIN LATERAL pg_partition_tree(pc.oid) t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE pc.relkind = 'p' AND NOT pc.relispartition AND t.isleaf
  AND pn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND has_table_privilege(pc.oid, 'SELECT')
ORDER BY 1, 2, 4, 5
"""
#: Columns in the order a restore recreates them (pg_dump writes them in attnum order
#: and leaves dropped ones out), with the name of a built-in column type.
SQL_COLUMNS = """
SELECT a.attname,
       CASE WHEN ty.typnamespace = 'pg_catalog'::regnamespace THEN ty.typname END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type ty ON ty.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
#: One pass over a table: rows and checksum, with {row_hash} a 64-bit hash of one row. A
#: sum needs no sort of millions of rows and no collation to agree on, and a row whose
#: hash changes changes it.
SQL_TABLE_FACTS = """
SELECT NULL::oid, count(*), coalesce(sum({row_hash}), 0)::text
FROM {table} t
"""
#: The same per leaf partition of a partitioned table (grouping a plain table by its
#: one tableoid would cost a tenth more for nothing).
SQL_PARTITIONED_FACTS = """
SELECT t.tableoid, count(*), coalesce(sum({row_hash}), 0)::text
FROM {table} t
GROUP BY t.tableoid
"""
#: The first checksum: the first 64 bits of the md5 of the row's text (which holds its
#: primary key and every column). Kept to drill the manifests that name it.
LEGACY_MD5_ALGORITHM = "sum-md5-64"
SQL_ROW_MD5 = "('x' || left(md5(t::text), 16))::bit(64)::bigint"
#: The checksum ``backup create`` records: per row, the xor of one 64-bit hash per
#: column, each seeded with the column's position (a value moved to another column, or
#: a NULL, changes it). About a quarter of md5's cost (server CPU for 1,000,000
#: messages: 0.8 s, md5 3.5 s): no row text is built and quoted, uuid and integer
#: columns are hashed as stored, and the hash is PostgreSQL's own (hashtextextended,
#: the one hash partitioning relies on: the same on every little-endian host of any
#: PostgreSQL version since 11).
CHECKSUM_ALGORITHM = "sum-xor-colhash-64"
CHECKSUM_ALGORITHMS = (CHECKSUM_ALGORITHM, LEGACY_MD5_ALGORITHM)
#: Built-in types whose own hash reads every byte of the value and nothing else, so it
#: can stand for the value's text without printing it. Not int8 or the timestamps,
#: whose hashes fold 64 bits into 32; not numeric or jsonb, whose hashes ignore a
#: numeric's scale (1.0 and 1e0); not text, whose hash follows its collation.
EXACT_HASHES = {"uuid": "uuid_hash_extended", "int4": "hashint4extended",
                "int2": "hashint2extended"}
#: Any other column: its text (pinned settings below) hashed byte for byte (collation C;
#: char(n) loses its padding, which PostgreSQL never counts either).
SQL_TEXT_HASH = 'hashtextextended(({col})::text COLLATE "C", {seed})'
#: Row text depends on these session settings: pin them so the source and a restored
#: copy (another session, maybe another host's defaults) print every value alike.
STABLE_TEXT_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD",
                        "IntervalStyle": "postgres", "extra_float_digits": "3",
                        "bytea_output": "hex"}
SQL_SET_LOCAL = "SELECT set_config(%s, %s, true)"
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


@dataclass
class TableFacts:
    """Per table: exact rows and content checksum; per leaf partition: exact rows."""

    row_counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    partition_counts: dict[str, int] = field(default_factory=dict)
    checksum_algorithm: str = CHECKSUM_ALGORITHM


def column_hash(column: str, type_name: str | None, seed: int) -> sql.Composable:
    """The 64-bit hash of one column of row ``t`` (0 for NULL), seeded with ``seed``."""
    col = sql.SQL("t.{}").format(sql.Identifier(column))
    exact = EXACT_HASHES.get(type_name or "")
    if exact:
        value = sql.SQL("{}({}, {})").format(sql.SQL(exact), col, sql.Literal(seed))
    else:
        value = sql.SQL(SQL_TEXT_HASH).format(col=col, seed=sql.Literal(seed))
    return sql.SQL("coalesce({}, 0)").format(value)


def row_hash(columns: list[tuple[str, str | None]]) -> sql.Composable:
    """:data:`CHECKSUM_ALGORITHM`'s hash of row ``t`` with ``columns`` (name, type), in
    table order: the xor of each column's hash seeded with its position (1, 2, ...)."""
    if not columns:
        return sql.SQL("0::bigint")
    return sql.SQL(" # ").join(column_hash(name, type_name, seed)
                               for seed, (name, type_name) in enumerate(columns, 1))


def facts_query(conn: psycopg.Connection, schema: str, table: str,
                algorithm: str = CHECKSUM_ALGORITHM, *,
                per_partition: bool = False) -> sql.Composed:
    """The one-pass query of :data:`SQL_TABLE_FACTS` (``per_partition``:
    :data:`SQL_PARTITIONED_FACTS`) for ``algorithm``: rows (oid, count, checksum).

    :raises ValueError: ``algorithm`` is not one of :data:`CHECKSUM_ALGORITHMS`.
    """
    if algorithm == CHECKSUM_ALGORITHM:
        columns = [(r[0], r[1]) for r in conn.execute(SQL_COLUMNS, (schema, table))]
        hashed = row_hash(columns)
    elif algorithm == LEGACY_MD5_ALGORITHM:
        hashed = sql.SQL(SQL_ROW_MD5)
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    query = SQL_PARTITIONED_FACTS if per_partition else SQL_TABLE_FACTS
    return sql.SQL(query).format(row_hash=hashed, table=sql.Identifier(schema, table))


def table_facts(conn: psycopg.Connection, *,
                algorithm: str = CHECKSUM_ALGORITHM) -> TableFacts:
    """Rows, checksum (``algorithm``, one of :data:`CHECKSUM_ALGORITHMS`) and
    per-partition rows of every readable user table, keyed ``schema.table``, in one
    scan of each table, all aggregated in the server.

    Run it inside the transaction whose snapshot the numbers must describe: it pins
    the session's text settings with ``SET LOCAL`` (they end with that transaction).

    :raises ValueError: ``algorithm`` is unknown.
    """
    for name, value in STABLE_TEXT_SETTINGS.items():
        conn.execute(SQL_SET_LOCAL, (name, value))
    partitions: dict[str, dict[int, str]] = {}
    for schema, table, oid, part_schema, part in conn.execute(SQL_PARTITIONS).fetchall():
        partitions.setdefault(f"{schema}.{table}", {})[oid] = f"{part_schema}.{part}"
    facts = TableFacts(checksum_algorithm=algorithm)
    for schema, table in user_tables(conn):
        name = f"{schema}.{table}"
        parts = partitions.get(name, {})
        query = facts_query(conn, schema, table, algorithm, per_partition=bool(parts))
        rows, total = 0, 0
        for part in parts.values():
            facts.partition_counts[part] = 0  # an empty partition has no group
        for oid, count, checksum in conn.execute(query).fetchall():
            rows += count
            total += int(checksum)
            if oid in parts:
                facts.partition_counts[parts[oid]] = count
        facts.row_counts[name] = rows
        facts.checksums[name] = str(total)
    return facts


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

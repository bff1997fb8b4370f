"""Every table, column, default, constraint and index NAMED IN THE PLAN exists.

Compared against the plan's own SQL (tests/schema/plan.py), never against our migrations.
"""

from __future__ import annotations

import pytest

from tests.schema import plan

TABLES, INDEXES = plan.load()

COLUMNS = """
SELECT column_name, data_type, character_maximum_length, column_default, is_nullable
  FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s
"""
INDEXDEF = """
SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = %s
"""
#: Column sets of the table's PRIMARY KEY / UNIQUE constraints and unique indexes.
UNIQUE_SETS = """
SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord)::text[]
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = %s::regclass AND i.indisunique
 GROUP BY i.indexrelid, i.indisprimary
"""
FOREIGN_KEYS = """
SELECT kcu.column_name, ccu.table_name, rc.delete_rule
  FROM information_schema.referential_constraints rc
  JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)
  JOIN information_schema.constraint_column_usage ccu USING (constraint_schema, constraint_name)
 WHERE kcu.table_name = %s
"""


def test_plan_copy_is_complete():
    # Guards the parser: the plan names 5 tables, 47 columns and 23 indexes.
    assert sorted(TABLES) == ["chat_sessions", "messages", "system_logs", "user_memory", "users"]
    assert sum(len(t.columns) for t in TABLES.values()) == 47
    assert len(INDEXES) == 23


def test_plan_copy_matches_the_plan_document():
    doc = plan.PLAN_DOCS[0]  # the repository's copy: always there
    assert plan.extract_sql_blocks(doc.read_text(encoding="utf-8")) == plan.PLAN_SQL.read_text(
        encoding="utf-8"
    ), "tests/schema/plan_schema.sql is stale: regenerate it with plan.extract_sql_blocks"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_columns_types_defaults_and_nullability(catalog, table):
    rows = {r[0]: r[1:] for r in catalog.execute(COLUMNS, (table,)).fetchall()}
    for col in TABLES[table].columns:
        assert col.name in rows, f"{table}.{col.name} missing"
        data_type, length, default, nullable = rows[col.name]
        actual = f"{data_type}({length})" if length else data_type
        assert actual == col.type, f"{table}.{col.name}: {actual} != plan {col.type}"
        assert plan.normalise_default(default) == col.default, f"{table}.{col.name} default"
        if col.not_null or col.primary_key:
            assert nullable == "NO", f"{table}.{col.name} must be NOT NULL"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_keys_unique_constraints_and_foreign_keys(catalog, table):
    spec = TABLES[table]
    unique = catalog.execute(UNIQUE_SETS, (f"public.{table}",)).fetchall()
    pk_cols = next(cols for is_pk, cols in unique if is_pk)
    for col in spec.columns:
        if col.primary_key:
            # system_logs is partitioned, so its key also holds the partition column.
            assert col.name in pk_cols
        if col.unique:
            assert [col.name] in [cols for _, cols in unique], f"{table}.{col.name} not UNIQUE"
    for cols in spec.unique_sets:
        assert list(cols) in [c for _, c in unique], f"{table} lacks UNIQUE{cols}"
    fks = {r[0]: (r[1], r[2]) for r in catalog.execute(FOREIGN_KEYS, (table,)).fetchall()}
    for col in spec.columns:
        if col.references:
            assert fks.get(col.name) == col.references, f"{table}.{col.name} foreign key"


#: Indexes of the plan replaced by a measured better one (a migration says why): the
#: replacement has the same method and the plan's keys after leading columns of its own.
SUPERSEDED = {
    # 0006: the search looks in a user's chats; bench/search.py, docs/benchmarks.md.
    "idx_messages_content_fts": "idx_messages_chat_fts",
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_index_exists_with_the_plans_definition(catalog, name):
    want = INDEXES[name]
    row = catalog.execute(INDEXDEF, (SUPERSEDED.get(name, name),)).fetchone()
    assert row is not None, f"index {name} missing"
    tablename, indexdef = row
    assert tablename == want.table
    method, keys = indexdef.split(" USING ", 1)[1].split(" ", 1)
    keys = keys.split(" WITH (", 1)[0]  # storage parameters are not the plan's business
    assert method == want.method
    keys = plan.normalise_keys(keys)[1:-1]
    if name in SUPERSEDED:
        assert keys.endswith("," + want.keys), indexdef
        assert catalog.execute(INDEXDEF, (name,)).fetchone() is None, "both indexes kept"
    else:
        assert keys == want.keys, indexdef


def test_the_search_index_keeps_no_pending_list(catalog):
    """Every search would read a GIN pending list whole (0008): new entries go into the
    index itself."""
    options = catalog.execute("SELECT reloptions FROM pg_class WHERE relname = %s",
                              ("idx_messages_chat_fts",)).fetchone()[0]
    assert options == ["fastupdate=off"]


def test_parser_rejects_what_it_does_not_understand():
    with pytest.raises(ValueError, match="not understood"):
        plan.parse("CREATE TABLE t (\n    id SERIAL4 PRIMARY KEY\n);")

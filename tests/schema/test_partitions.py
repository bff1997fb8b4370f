"""system_logs: monthly pg_partman partitions premade ahead; the default catches the rest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from donnadb import db
from donnadb.config import load_settings
from donnadb.migrate.check import PARTITIONS_AHEAD

CHILDREN = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'public.system_logs'::regclass
"""
INSERT_LOG = """
INSERT INTO system_logs (level, message, created_at) VALUES ('info', 'partition test', %s)
RETURNING tableoid::regclass::text
"""


def _month_start(year: int, month: int) -> datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def test_partitioned_by_range_on_created_at(catalog):
    strategy, key = catalog.execute(
        "SELECT partstrat, pg_get_partkeydef('public.system_logs'::regclass)"
        " FROM pg_partitioned_table WHERE partrelid = 'public.system_logs'::regclass"
    ).fetchone()
    assert (strategy, key) == ("r", "RANGE (created_at)")


def test_monthly_partitions_exist_three_months_ahead_and_a_default(catalog):
    children = dict(catalog.execute(CHILDREN).fetchall())
    assert children.get("system_logs_default") == "DEFAULT"
    now = datetime.now(UTC)
    for ahead in range(0, 4):
        start = _month_start(now.year, now.month + ahead)
        end = _month_start(now.year, now.month + ahead + 1)
        name = f"system_logs_p{start:%Y_%m}"
        assert name in children, f"no partition for {start:%Y-%m}"
        assert f"'{start:%Y-%m-%d}" in children[name] and f"'{end:%Y-%m-%d}" in children[name]


def test_db_check_partition_query_agrees(catalog):
    newest, has_default, needed = catalog.execute(PARTITIONS_AHEAD, (3,)).fetchone()
    assert has_default and newest >= needed


def test_partman_manages_it_with_premake_and_infinite_partitions(catalog):
    row = catalog.execute(
        "SELECT partition_interval, premake, infinite_time_partitions, partition_type,"
        " ignore_default_data, inherit_privileges"
        " FROM partman.part_config WHERE parent_table = 'public.system_logs'"
    ).fetchone()
    assert row is not None
    interval, premake, infinite, ptype, ignore_default, inherit = row
    assert inherit
    # ignore_default_data: a stray future row in the default partition must not steer
    # maintenance (migration 0002); inherit_privileges: children get owner and grants (0003).
    assert (interval, ptype, infinite, ignore_default) == ("1 mon", "native", True, True)
    assert premake >= 3


def test_rows_land_in_their_month_and_out_of_range_rows_in_default(migrated_db):
    now = datetime.now(UTC)
    in_two_months = _month_start(now.year, now.month + 2).replace(day=15)
    cases = {
        now: f"system_logs_p{now:%Y_%m}",
        in_two_months: f"system_logs_p{in_two_months:%Y_%m}",
        datetime(1999, 1, 1, tzinfo=UTC): "system_logs_default",
        datetime(2100, 6, 1, tzinfo=UTC): "system_logs_default",
    }
    with db.connection("app", settings=load_settings(), dbname=migrated_db) as conn:
        for ts, partition in cases.items():
            assert conn.execute(INSERT_LOG, (ts,)).fetchone()[0] == partition
        assert conn.execute(
            "SELECT count(*) FROM system_logs WHERE message = 'partition test'"
        ).fetchone()[0] == len(cases)


CHILD_GRANTS = """
SELECT c.relname, pg_get_userbyid(c.relowner), has_table_privilege(%s, c.oid, 'INSERT'),
       has_table_privilege(%s, c.oid, 'SELECT')
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'public.system_logs'::regclass
"""


@pytest.mark.parametrize("as_owner", [True, False], ids=["as-owner", "as-migrator"])
def test_maintenance_keeps_partitions_owned_and_granted(migrated_db, as_owner):
    """Whoever runs maintenance, new partitions belong to the owner and the app can write."""
    s = load_settings()
    with db.connection("migrator", settings=s, dbname=migrated_db) as conn:
        if as_owner:
            conn.execute(f'SET ROLE "{s.db_role_owner}"')
        conn.execute("SELECT partman.run_maintenance('public.system_logs')")
        # A month far ahead, so this run really creates a partition.
        conn.execute("SELECT partman.create_partition_time('public.system_logs', ARRAY["
                     "date_trunc('month', now()) + make_interval(months => %s)])",
                     (12 if as_owner else 13,))
        rows = conn.execute(CHILD_GRANTS, (s.db_role_app, s.db_role_readonly)).fetchall()
    assert len(rows) >= 10
    for name, owner, app_insert, ro_select in rows:
        assert (owner, app_insert, ro_select) == (s.db_role_owner, True, True), name


def test_documented_fix_moves_default_rows_into_their_month(migrated_db):
    """docs/schema.md: `CALL partman.partition_data_proc(...)` empties the default partition."""
    s = load_settings()
    old = datetime(2024, 3, 10, tzinfo=UTC)
    with db.connection("app", settings=s, dbname=migrated_db, autocommit=True) as app:
        assert app.execute(INSERT_LOG, (old,)).fetchone()[0] == "system_logs_default"
    with db.connection("migrator", settings=s, dbname=migrated_db, autocommit=True) as conn:
        conn.execute("CALL partman.partition_data_proc('public.system_logs')")
    with db.connection("app", settings=s, dbname=migrated_db, autocommit=True) as app:
        where = app.execute(
            "SELECT tableoid::regclass::text FROM system_logs WHERE created_at = %s", (old,)
        ).fetchall()
    assert where == [("system_logs_p2024_03",)]

"""dbfacts.table_facts' content checksum: one changed byte in any column of any row
changes the table's checksum (also where a type's own hash would not see it), a
restored copy (no dropped columns) gives the same one, and manifests made with the
first method (md5 of the row's text) are still checked with it."""

from __future__ import annotations

import pytest

from donnadb import db
from donnadb.backup import dbfacts
from tests.support import superuser_psql

PROBE_SQL = """
CREATE COLLATION public.probe_ci (provider = icu, locale = 'und-u-ks-level2',
                                  deterministic = false);
CREATE TABLE public.probe (
    id int4 PRIMARY KEY, gone int4, u1 uuid, u2 uuid, small int2, big int8, t text,
    v varchar(20), c char(3), ci text COLLATE public.probe_ci, n numeric, j jsonb,
    js json, ts timestamptz, b bool, raw bytea, ip inet, arr int4[], f float8);
ALTER TABLE public.probe DROP COLUMN gone;
INSERT INTO public.probe VALUES
 (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 11, 0,
  'one', 'abc', 'ab', 'Abc', 1.0, '{"a": 1.0}', '{"a":1}', '2026-01-01 00:00:00+00', true,
  '\\x0001', '10.0.0.1', '{1,2}', 0.5),
 (2, 'c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'd0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 12, 7,
  'two', 'def', 'de', 'Def', 2.0, '{"b": 2.0}', '{"b":2}', '2026-01-02 00:00:00+00', false,
  '\\x0002', '10.0.0.2', '{3,4}', 1.5),
 (3, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL);
"""
#: Each one a copy of probe with one change: a value one byte off in its text (or one
#: NULL, or values moved), including pairs that the column type's own hash cannot tell
#: apart (int8 and timestamps fold 64 bits into 32, numeric ignores scale, a
#: case-insensitive collation ignores case).
CHANGES = {
    "uuid": "u1 = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12' WHERE id = 1",
    "uuids_swapped": "u1 = u2, u2 = u1 WHERE id = 1",
    "int2": "small = 13 WHERE id = 2",
    "int8": "big = 8 WHERE id = 2",
    "int8_folded_alike": "big = 4294967297 WHERE id = 1",
    "text": "t = 'onf' WHERE id = 1",
    "text_moved_between_rows": "t = CASE id WHEN 1 THEN 'two' ELSE 'one' END WHERE id < 3",
    "empty_to_null": "t = NULL WHERE id = 3",
    "null_to_empty": "v = '' WHERE id = 3",
    "varchar": "v = 'abd' WHERE id = 1",
    "char_padding": "c = 'abc' WHERE id = 1",
    "case_insensitive_collation": "ci = 'abc' WHERE id = 1",
    "numeric_scale": "n = '1e0' WHERE id = 1",
    "jsonb_numeric_scale": "j = '{\"a\": 1e0}' WHERE id = 1",
    "json": "js = '{\"a\":2}' WHERE id = 1",
    "timestamptz": "ts = '2026-01-01 00:00:01+00' WHERE id = 1",
    "bool": "b = false WHERE id = 1",
    "bytea": "raw = '\\x0003' WHERE id = 1",
    "inet": "ip = '10.0.0.3' WHERE id = 1",
    "array": "arr = '{1,3}' WHERE id = 1",
    "float8": "f = 0.25 WHERE id = 1",
    "row_duplicated": None,
}


def _copy_sql(name: str, change: str | None) -> str:
    """A copy of probe as a restore makes it (same columns in order, no dropped one)."""
    table = f"public.probe_{name}"
    fill = f"INSERT INTO {table} SELECT * FROM public.probe;"
    if name == "row_duplicated":
        fill += f"INSERT INTO {table} SELECT * FROM public.probe WHERE id = 2;"
    edit = f"UPDATE {table} SET {change};" if change else ""
    return f"CREATE TABLE {table} (LIKE public.probe);{fill}{edit}"


@pytest.fixture
def probe_db(settings, empty_db):
    """The probe table, an unchanged copy (``probe_copy``) and one copy per change,
    owned like the schema's tables (so the backup role reads them)."""
    copies = "".join(_copy_sql(name, change) for name, change in
                     {"copy": None, **CHANGES}.items())
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n{PROBE_SQL}{copies}",
                   dbname=empty_db)
    return empty_db


def _checksums(settings, dbname: str, algorithm: str) -> dict[str, str]:
    with db.connection("backup", settings=settings, dbname=dbname) as conn:
        facts = dbfacts.table_facts(conn, algorithm=algorithm)
        assert facts.checksum_algorithm == algorithm
        return facts.checksums


def test_every_one_byte_change_changes_the_checksum(settings, probe_db):
    sums = _checksums(settings, probe_db, dbfacts.CHECKSUM_ALGORITHM)
    original = sums["public.probe"]
    # a copy with the dropped column gone, as pg_dump restores it, checks out equal
    assert sums["public.probe_copy"] == original
    same = [name for name in CHANGES if sums[f"public.probe_{name}"] == original]
    assert same == []
    # and again: nothing depends on the session or on chance
    assert _checksums(settings, probe_db, dbfacts.CHECKSUM_ALGORITHM) == sums


def test_the_first_method_is_still_md5_of_the_row_text(settings, probe_db):
    sums = _checksums(settings, probe_db, dbfacts.LEGACY_MD5_ALGORITHM)
    with db.connection("backup", settings=settings, dbname=probe_db) as conn:
        for name, value in dbfacts.STABLE_TEXT_SETTINGS.items():
            conn.execute(dbfacts.SQL_SET_LOCAL, (name, value))
        [(by_hand,)] = conn.execute(
            "SELECT sum(('x' || left(md5(t::text), 16))::bit(64)::bigint)::text "
            "FROM public.probe t").fetchall()
    assert sums["public.probe"] == by_hand
    assert sums["public.probe_copy"] == by_hand
    assert sums["public.probe_text"] != by_hand


def test_an_unknown_method_is_refused(settings, probe_db):
    with db.connection("backup", settings=settings, dbname=probe_db) as conn, \
            pytest.raises(ValueError, match="sum-sha-999"):
        dbfacts.table_facts(conn, algorithm="sum-sha-999")


def test_row_hash_uses_exact_type_hashes_and_text_for_the_rest():
    query = dbfacts.row_hash([("id", "uuid"), ("n", "int4"), ("ts", "timestamptz"),
                              ("x", None)]).as_string(None)
    assert query == (
        'coalesce(uuid_hash_extended(t."id", 1), 0) # '
        'coalesce(hashint4extended(t."n", 2), 0) # '
        'coalesce(hashtextextended((t."ts")::text COLLATE "C", 3), 0) # '
        'coalesce(hashtextextended((t."x")::text COLLATE "C", 4), 0)')
    assert dbfacts.row_hash([]).as_string(None) == "0::bigint"

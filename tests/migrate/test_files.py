"""Pure logic: discovering migration files and comparing them with the recorded history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from donnadb.errors import MigrationError
from donnadb.migrate import AppliedMigration, compare, discover
from donnadb.migrate.files import checksum_bytes


def _write(tmp_path, name, text="SELECT 1;\n"):
    (tmp_path / name).write_text(text, encoding="utf-8")


def _applied(version, name, checksum):
    return AppliedMigration(version, name, checksum, datetime.now(UTC), 1.0)


def test_discover_orders_by_version_and_checksums_bytes(tmp_path):
    _write(tmp_path, "0002_b.sql", "SELECT 2;\n")
    _write(tmp_path, "0001_a.sql")
    _write(tmp_path, "README.md", "not a migration")
    found = discover(tmp_path)
    assert [(f.version, f.name) for f in found] == [("0001", "a"), ("0002", "b")]
    assert found[1].checksum == checksum_bytes(b"SELECT 2;\n")


@pytest.mark.parametrize(
    ("names", "message"),
    [(["1_a.sql"], "misnamed"), (["0001_A.sql"], "misnamed"),
     (["0001_a.sql", "0001_b.sql"], "share version 0001")],
)
def test_discover_refuses_bad_names(tmp_path, names, message):
    for n in names:
        _write(tmp_path, n)
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)


def test_discover_refuses_an_empty_file(tmp_path):
    _write(tmp_path, "0001_a.sql", "\n  \n")
    with pytest.raises(MigrationError, match="0001_a.sql is empty"):
        discover(tmp_path)


def test_discover_missing_directory(tmp_path):
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "nope")


def test_the_repositorys_migrations_are_well_formed():
    from donnadb.config import load_settings

    found = discover(load_settings().schema_dir)
    assert found and found[0].version == "0001"
    assert [int(f.version) for f in found] == list(range(1, len(found) + 1))


def test_compare_finds_pending_edited_removed_and_out_of_order(tmp_path):
    for n in ("0001_a.sql", "0002_b.sql", "0004_d.sql"):
        _write(tmp_path, n)
    files = discover(tmp_path)
    ok = compare([_applied("0001", "a", files[0].checksum)], files)
    assert not ok.problems and [p.version for p in ok.pending] == ["0002", "0004"]
    assert ok.current_version == "0001"

    edited = compare([_applied("0001", "a", "0" * 64)], files)
    assert "0001_a.sql was edited" in edited.problems[0]

    removed = compare([_applied("0001", "a", files[0].checksum),
                       _applied("0003", "c", "f" * 64)], files)
    assert any("0003_c.sql was removed" in p for p in removed.problems)
    assert any("0002_b.sql is older than applied version 0003" in p for p in removed.problems)

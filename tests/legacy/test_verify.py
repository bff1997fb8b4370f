"""verify: any difference between files and database is found and exits 1."""

from __future__ import annotations

import json

from donnadb import db
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from tests.legacy.conftest import run_cli


def test_verify_detects_a_changed_message_a_missing_chat_and_a_changed_memory_value(
        settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=6, chats=12, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    ok = run_cli("migrate-data", "verify", "--data-dir", str(root), "--dbname", scratch_db)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify ok" in ok.stdout

    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        conn.execute(
            "UPDATE messages SET content = content || '!' WHERE sequence_number = 2 AND "
            "chat_session_id = (SELECT id FROM chat_sessions WHERE chat_id = 'c_7000003')")
        conn.execute("DELETE FROM chat_sessions WHERE chat_id = 'c_7000005'")
        conn.execute("UPDATE user_memory SET value = '\"fish\"' WHERE key = 'pet' AND user_id = "
                     "(SELECT id FROM users WHERE email = 'u0@example.com')")
        conn.commit()
    bad = run_cli("migrate-data", "verify", "--data-dir", str(root), "--dbname", scratch_db,
                  "--json")
    assert bad.returncode == 1, bad.stderr
    found = {(d["kind"], d["key"]) for d in json.loads(bad.stdout)["differences"]}
    assert ("messages_differ", "c_7000003") in found
    assert ("chat_missing", "c_7000005") in found
    assert any(kind == "memory_differs" and key.endswith("/context/pet") for kind, key in found)
    assert len(found) == 3


def test_verify_one_entity_reports_only_its_differences(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=6, chats=12, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        conn.execute(
            "UPDATE messages SET content = content || '!' WHERE sequence_number = 2 AND "
            "chat_session_id = (SELECT id FROM chat_sessions WHERE chat_id = 'c_7000003')")
        conn.execute("UPDATE chat_sessions SET title = 'changed' WHERE chat_id = 'c_7000004'")
        conn.execute("UPDATE user_memory SET value = '\"fish\"' WHERE key = 'pet' AND user_id = "
                     "(SELECT id FROM users WHERE email = 'u0@example.com')")
        conn.execute("UPDATE users SET name = 'changed' WHERE email = 'u1@example.com'")
        conn.commit()

    def kinds(entity: str) -> tuple[int, set[str]]:
        done = run_cli("migrate-data", "verify", "--data-dir", str(root), "--dbname",
                       scratch_db, "--json", "--entity", entity)
        found = json.loads(done.stdout)["differences"] if done.stdout else []
        return done.returncode, {d["kind"] for d in found}

    assert kinds("messages") == (1, {"messages_differ"})
    assert kinds("chats") == (1, {"chat_differs"})
    assert kinds("memory") == (1, {"memory_differs"})
    assert kinds("users") == (1, {"user_differs"})
    assert kinds("logs") == (0, set())
    unknown = run_cli("migrate-data", "verify", "--data-dir", str(root), "--dbname",
                      scratch_db, "--entity", "files")
    assert unknown.returncode == 3 and "unknown entity 'files'" in unknown.stderr


def test_verify_is_clean_after_dual_write_wrote_to_legacy_records(settings, scratch_db,
                                                                   tmp_path):
    """Dual-write copies give rows the time of the copy (the schema's trigger) and a
    memory file one time for all its entries: only content counts, so a memory value
    changed behind the files' back is still found."""
    from donnadb.dal import DualWriteDataAccess, FileDataAccess, PostgresDataAccess
    from donnadb.legacy.verify import verify

    root = tmp_path / "data"
    generate(root, users=3, chats=3, messages_per_chat=2, logs=2, deviations=False)
    clerk = sorted(p.stem for p in (root / "memory").glob("*.json"))[0]
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    dual = DualWriteDataAccess(FileDataAccess(root), PostgresDataAccess(settings,
                                                                        dbname=scratch_db))
    try:
        dual.set_user_memory(clerk, "context", "added", {"a": 1})
        dual.update_user(clerk, {"name": "Renamed"})
        dual.add_message("c_7000000", "user", "hello")
        dual.update_chat_session("c_7000001", {"title": "Renamed chat"})
    finally:
        dual.close()
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        assert verify(LegacyReader.open(root), conn).differences == []
        conn.execute("UPDATE user_memory SET value = '\"fish\"' WHERE key = 'added'")
        assert [d["kind"] for d in verify(LegacyReader.open(root), conn).differences] == [
            "memory_differs"]

"""Rolling one entity back from PostgreSQL to the files, as docs/runbook.md says: with
every application process stopped, export the entity, put its files in place, start
again in dual-write with the files as the primary store. Every write made while the
entity was in PostgreSQL alone is then served from the files, and `verify` is clean.
Real PostgreSQL, the real CLI."""

from __future__ import annotations

import os
import shutil

from donnadb import db
from donnadb.dal import FileDataAccess, MixedDataAccess, PostgresDataAccess
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from tests.dal.conftest import ENTITIES
from tests.legacy.conftest import run_cli

#: Users and memory in PostgreSQL alone (sessions too, which that needs); messages
#: still copied. Then users and memory rolled back to dual-write, read from the files.
CUT_OVER = ("postgresql", "postgresql", "postgresql", "dual", "file")
ROLLED_BACK = ("dual", "dual", "postgresql", "dual", "file")


def store(settings, data, dbname, phases, primary) -> MixedDataAccess:
    return MixedDataAccess(FileDataAccess(data), PostgresDataAccess(settings, dbname=dbname),
                           phases=dict(zip(ENTITIES, phases, strict=True)), primary=primary)


def test_users_and_memory_roll_back_to_the_files(settings, scratch_db, tmp_path, monkeypatch):
    data = tmp_path / "data"
    generate(data, users=6, chats=8, messages_per_chat=3, logs=5, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(data), conn, batch_size=100)
    legacy = sorted(p.stem for p in (data / "memory").glob("*.json"))[0]

    cut = store(settings, data, scratch_db, CUT_OVER, "postgresql")
    try:
        cut.create_user({"clerk_id": "user_late", "email": "late@example.org", "name": "Late"})
        cut.set_user_memory("user_late", "context", "city", "Porto")
        cut.set_user_memory(legacy, "context", "pet", "dog")  # was "cat" in its file
        cut.set_user_memory(legacy, "preferences", "units", "metric")
        cut.delete_user_memory(legacy, "context", "notes")
        cut.update_user(legacy, {"name": "Renamed"})
        cut.create_chat_session("c_late", "user_late", {}, title="Late chat")
        cut.add_message("c_late", "user", "written while users were in PostgreSQL")
    finally:
        cut.close()
    # The files know none of it.
    assert FileDataAccess(data).get_user_by_id("user_late") is None

    monkeypatch.setenv("DB_NAME", scratch_db)
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("OPS_LOG_FILE", str(tmp_path / "donnactl.jsonl"))
    out = tmp_path / "rollback"
    done = run_cli("migrate-data", "export", "--entity", "memory", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    os.rename(data / "memory", tmp_path / "memory.before-rollback")
    shutil.move(out / "memory", data / "memory")

    back = store(settings, data, scratch_db, ROLLED_BACK, "file")
    try:
        assert back.get_user_by_id("user_late")["name"] == "Late"
        assert back.get_user_memory("user_late", "context") == {"city": "Porto"}
        memory = back.get_user_memory(legacy, "context")
        assert memory["pet"] == "dog" and "notes" not in memory
        assert back.get_user_memory(legacy, "preferences")["units"] == "metric"
        assert back.get_user_by_id(legacy)["name"] == "Renamed"
        assert [s["chat_id"] for s in back.list_chat_sessions("user_late")] == ["c_late"]
        # A write in dual-write copies the user's file whole: nothing of the above is lost.
        back.set_user_memory(legacy, "context", "after", "rollback")
        assert back.queue.count() == 0
        assert back.pg.get_user_memory(back.pg.get_user_by_clerk_id(legacy)["id"],
                                       "context") == back.get_user_memory(legacy, "context")
    finally:
        back.close()
    for entity in ("users", "memory"):
        done = run_cli("migrate-data", "verify", "--entity", entity)
        assert done.returncode == 0, done.stdout[-3000:]

"""Rolling users and memory back from PostgreSQL to the files, as docs/runbook.md says.
While a store per entity kept their files, a restart in dual-write is all it takes;
once the files were retired (every entity in PostgreSQL), the entity is exported and
its folder put in place first. Either way every write made while the entity was in
PostgreSQL is then served from the files, the next dual-write copy keeps it, and
`verify` is clean. Real PostgreSQL, the real CLI."""

from __future__ import annotations

import os
import shutil

import pytest

from donnadb import db
from donnadb.dal import FileDataAccess, MixedDataAccess, PostgresDataAccess
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from tests.dal.conftest import ENTITIES
from tests.legacy.conftest import run_cli

#: Users and memory in PostgreSQL (sessions too, which that needs); messages still
#: copied. Then users and memory rolled back to dual-write, read from the files; from
#: the store of every entity in PostgreSQL, the others stay there.
CUT_OVER = ("postgresql", "postgresql", "postgresql", "dual", "file")
ROLLED_BACK = ("dual", "dual", "postgresql", "dual", "file")
ROLLED_BACK_FROM_RETIRED = ("dual", "dual", "postgresql", "postgresql", "postgresql")


def store(settings, data, dbname, phases, primary) -> MixedDataAccess:
    return MixedDataAccess(FileDataAccess(data), PostgresDataAccess(settings, dbname=dbname),
                           phases=dict(zip(ENTITIES, phases, strict=True)), primary=primary)


def legacy_dir(settings, dbname, tmp_path):
    data = tmp_path / "data"
    generate(data, users=6, chats=8, messages_per_chat=3, logs=5, deviations=False)
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(data), conn, batch_size=100)
    return data, sorted(p.stem for p in (data / "memory").glob("*.json"))[0]


def write_while_in_postgresql(dal, legacy: str, user_id=lambda clerk: clerk) -> None:
    """A new user, memory set, overwritten and deleted, a rename, a chat: ``user_id``
    maps a Clerk id to the store's id."""
    late = dal.create_user({"clerk_id": "user_late", "email": "late@example.org",
                            "name": "Late"})
    dal.set_user_memory(late, "context", "city", "Porto")
    dal.set_user_memory(user_id(legacy), "context", "pet", "dog")  # was "cat" in its file
    dal.set_user_memory(user_id(legacy), "preferences", "units", "metric")
    dal.delete_user_memory(user_id(legacy), "context", "notes")
    dal.update_user(user_id(legacy), {"name": "Renamed"})
    dal.create_chat_session("c_late", late, {}, title="Late chat")
    dal.add_message("c_late", "user", "written while users were in PostgreSQL")


def served_from_the_files(settings, data, dbname, legacy: str, phases) -> None:
    back = store(settings, data, dbname, phases, "file")
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


@pytest.fixture
def cli_env(monkeypatch, tmp_path, scratch_db):
    monkeypatch.setenv("DB_NAME", scratch_db)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPS_LOG_FILE", str(tmp_path / "donnactl.jsonl"))


def test_a_rollback_while_the_files_are_kept_is_a_restart(settings, scratch_db, tmp_path,
                                                          cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path)
    cut = store(settings, data, scratch_db, CUT_OVER, "postgresql")
    try:
        write_while_in_postgresql(cut, legacy)
    finally:
        cut.close()
    served_from_the_files(settings, data, scratch_db, legacy, ROLLED_BACK)


def test_a_rollback_after_the_files_were_retired_exports_first(settings, scratch_db, tmp_path,
                                                               cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path)
    retired = PostgresDataAccess(settings, dbname=scratch_db)
    try:
        write_while_in_postgresql(
            retired, legacy, lambda clerk: retired.get_user_by_clerk_id(clerk)["id"])
    finally:
        retired.close()
    # The files know none of it.
    assert FileDataAccess(data).get_user_by_id("user_late") is None

    out = tmp_path / "rollback"
    done = run_cli("migrate-data", "export", "--entity", "memory", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    os.rename(data / "memory", tmp_path / "memory.before-rollback")
    shutil.move(out / "memory", data / "memory")
    served_from_the_files(settings, data, scratch_db, legacy, ROLLED_BACK_FROM_RETIRED)

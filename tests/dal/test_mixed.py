"""A store per entity: each entity's data lands where its phase says (files, PostgreSQL
rows, or both), read back from the files and the tables themselves; and PostgreSQL
down fails only the entities it alone holds. Real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from donnadb import db
from donnadb.dal import FileDataAccess, MixedDataAccess, PostgresDataAccess, reconcile
from donnadb.errors import DatabaseError
from tests.dal.conftest import ENTITIES
from tests.dal.test_dualwrite import closed_port, mirror_figures
from tests.support import superuser_psql

BOTH, FILE, PG = {"file", "postgresql"}, {"file"}, {"postgresql"}

# (users, memory, chats, messages, logs), primary, where each entity's data must be.
PLACES = {
    # The pilot: the memory file is copied whole, so its user's row comes along.
    "pilot": (("file", "dual", "file", "file", "file"), "file",
              {"users": BOTH, "memory": BOTH, "chats": FILE, "messages": FILE,
               "logs": FILE}),
    # A chat copies its owner over as its parent row; the owner's memory stays in files.
    "chats-first": (("file", "file", "dual", "file", "dual"), "file",
                    {"users": BOTH, "memory": FILE, "chats": BOTH, "messages": FILE,
                     "logs": BOTH}),
    # Sessions and messages in PostgreSQL, kept in the files after it; users still copied.
    "sessions-cut-over": (("dual", "dual", "postgresql", "postgresql", "postgresql"), "file",
                          {"users": BOTH, "memory": BOTH, "chats": BOTH, "messages": BOTH,
                           "logs": PG}),
    # Users and memory in PostgreSQL, kept in their memory file; messages still copied.
    "late": (("postgresql", "postgresql", "postgresql", "dual", "file"), "postgresql",
             {"users": BOTH, "memory": BOTH, "chats": BOTH, "messages": BOTH, "logs": FILE}),
}


def mixed(settings, data_dir, phases, primary, **pg_kwargs) -> MixedDataAccess:
    return MixedDataAccess(FileDataAccess(data_dir),
                           PostgresDataAccess(settings, **pg_kwargs),
                           phases=dict(zip(ENTITIES, phases, strict=True)), primary=primary)


def write_everything(dal) -> None:
    dal.create_user({"clerk_id": "user_ana", "preferences": {"language": "pt"}})
    dal.set_user_memory("user_ana", "context", "pet", "cat")
    dal.create_chat_session("c_1", "user_ana", {"client": "web"}, title="Trip")
    dal.add_message("c_1", "user", "hello there")
    dal.add_message("c_1", "assistant", "hi")
    dal.write_log("error", "marker-log-line")


def in_files(data_dir) -> dict[str, bool]:
    files = FileDataAccess(data_dir)
    try:
        logs = "".join(p.read_text() for p in (data_dir / "logs").glob("*.jsonl")) \
            if (data_dir / "logs").is_dir() else ""
        return {
            "users": files.get_user_by_id("user_ana") is not None,
            "memory": files.get_user_memory("user_ana", "context") == {"pet": "cat"},
            "chats": files.get_chat_session("c_1") is not None,
            "messages": files.get_message_count("c_1") == 2,
            "logs": "marker-log-line" in logs,
        }
    finally:
        files.close()


def in_tables(settings, dbname) -> dict[str, bool]:
    queries = {
        "users": "SELECT 1 FROM users WHERE clerk_id = 'user_ana'",
        "memory": "SELECT 1 FROM user_memory m JOIN users u ON u.id = m.user_id "
                  "WHERE u.clerk_id = 'user_ana' AND m.memory_type = 'context' "
                  "AND m.key = 'pet' AND m.value = '\"cat\"'::jsonb",
        "chats": "SELECT 1 FROM chat_sessions WHERE chat_id = 'c_1'",
        "messages": "SELECT 1 FROM messages m JOIN chat_sessions s "
                    "ON s.id = m.chat_session_id WHERE s.chat_id = 'c_1' "
                    "HAVING count(*) = 2",
        "logs": "SELECT 1 FROM system_logs WHERE message = 'marker-log-line'",
    }
    with db.connection("migrator", settings=settings, dbname=dbname) as conn:
        return {e: conn.execute(q).fetchone() is not None for e, q in queries.items()}


@pytest.mark.parametrize("name", PLACES)
def test_each_entity_lands_where_its_phase_says(settings, tmp_path, pg_db, name):
    phases, primary, expected = PLACES[name]
    dal = mixed(settings, tmp_path / "data", phases, primary, dbname=pg_db)
    try:
        write_everything(dal)
        assert dal.queue.count() == 0
        # Read back through the store: the same ids whichever store serves an entity.
        assert dal.get_user_by_id("user_ana")["preferences"] == {"language": "pt"}
        assert dal.get_user_memory("user_ana", "context") == {"pet": "cat"}
        session = dal.get_chat_session("c_1")
        assert (session["id"], session["user_id"]) == ("c_1", "user_ana")
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["hello there", "hi"]
        assert [s["chat_id"] for s in dal.list_chat_sessions("user_ana")] == ["c_1"]
        assert [m["content"] for m in dal.search_messages("user_ana", "hello")] == [
            "hello there"]
    finally:
        dal.close()
    files, tables = in_files(tmp_path / "data"), in_tables(settings, pg_db)
    found = {e: {s for s, there in (("file", files[e]), ("postgresql", tables[e])) if there}
             for e in ENTITIES}
    assert found == expected


def test_memory_in_files_alone_leaves_no_memory_row(settings, tmp_path, pg_db):
    """Users in dual-write, memory in files: the user's row carries its profile and
    preferences columns (user fields), no user_memory row."""
    dal = mixed(settings, tmp_path / "data", ("dual", "file", "file", "file", "file"),
                "postgresql", dbname=pg_db)
    try:
        write_everything(dal)
        dal.set_user_memory("user_ana", "preferences", "tone", "short")
        # Users read from PostgreSQL see the preference memory wrote to the file.
        assert dal.get_user_by_id("user_ana")["preferences"] == {"language": "pt",
                                                                 "tone": "short"}
    finally:
        dal.close()
    with db.connection("migrator", settings=settings, dbname=pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM user_memory").fetchone()[0] == 0


def test_messages_find_their_container_for_a_session_made_in_postgresql(settings, tmp_path,
                                                                        pg_db):
    """A session PostgreSQL alone holds (written by the store of every entity in
    PostgreSQL, which keeps no file) gets its chat file when its first message goes
    to the files."""
    phases = ("postgresql", "postgresql", "postgresql", "postgresql", "file")
    dal = mixed(settings, tmp_path / "data", phases, "file", dbname=pg_db)
    try:
        dal.create_user({"clerk_id": "user_ana"})
        owner = dal.pg.get_user_by_clerk_id("user_ana")["id"]
        dal.pg.create_chat_session("c_old", owner, {"m": 1}, title="Old")
    finally:
        dal.close()
    assert not (tmp_path / "data" / "chat_sessions" / "c_old.json").exists()
    late = ("postgresql", "postgresql", "postgresql", "dual", "file")
    dal = mixed(settings, tmp_path / "data", late, "file", dbname=pg_db)
    try:
        dal.add_message("c_old", "user", "first")
        assert dal.files.get_chat_session("c_old")["title"] == "Old"
        assert [m["content"] for m in dal.get_chat_history("c_old")] == ["first"]
        assert dal.pg.get_message_count("c_old") == 1
    finally:
        dal.close()


def test_rollback_undoes_both_stores(settings, tmp_path, pg_db):
    late = ("postgresql", "postgresql", "postgresql", "dual", "file")
    dal = mixed(settings, tmp_path / "data", late, "file", dbname=pg_db)
    try:
        dal.create_user({"clerk_id": "user_ana"})
        with pytest.raises(RuntimeError), dal.transaction():
            dal.create_chat_session("c_tx", "user_ana", {})
            dal.add_message("c_tx", "user", "one")
            raise RuntimeError("abort")
        assert dal.pg.get_chat_session("c_tx") is None
        assert dal.files.get_chat_session("c_tx") is None
    finally:
        dal.close()


def test_postgresql_down_fails_only_what_it_alone_holds(settings, tmp_path):
    dead = settings.model_copy(update={"db_port": closed_port(), "pgbouncer_port": None})
    late = mixed(dead, tmp_path / "late", ("postgresql", "postgresql", "postgresql", "dual",
                                           "file"), "file", pool_timeout=0.3, min_size=0)
    try:
        with pytest.raises(DatabaseError):
            late.create_user({"clerk_id": "user_ana"})
        late.write_log("info", "the files still take logs")
        health = late.health_check()
        assert health["status"] == "error"
        assert health["phases"]["users"] == "postgresql"
    finally:
        late.close()
    pilot = mixed(dead, tmp_path / "pilot", ("file", "dual", "file", "file", "file"), "file",
                  pool_timeout=0.3, min_size=0)
    try:
        pilot.create_user({"clerk_id": "user_ana"})  # the file write stands, copy queued
        pilot.create_chat_session("c_1", "user_ana", {})
        pilot.add_message("c_1", "user", "hi")
        queued = [json.loads(x) for x in pilot.queue.path.read_text().splitlines()]
        assert [e["kind"] for e in queued] == ["user"]  # file-only chats copy nothing
        health = pilot.health_check()
        assert health["status"] == "warning"
        assert health["phases"] == {"users": "file", "memory": "dual", "chats": "file",
                                    "messages": "file", "logs": "file"}
    finally:
        pilot.close()


def test_reconcile_copies_as_the_configured_store_does(settings, tmp_path, pg_db):
    """Reconcile built from settings with a store per entity replays with that store:
    users in dual-write, memory in files: the user's row, no memory row."""
    dead = settings.model_copy(update={"db_port": closed_port(), "pgbouncer_port": None})
    down = mixed(dead, tmp_path / "data", ("dual", "file", "file", "file", "file"), "file",
                 pool_timeout=0.3, min_size=0)
    try:
        down.create_user({"clerk_id": "user_ana"})
        down.set_user_memory("user_ana", "context", "pet", "cat")
    finally:
        down.close()
    configured = settings.model_copy(update={
        "data_dir": tmp_path / "data", "db_name": pg_db, "data_storage_type": "file",
        "data_storage_users": "dual", "migration_enable_dual_write": False})
    result = reconcile(settings=configured)
    assert (result.ok, result.replayed) == (True, 1)
    tables = in_tables(settings, pg_db)
    assert (tables["users"], tables["memory"]) == (True, False)


def test_a_failed_commit_undoes_the_files_when_postgresql_alone_held_writes(settings,
                                                                            tmp_path, pg_db):
    """All or nothing: PostgreSQL's commit fails (its connection killed), so the chat's
    file and the message written to it are rolled back too, and nothing is queued."""
    direct = settings.model_copy(update={"pgbouncer_port": None})
    late = ("postgresql", "postgresql", "postgresql", "dual", "file")
    dal = mixed(direct, tmp_path / "data", late, "file", dbname=pg_db)
    try:
        dal.create_user({"clerk_id": "user_ana"})
        dal.begin_transaction()
        dal.create_chat_session("c_tx", "user_ana", {})
        dal.add_message("c_tx", "user", "one")
        assert dal.files.get_message_count("c_tx") == 1
        pid = dal.pg._one("SELECT pg_backend_pid() AS pid")["pid"]  # the pinned connection
        superuser_psql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(DatabaseError):
            dal.commit()
        assert dal.files.get_chat_session("c_tx") is None
        assert dal.queue.count() == 0
        assert dal.get_chat_session("c_tx") is None
        # Usable afterwards.
        dal.create_chat_session("c_tx", "user_ana", {})
        dal.add_message("c_tx", "user", "again")
        assert [m["content"] for m in dal.get_chat_history("c_tx")] == ["again"]
    finally:
        dal.close()


def test_a_mixed_store_counts_only_what_it_copies(settings, tmp_path, pg_db,
                                                  no_inserts_into_messages):
    """The pilot copies the memory file (user and memory writes); chats and messages
    stay in files and are never counted."""
    dal = mixed(settings, tmp_path / "data", PLACES["pilot"][0], "file", dbname=pg_db)
    try:
        dal.create_user({"clerk_id": "user_ana"})
        dal.set_user_memory("user_ana", "context", "pet", "cat")
        dal.create_chat_session("c_1", "user_ana", {})
        dal.add_message("c_1", "user", "files only")
        assert mirror_figures(dal, "copies") == {"users": 1, "memory": 1, "chats": 0,
                                                 "messages": 0, "logs": 0}
        assert mirror_figures(dal, "failures") == dict.fromkeys(ENTITIES, 0)
    finally:
        dal.close()


def test_a_rolling_restart_to_postgresql_loses_no_write(settings, tmp_path, pg_db):
    """Users, memory and messages written by a process in PostgreSQL alone and by one
    still in dual-write, side by side on the same user and chat: the dual-write one
    copies its memory file whole and numbers its messages from the chat file, which the
    other keeps as PostgreSQL has them, so PostgreSQL and the files end up holding
    everything."""
    data = tmp_path / "data"
    before = mixed(settings, data, ("dual", "dual", "postgresql", "dual", "file"),
                   "postgresql", dbname=pg_db)
    after = mixed(settings, data, ("postgresql", "postgresql", "postgresql", "postgresql",
                                   "file"), "postgresql", dbname=pg_db)
    try:
        before.create_user({"clerk_id": "user_ana"})
        before.create_chat_session("c_1", "user_ana", {})
        for n in range(3):
            after.set_user_memory("user_ana", "context", f"after{n}", n)
            before.set_user_memory("user_ana", "context", f"before{n}", n)
            after.add_message("c_1", "user", f"after {n}")
            before.add_message("c_1", "user", f"before {n}")
        after.create_user({"clerk_id": "user_bo"})
        before.set_user_memory("user_bo", "context", "pet", "cat")
        assert before.queue.count() == 0
        everything = {f"{w}{n}": n for w in ("before", "after") for n in range(3)}
        assert after.get_user_memory("user_ana", "context") == everything
        assert after.files.get_user_memory("user_ana", "context") == everything
        assert after.get_user_memory("user_bo", "context") == {"pet": "cat"}
        contents = [m["content"] for m in after.get_chat_history("c_1")]
        assert contents == [f"{w} {n}" for n in range(3) for w in ("after", "before")]
        assert after.files.get_chat_history("c_1") == after.get_chat_history("c_1")
    finally:
        before.close()
        after.close()

"""Dual-write when PostgreSQL fails, and reconcile. Real PostgreSQL; "down" is a closed port."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat

import pytest

from donnadb.dal import DualWriteDataAccess, FileDataAccess, PostgresDataAccess, reconcile
from donnadb.errors import UsageError
from tests.dal.conftest import ENTITIES


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def down(settings, tmp_path):
    """A dual-write DAL whose database is unreachable (nothing listens on its port)."""
    dead = settings.model_copy(update={"db_port": closed_port(), "pgbouncer_port": None})
    pg = PostgresDataAccess(dead, pool_timeout=0.3, min_size=0)
    dal = DualWriteDataAccess(FileDataAccess(tmp_path / "data"), pg, retry_after=60)
    yield dal
    dal.close()


@pytest.fixture
def up(settings, tmp_path, pg_db):
    """A dual-write DAL over the same data directory with a working database."""
    dal = DualWriteDataAccess(FileDataAccess(tmp_path / "data"),
                              PostgresDataAccess(settings, dbname=pg_db))
    yield dal
    dal.close()


def write_some(dal) -> None:
    dal.create_user({"clerk_id": "user_ana", "preferences": {"language": "pt"}})
    dal.create_chat_session("c_1", "user_ana", {"client": "web"}, title="Trip")
    for i in range(3):
        dal.add_message("c_1", "user", f"m{i}", token_count=i)
    dal.set_user_memory("user_ana", "context", "pet", "cat")
    dal.update_chat_session("c_1", {"title": "Lisbon"})


def test_database_down_keeps_file_writes_and_queues_them(down, caplog):
    caplog.set_level(logging.WARNING, logger="donnadb.dal.dualwrite")
    write_some(down)
    files = down.files
    assert [m["content"] for m in files.get_chat_history("c_1")] == ["m0", "m1", "m2"]
    assert files.get_user_memory("user_ana", "context") == {"pet": "cat"}
    assert down.get_chat_session("c_1")["title"] == "Lisbon"  # reads: primary = files
    assert any("queued for reconcile" in r.getMessage() for r in caplog.records)
    lines = [json.loads(x) for x in down.queue.path.read_text().splitlines()]
    assert {e["kind"] for e in lines} == {"user", "chat", "message"}
    assert len([e for e in lines if e["kind"] == "message"]) == 3
    assert stat.S_IMODE(os.stat(down.queue.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(down.queue.folder).st_mode) == 0o700
    health = down.health_check()
    assert health["status"] == "warning"
    assert health["postgresql"]["status"] == "error"
    assert health["reconcile_pending"] == len(lines)


def test_reconcile_replays_everything_once(down, up):
    write_some(down)
    result = reconcile(up)
    assert result.ok and result.replayed == 3  # user, chat, the chat's messages
    assert up.queue.count() == 0
    pg = up.pg
    user = pg.get_user_by_clerk_id("user_ana")
    assert user["preferences"] == {"language": "pt"}
    assert pg.get_user_memory(user["id"], "context") == {"pet": "cat"}
    assert pg.get_user_memory(user["id"], "preferences") == {"language": "pt"}
    session = pg.get_chat_session("c_1")
    assert (session["title"], session["user_id"], session["message_count"]) == (
        "Lisbon", user["id"], 3)
    expected = [(m["id"], m["sequence_number"], m["content"], m["token_count"])
                for m in up.files.get_chat_history("c_1")]
    got = [(m["id"], m["sequence_number"], m["content"], m["token_count"])
           for m in pg.get_chat_history("c_1")]
    assert got == expected

    # Replaying the same entries again (a crash after replay, before the queue was
    # cleared) changes nothing.
    up.queue.append([{"kind": "message", "chat_id": "c_1", "message_id": expected[0][0]},
                     {"kind": "user", "clerk_id": "user_ana"}, {"kind": "chat", "chat_id": "c_1"}],
                    op="test", error="replay")
    assert reconcile(up).ok
    assert pg.get_message_count("c_1") == 3
    assert [(m["id"], m["sequence_number"]) for m in pg.get_chat_history("c_1")] == [
        e[:2] for e in expected]


def test_an_outage_in_the_middle_keeps_the_conversation_order(down, up):
    up.create_chat_session("c_1", None, {})
    up.add_message("c_1", "user", "one")
    down.add_message("c_1", "assistant", "two")  # the database missed this one
    up.add_message("c_1", "user", "three")
    assert [m["content"] for m in up.pg.get_chat_history("c_1")] == ["one", "three"]
    assert reconcile(up).ok
    history = up.pg.get_chat_history("c_1")
    assert [(m["sequence_number"], m["content"]) for m in history] == [
        (1, "one"), (2, "two"), (3, "three")]


def test_reconcile_while_still_down_keeps_the_queue(down):
    write_some(down)
    before = down.queue.count()
    result = reconcile(down)
    assert not result.ok and result.replayed == 0
    assert "cannot" in result.errors[0] or "connection" in result.errors[0]
    assert down.queue.count() == before
    assert not list(down.queue.folder.glob("*.processing"))


def test_a_batch_left_by_a_crashed_reconcile_is_replayed(down, up):
    write_some(down)
    # A reconcile killed after claiming the queue leaves its batch file behind.
    down.queue.path.rename(down.queue.folder / "pending.jsonl.dead.processing")
    assert up.queue.count() > 0
    assert reconcile(up).ok
    assert up.pg.get_message_count("c_1") == 3
    assert up.queue.count() == 0


def test_one_reconcile_at_a_time(up):
    from donnadb.dal import fileio

    up.queue._ensure()
    fd = fileio.acquire(up.queue._run_lock)
    try:
        with pytest.raises(UsageError, match="another reconcile"):
            reconcile(up)
    finally:
        fileio.release(fd)


def test_a_failed_transaction_is_queued_as_a_whole(down, up):
    up.create_chat_session("c_1", None, {})
    with down.transaction():
        down.add_message("c_1", "user", "a")
        down.add_message("c_1", "user", "b")
    assert up.pg.get_message_count("c_1") == 0
    assert reconcile(up).ok
    assert [m["content"] for m in up.pg.get_chat_history("c_1")] == ["a", "b"]


def test_postgresql_reads_fall_back_to_the_files_when_it_is_down(settings, tmp_path):
    dead = settings.model_copy(update={"db_port": closed_port(), "pgbouncer_port": None})
    dal = DualWriteDataAccess(FileDataAccess(tmp_path), PostgresDataAccess(
        dead, pool_timeout=0.3, min_size=0), primary="postgresql", retry_after=60)
    try:
        dal.create_chat_session("c_1", None, {})
        dal.add_message("c_1", "user", "hello")
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["hello"]
    finally:
        dal.close()


def test_concurrent_writers_leave_postgresql_equal_to_the_files(up):
    """Many threads rewriting one chat and one user: every copy succeeds (no lock or
    deadlock error is queued) and the database ends equal to the files."""
    import threading

    up.create_user({"clerk_id": "user_ana"})
    up.create_chat_session("c_1", "user_ana", {})

    def worker(n):
        for i in range(15):
            up.update_chat_session("c_1", {"title": f"t{n}-{i}", "metadata": {"n": n, "i": i}})
            up.set_user_memory("user_ana", "context", "last", [n, i])
            up.update_user("user_ana", {"name": f"name{n}-{i}"})

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert up.queue.count() == 0
    file_chat, pg_chat = up.files.get_chat_session("c_1"), up.pg.get_chat_session("c_1")
    assert (pg_chat["title"], pg_chat["metadata"]) == (file_chat["title"], file_chat["metadata"])
    pg_user = up.pg.get_user_by_clerk_id("user_ana")
    assert pg_user["name"] == up.files.get_user_by_id("user_ana")["name"]
    assert up.pg.get_user_memory(pg_user["id"], "context") == up.files.get_user_memory(
        "user_ana", "context")


def test_a_chat_of_a_user_without_memory_file_creates_a_bare_user(up, tmp_path):
    (tmp_path / "data" / "chat_sessions" / "c_orphan.json").write_text(
        '{"chat_id": "c_orphan", "user_id": "user_ghost", "messages": ['
        '{"role": "bot", "content": "hi", "timestamp": "2024-05-01 10:00:00"}]}')
    up.queue.append([{"kind": "message", "chat_id": "c_orphan",
                      "message_id": up.files.get_chat_history("c_orphan")[0]["id"]}],
                    op="test", error="x")
    assert reconcile(up).ok
    ghost = up.pg.get_user_by_clerk_id("user_ghost")
    assert ghost is not None and ghost["email"] is None
    session = up.pg.get_chat_session("c_orphan")
    assert session["user_id"] == ghost["id"]
    (m,) = up.pg.get_chat_history("c_orphan")
    assert (m["role"], m["created_at"].isoformat()) == ("assistant", "2024-05-01T10:00:00+00:00")


def test_a_log_line_and_its_row_are_the_ones_the_import_makes(settings, up, pg_db):
    from donnadb import db
    from donnadb.legacy.importer import import_data_dir
    from donnadb.legacy.reader import LegacyReader
    from donnadb.legacy.verify import verify

    write_some(up)
    ids = [up.write_log("error", f"failure {i}", {"i": i}, ip_address="10.0.0.1")
           for i in range(3)]
    assert up.queue.count() == 0
    with db.connect("migrator", settings=settings, dbname=pg_db, autocommit=True) as conn:
        rows = conn.execute("SELECT id::text FROM system_logs ORDER BY message").fetchall()
        assert [r[0] for r in rows] == ids
        result = verify(LegacyReader.open(up.files.data_dir), conn)
        assert result.compared["logs"] == 3
        assert not [d for d in result.differences if d["kind"].startswith("log_")], result
        # The import of the same directory finds every log row already there.
        summary = import_data_dir(LegacyReader.open(up.files.data_dir), conn, batch_size=100)
        assert summary.read["system_logs"] == 3
        assert conn.execute("SELECT count(*) FROM system_logs").fetchone()[0] == 3


def test_a_log_written_while_the_database_is_down_is_reconciled_once(settings, down, up, pg_db):
    from donnadb import db

    log_id = down.write_log("critical", "database unreachable", {"attempt": 1})
    lines = [json.loads(x) for x in down.queue.path.read_text().splitlines()]
    assert [e["kind"] for e in lines] == ["log"]
    assert reconcile(up).ok
    up.queue.append([{"kind": "log", "source": lines[0]["source"]}], op="test", error="again")
    assert reconcile(up).ok
    with db.connection("readonly", settings=settings, dbname=pg_db) as conn:
        rows = conn.execute("SELECT id::text, level, context FROM system_logs").fetchall()
    assert rows == [(log_id, "critical",
                     {"attempt": 1, "_donnadb_legacy": {"source": lines[0]["source"]}})]


def test_reconcile_one_entity_keeps_the_others_queued(down, up):
    write_some(down)
    queued = [json.loads(x) for x in down.queue.path.read_text().splitlines()]
    # Memory: the memory file's entries (users share them); chats and messages wait.
    result = reconcile(up, entity="memory")
    assert (result.ok, result.replayed, result.entries) == (True, 1, 2)
    user = up.pg.get_user_by_clerk_id("user_ana")
    assert up.pg.get_user_memory(user["id"], "context") == {"pet": "cat"}
    assert up.pg.get_chat_session("c_1") is None
    left = [json.loads(x) for x in up.queue.path.read_text().splitlines()]
    assert [(e["kind"], e["op"], e["error"]) for e in left] == [
        (e["kind"], e["op"], e["error"]) for e in queued if e["kind"] != "user"]
    # Messages bring their chat's row along (as a live copy does); the chat's own
    # entries stay queued until chats are reconciled.
    assert reconcile(up, entity="messages").replayed == 1
    assert up.pg.get_message_count("c_1") == 3
    assert {e["kind"] for e in map(json.loads, up.queue.path.read_text().splitlines())} == {
        "chat"}
    assert reconcile(up, entity="chats").ok
    assert up.pg.get_chat_session("c_1")["title"] == "Lisbon"
    assert up.queue.count() == 0
    with pytest.raises(UsageError, match="unknown entity 'files'"):
        reconcile(up, entity="files")


def mirror_figures(dal, figure: str) -> dict[str, int]:
    """``health_check()["mirror"]``'s ``figure`` (copies, failures) per entity."""
    return {entity: m[figure] for entity, m in dal.health_check()["mirror"].items()}


def test_each_copy_is_timed_under_its_entity(up):
    up.create_user({"clerk_id": "user_ana"})
    up.set_user_memory("user_ana", "context", "pet", "cat")
    up.create_chat_session("c_1", "user_ana", {})
    for i in range(3):
        up.add_message("c_1", "user", f"m{i}")
    up.write_log("info", "hello")
    mirror = up.health_check()["mirror"]
    assert {e: m["copies"] for e, m in mirror.items()} == {
        "users": 1, "memory": 1, "chats": 1, "messages": 3, "logs": 1}
    assert all(m["failures"] == 0 for m in mirror.values())
    msg = mirror["messages"]
    assert 0 < msg["seconds_p95"] <= msg["seconds_sum"] < 10


def test_a_refused_copy_counts_against_its_entity_only(up, no_inserts_into_messages):
    up.create_user({"clerk_id": "user_ana"})
    up.set_user_memory("user_ana", "context", "pet", "cat")
    up.create_chat_session("c_1", "user_ana", {})
    assert mirror_figures(up, "failures") == dict.fromkeys(ENTITIES, 0)
    up.add_message("c_1", "user", "PostgreSQL may not store this")
    assert mirror_figures(up, "failures") == {"users": 0, "memory": 0, "chats": 0,
                                              "messages": 1, "logs": 0}
    assert mirror_figures(up, "copies")["messages"] == 1  # the refused attempt is timed too
    assert up.queue.count() == 1
    assert up.files.get_message_count("c_1") == 1


def test_writes_while_postgresql_is_unreachable_count_per_entity(down):
    down.create_user({"clerk_id": "user_ana"})     # tried: the pool times out
    down.update_user("user_ana", {"name": "Ana"})  # skipped: PostgreSQL is down
    down.create_chat_session("c_1", "user_ana", {})
    with down.transaction():                       # queued at commit
        down.add_message("c_1", "user", "one")
        down.add_message("c_1", "assistant", "two")
    assert mirror_figures(down, "failures") == {"users": 2, "memory": 0, "chats": 1,
                                                "messages": 2, "logs": 0}
    assert mirror_figures(down, "copies")["users"] == 1  # the one that waited for PostgreSQL

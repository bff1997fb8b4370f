"""PostgresDataAccess beyond the contract: pool settings, PgBouncer mode, errors, copies."""

from __future__ import annotations

import socket
import uuid

import pytest

from donnadb.dal import ConflictError, NotFoundError, PostgresDataAccess
from donnadb.errors import DatabaseError
from tests.dal.conftest import sent_messages


def test_pool_follows_the_settings(settings, pg_db):
    tuned = settings.model_copy(update={"db_max_connections": 7, "db_idle_timeout": 42,
                                        "pgbouncer_port": None})
    with PostgresDataAccess(tuned, dbname=pg_db) as dal:
        assert (dal._pool.max_size, dal._pool.max_idle) == (7, 42.0)
        assert dal._pool.kwargs["autocommit"] is True
        assert "prepare_threshold" not in dal._pool.kwargs
        health = dal.health_check()
        assert health["status"] == "ok"
        assert health["database"] == pg_db
        assert health["user"] == settings.db_role_app
        assert health["pool"]["max"] == 7


def test_pgbouncer_means_no_prepared_statements(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    via = settings.model_copy(update={"pgbouncer_port": port})
    dal = PostgresDataAccess(via, min_size=0, pool_timeout=0.2)
    try:
        assert dal.via_pgbouncer
        assert dal._pool.kwargs["prepare_threshold"] is None
        assert f"port={port}" in dal._pool.conninfo
    finally:
        dal.close()


def test_database_down_is_one_clear_error(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(update={"db_port": port, "pgbouncer_port": None})
    dal = PostgresDataAccess(dead, min_size=0, pool_timeout=0.3)
    try:
        with pytest.raises(DatabaseError, match="no database connection within 0.3s"):
            dal.add_message("c_1", "user", "x")
        health = dal.health_check()
        assert health["status"] == "error" and "PostgreSQL" in health["error"]
    finally:
        dal.close()


def test_message_copies_are_idempotent_and_keep_positions(settings, pg_db, connect_as):
    with PostgresDataAccess(settings, dbname=pg_db) as dal:
        dal.create_chat_session("c_1", None, {})
        first = dal.add_message("c_1", "user", "native")
        copies = [
            {"id": "5d0c5f8e-8a43-4d38-9a2f-1f1f5b0e0a01", "role": "assistant", "content": "c3",
             "metadata": {}, "created_at": None, "sequence_number": 3, "token_count": None,
             "abuse_flagged": False},
            {"id": "5d0c5f8e-8a43-4d38-9a2f-1f1f5b0e0a02", "role": "user", "content": "c2",
             "metadata": {}, "created_at": None, "sequence_number": 2, "token_count": 4,
             "abuse_flagged": True},
        ]
        assert dal.insert_messages("c_1", copies) == 2
        assert dal.insert_messages("c_1", copies) == 0
        history = dal.get_chat_history("c_1")
        assert [(m["sequence_number"], m["content"]) for m in history] == [
            (1, "native"), (2, "c2"), (3, "c3")]
        assert history[0]["id"] == first
        # The trigger keeps the count; the DAL never adds to it as well.
        conn = connect_as("readonly", dbname=pg_db)
        row = conn.execute("SELECT message_count, (SELECT count(*) FROM messages) "
                           "FROM chat_sessions WHERE chat_id = 'c_1'").fetchone()
        assert row == (3, 3)


def test_search_uses_english_full_text_search(settings, pg_db):
    """PostgreSQL finds other forms of a word and ignores stop words (protocol.py)."""
    with PostgresDataAccess(settings.model_copy(update={"pgbouncer_port": None}),
                            dbname=pg_db) as dal:
        uid = dal.create_user({"clerk_id": "user_fts"})
        dal.create_chat_session("c_fts", uid)
        dal.add_message("c_fts", "user", "The meetings were moved")
        assert [m["content"] for m in dal.search_messages(uid, "meeting moving")] == [
            "The meetings were moved"]
        assert dal.search_messages(uid, "the") == []  # only a stop word: no words left


def test_a_log_row_as_written(settings, pg_db):
    from donnadb import db

    with PostgresDataAccess(settings.model_copy(update={"pgbouncer_port": None}),
                            dbname=pg_db) as dal:
        log_id = dal.write_log("ERROR", "boom", {"order": 7}, trace_id="t-9",
                               ip_address="2001:db8::1", user_agent="ua", request_uri="/x")
    with db.connection("readonly", settings=settings, dbname=pg_db) as conn:
        row = conn.execute(
            "SELECT level, message, context, trace_id, host(ip_address), user_agent, "
            "request_uri, now() - created_at < interval '1 minute' FROM system_logs "
            "WHERE id = %s", (log_id,)).fetchone()
    assert row == ("error", "boom", {"order": 7}, "t-9", "2001:db8::1", "ua", "/x", True)


def _plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _plan_nodes(child))]


def test_history_read_walks_the_sequence_index_without_sorting(settings, pg_db, connect_as):
    """The history read's plan (postgres_sql.SELECT_HISTORY): one backward walk of
    idx_messages_sequence, stopped by the LIMIT; no Sort node, no join. Through PgBouncer
    every call is planned, and the join-and-resort form it replaced cost more to plan
    than to run. (Sequential and bitmap scans are switched off: the test's tables are tiny.)"""
    from donnadb.dal import postgres_sql as q

    with PostgresDataAccess(settings, dbname=pg_db) as dal:
        dal.create_chat_session("c_plan", None, {})
        dal.insert_messages("c_plan", [
            {"id": str(uuid.uuid4()), "role": "user", "content": f"m{i}", "metadata": {},
             "created_at": None, "sequence_number": i, "token_count": None,
             "abuse_flagged": False} for i in range(1, 101)])
        assert [m["sequence_number"] for m in dal.get_chat_history("c_plan", 3, 1)] == [
            97, 98, 99]
    connect_as("migrator", dbname=pg_db, autocommit=True).execute("ANALYZE messages")
    conn = connect_as("app", dbname=pg_db)
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_bitmapscan = off")
    plan = conn.execute("EXPLAIN (FORMAT JSON) " + q.SELECT_HISTORY,
                        {"chat_id": "c_plan", "limit": 20, "offset": 0}).fetchone()[0]
    nodes = _plan_nodes(plan[0]["Plan"])
    kinds = [n["Node Type"] for n in nodes]
    assert "Sort" not in kinds and "Nested Loop" not in kinds, kinds
    walks = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert [(n["Index Name"], n["Scan Direction"]) for n in walks] == [
        ("idx_messages_sequence", "Backward")], walks


def test_one_statement_writes_are_one_round_trip(settings, pg_db, tmp_path):
    """add_message (the add_message() function), create_chat_session and set_user_memory
    of a non-section type send one statement each and no BEGIN/COMMIT: through PgBouncer a
    transaction holds its server connection across every client round trip. Inside the
    caller's transaction they still take a savepoint, so a failure leaves it usable."""
    one = settings.model_copy(update={"db_max_connections": 1, "pgbouncer_port": None})
    with PostgresDataAccess(one, dbname=pg_db) as dal:
        uid = dal.create_user({"clerk_id": "user_rt"})

        def writes() -> None:
            dal.create_chat_session("c_rt", uid)
            dal.add_message("c_rt", "user", "one")
            dal.add_message("c_rt", "assistant", "two")
            dal.set_user_memory(uid, "context", "topic", {"v": 1})

        sent = sent_messages(dal, tmp_path / "libpq.trace", writes)
        assert "Query" not in sent, sent  # BEGIN, COMMIT and SAVEPOINT go as simple queries
        assert sent.count("Sync") == 4, sent
        assert [m["sequence_number"] for m in dal.get_chat_history("c_rt")] == [1, 2]

        with dal.transaction():
            dal.add_message("c_rt", "user", "three")
            with pytest.raises(NotFoundError):
                dal.add_message("c_missing", "user", "lost")
            with pytest.raises(ConflictError):  # the server refuses it: a savepoint undoes it
                dal.create_chat_session("c_rt", uid)
            dal.add_message("c_rt", "user", "four")
        assert [m["content"] for m in dal.get_chat_history("c_rt")] == [
            "one", "two", "three", "four"]


def _prepared_statements(dal: PostgresDataAccess) -> list[str]:
    with dal._pool.connection() as conn:
        return [r["name"] for r in conn.execute(
            "SELECT name FROM pg_prepared_statements ORDER BY name").fetchall()]


def test_the_hot_calls_are_prepared_after_a_few_runs_directly_and_never_via_pgbouncer(
        settings, pg_db, tmp_path):
    """The fast path (dal/fastpath.py) prepares the history read and the append after
    PREPARE_AFTER runs on a connection, under names of its own; through PgBouncer it
    never does (a later call may reach a server connection without the name)."""
    from donnadb.dal.fastpath import PREPARE_AFTER

    direct = settings.model_copy(update={"db_max_connections": 1, "pgbouncer_port": None})
    with PostgresDataAccess(direct, dbname=pg_db) as dal:
        dal.create_chat_session("c_fast", None, {})
        for i in range(PREPARE_AFTER):
            dal.add_message("c_fast", "user", f"m{i}")
            assert len(dal.get_chat_history("c_fast", 2)) == min(i + 1, 2)
        assert not [n for n in _prepared_statements(dal) if n.startswith("donnadb_")]
        dal.add_message("c_fast", "user", "prepared", {"k": [1, "x"]}, token_count=7,
                        abuse_flagged=True)
        last = dal.get_chat_history("c_fast", 1)
        assert [n for n in _prepared_statements(dal) if n.startswith("donnadb_")] == [
            "donnadb_add_message", "donnadb_history"]
        assert [(m["content"], m["metadata"], m["token_count"], m["abuse_flagged"],
                 m["sequence_number"], m["chat_id"]) for m in last] == [
            ("prepared", {"k": [1, "x"]}, 7, True, PREPARE_AFTER + 1, "c_fast")]

    via = settings.model_copy(update={"db_max_connections": 1})
    assert via.pgbouncer_port is not None
    with PostgresDataAccess(via, dbname=pg_db) as dal:
        trace = tmp_path / "libpq.trace"

        def calls() -> None:
            for i in range(3 * PREPARE_AFTER):
                dal.add_message("c_fast", "assistant", f"b{i}")
                dal.get_chat_history("c_fast")

        sent = sent_messages(dal, trace, calls)
        assert sent.count("Sync") == 6 * PREPARE_AFTER, sent
        parses = [line for line in trace.read_text().splitlines() if "\tParse\t" in line]
        assert parses and not [line for line in parses if "donnadb_" in line], parses[:3]
        assert len(dal.get_chat_history("c_fast", 100)) == 4 * PREPARE_AFTER + 1


def test_a_chat_id_with_a_nul_is_refused_not_cut_short(settings, pg_db):
    """libpq sends a text parameter up to its first NUL: "c_nul\\0x" must not read or
    write the chat "c_nul"."""
    from donnadb.errors import DataError

    direct = settings.model_copy(update={"pgbouncer_port": None})
    with PostgresDataAccess(direct, dbname=pg_db) as dal:
        dal.create_chat_session("c_nul", None, {})
        dal.add_message("c_nul", "user", "secret")
        with pytest.raises(DataError, match="NUL"):
            dal.get_chat_history("c_nul\x00x")
        with pytest.raises(DataError, match="NUL"):
            dal.add_message("c_nul\x00x", "user", "planted")
        with pytest.raises(DataError, match="not int"):
            dal.get_chat_history(7)
        assert [m["content"] for m in dal.get_chat_history("c_nul")] == ["secret"]

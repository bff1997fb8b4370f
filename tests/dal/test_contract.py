"""The one contract every store keeps. Runs unchanged against file, postgresql,
dual-write (reading from either store) and stores per entity; see tests/dal/conftest.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from donnadb.dal import (
    ConflictError,
    DataAccess,
    DualWriteDataAccess,
    FileDataAccess,
    NotFoundError,
    TransactionError,
    ranking,
)
from donnadb.dal.values import legacy_log_id
from donnadb.errors import DataError

USER_KEYS = {"id", "clerk_id", "email", "name", "profile", "preferences", "created_at",
             "updated_at", "last_active_at", "status"}
SESSION_KEYS = {"id", "chat_id", "user_id", "title", "profile", "metadata", "created_at",
                "updated_at", "last_message_at", "message_count", "status"}
MESSAGE_KEYS = {"id", "chat_id", "role", "content", "metadata", "created_at",
                "sequence_number", "token_count", "abuse_flagged"}


def new_user(dal, clerk_id="user_ana", **extra):
    return dal.create_user({"clerk_id": clerk_id, "email": "ana@example.com", "name": "Ana",
                            **extra})


# ---------------------------------------------------------------- users
def test_user_create_and_read_back(dal):
    uid = new_user(dal, profile={"timezone": "Europe/Lisbon"}, preferences={"tone": "short"})
    by_id = dal.get_user_by_id(uid)
    assert set(by_id) == USER_KEYS
    assert by_id["id"] == uid
    assert by_id["clerk_id"] == "user_ana"
    assert by_id["email"] == "ana@example.com"
    assert by_id["profile"] == {"timezone": "Europe/Lisbon"}
    assert by_id["preferences"] == {"tone": "short"}
    assert by_id["status"] == "active"
    assert by_id["created_at"].tzinfo is not None
    assert dal.get_user_by_clerk_id("user_ana") == by_id
    assert dal.get_user_by_clerk_id("user_nobody") is None
    assert dal.get_user_by_id("user_nobody") is None
    assert dal.get_user_by_id("00000000-0000-0000-0000-000000000000") is None


def test_user_duplicate_clerk_id_is_a_conflict(dal):
    new_user(dal)
    with pytest.raises(ConflictError):
        new_user(dal)


def test_user_update(dal):
    uid = new_user(dal, profile={"a": 1, "b": 2})
    seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert dal.update_user(uid, {"name": "Ana M.", "profile": {"a": 3},
                                 "last_active_at": seen, "status": "suspended"})
    user = dal.get_user_by_id(uid)
    assert (user["name"], user["profile"], user["status"]) == ("Ana M.", {"a": 3}, "suspended")
    assert user["last_active_at"] == seen
    assert user["email"] == "ana@example.com"
    assert dal.update_user("user_nobody", {"name": "x"}) is False
    with pytest.raises(DataError, match="password"):
        dal.update_user(uid, {"password": "x"})


# ---------------------------------------------------------------- chat sessions
def test_chat_session_create_get_update(dal):
    uid = new_user(dal)
    sid = dal.create_chat_session("c_01", uid, {"model": "gpt-4o"}, title="Trip")
    s = dal.get_chat_session("c_01")
    assert set(s) == SESSION_KEYS
    assert s["id"] == sid
    assert (s["chat_id"], s["user_id"], s["title"]) == ("c_01", uid, "Trip")
    assert (s["profile"], s["status"], s["metadata"]) == ("general", "active", {"model": "gpt-4o"})
    assert (s["message_count"], s["last_message_at"]) == (0, None)
    assert dal.update_chat_session("c_01", {"title": "Lisbon", "metadata": {"m": 2},
                                            "status": "archived"})
    s = dal.get_chat_session("c_01")
    assert (s["title"], s["metadata"], s["status"]) == ("Lisbon", {"m": 2}, "archived")
    assert dal.update_chat_session("c_missing", {"title": "x"}) is False
    assert dal.get_chat_session("c_missing") is None


def test_chat_session_errors(dal):
    uid = new_user(dal)
    dal.create_chat_session("c_01", uid, {})
    with pytest.raises(ConflictError):
        dal.create_chat_session("c_01", uid, {})
    with pytest.raises(NotFoundError):
        dal.create_chat_session("c_02", "user_nobody", {})
    with pytest.raises(DataError):
        dal.update_chat_session("c_01", {"message_count": 7})


def test_anonymous_chat(dal):
    dal.create_chat_session("c_anon", None, {})
    assert dal.get_chat_session("c_anon")["user_id"] is None
    dal.add_message("c_anon", "user", "hi")
    assert dal.get_message_count("c_anon") == 1


# ---------------------------------------------------------------- messages
def test_messages_in_order_with_window(dal):
    dal.create_chat_session("c_01", None, {})
    ids = [dal.add_message("c_01", "user" if i % 2 == 0 else "assistant", f"m{i}")
           for i in range(1, 8)]
    assert len(set(ids)) == 7
    assert dal.get_message_count("c_01") == 7
    latest = dal.get_chat_history("c_01", limit=3)
    assert [m["content"] for m in latest] == ["m5", "m6", "m7"]
    assert [m["sequence_number"] for m in latest] == [5, 6, 7]
    assert [m["id"] for m in latest] == ids[4:]
    older = dal.get_chat_history("c_01", limit=3, offset=3)
    assert [m["content"] for m in older] == ["m2", "m3", "m4"]
    assert [m["content"] for m in dal.get_chat_history("c_01", limit=5, offset=5)] == ["m1", "m2"]
    assert dal.get_chat_history("c_01", limit=5, offset=7) == []
    assert len(dal.get_chat_history("c_01")) == 7
    s = dal.get_chat_session("c_01")
    assert s["message_count"] == 7
    assert s["last_message_at"] == latest[-1]["created_at"]


def test_message_fields_round_trip(dal):
    dal.create_chat_session("c_01", None, {})
    dal.add_message("c_01", "assistant", "Hello!", {"latency_ms": 830, "tags": ["a"]},
                    token_count=41, abuse_flagged=True)
    (m,) = dal.get_chat_history("c_01")
    assert set(m) == MESSAGE_KEYS
    assert (m["chat_id"], m["role"], m["content"]) == ("c_01", "assistant", "Hello!")
    assert m["metadata"] == {"latency_ms": 830, "tags": ["a"]}
    assert (m["token_count"], m["abuse_flagged"], m["sequence_number"]) == (41, True, 1)
    assert abs(m["created_at"] - datetime.now(UTC)) < timedelta(minutes=5)


def test_text_postgresql_cannot_store_round_trips(dal):
    dal.create_chat_session("c_01", None, {})
    awkward = "nul \x00 here, lone \ud800 surrogate, quote \" and \\ backslash, ünï ✓"
    dal.add_message("c_01", "user", awkward, {"k": "v"})
    dal.add_message("c_01", "user", "plain")
    first, second = dal.get_chat_history("c_01")
    assert first["content"] == awkward
    assert first["metadata"] == {"k": "v"}
    assert second["content"] == "plain"


def test_message_errors(dal):
    with pytest.raises(NotFoundError):
        dal.add_message("c_missing", "user", "lost?")
    dal.create_chat_session("c_01", None, {})
    with pytest.raises(DataError, match="role"):
        dal.add_message("c_01", "robot", "x")
    with pytest.raises(DataError, match="limit"):
        dal.get_chat_history("c_01", limit=-1)
    assert dal.get_chat_history("c_missing") == []
    assert dal.get_message_count("c_missing") == 0
    assert dal.get_message_count("c_01") == 0


def test_concurrent_appends_get_distinct_positions(dal):
    dal.create_chat_session("c_busy", None, {})
    threads, per_thread = 20, 5
    errors = []

    def worker(n):
        try:
            for i in range(per_thread):
                dal.add_message("c_busy", "user", f"t{n}-{i}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    total = threads * per_thread
    history = dal.get_chat_history("c_busy", limit=total + 10)
    assert [m["sequence_number"] for m in history] == list(range(1, total + 1))
    assert sorted(m["content"] for m in history) == sorted(
        f"t{n}-{i}" for n in range(threads) for i in range(per_thread))
    assert dal.get_message_count("c_busy") == total
    for n in range(threads):  # each writer's messages stay in its own order
        own = [m["content"] for m in history if m["content"].startswith(f"t{n}-")]
        assert own == [f"t{n}-{i}" for i in range(per_thread)]


# ---------------------------------------------------------------- user memory
def test_memory_set_get_overwrite_delete(dal):
    uid = new_user(dal)
    values = {"pet": "cat", "n": 3, "list": [1, "two"], "obj": {"city": "Lisbon"}, "nil": None}
    for key, value in values.items():
        assert dal.set_user_memory(uid, "context", key, value)
    assert dal.get_user_memory(uid, "context") == values
    assert dal.get_user_memory(uid, "context", "obj") == {"obj": {"city": "Lisbon"}}
    assert dal.get_user_memory(uid, "context", "missing") == {}
    dal.set_user_memory(uid, "context", "pet", "dog")
    assert dal.get_user_memory(uid, "context", "pet") == {"pet": "dog"}
    assert dal.get_user_memory(uid, "preferences") == {}
    assert dal.delete_user_memory(uid, "context", "pet") is True
    assert dal.delete_user_memory(uid, "context", "pet") is False
    assert "pet" not in dal.get_user_memory(uid, "context")
    assert dal.delete_user_memory(uid, "context") is True
    assert dal.get_user_memory(uid, "context") == {}
    assert dal.delete_user_memory(uid, "context") is False


def test_memory_expiry(dal):
    uid = new_user(dal)
    now = datetime.now(UTC)
    dal.set_user_memory(uid, "context", "old", 1, expires_at=now - timedelta(seconds=1))
    dal.set_user_memory(uid, "context", "soon", 2, expires_at=now + timedelta(hours=1))
    dal.set_user_memory(uid, "context", "forever", 3)
    assert dal.get_user_memory(uid, "context") == {"soon": 2, "forever": 3}
    assert dal.get_user_memory(uid, "context", "old") == {}
    # Setting again without expiry revives the entry.
    dal.set_user_memory(uid, "context", "old", 4)
    assert dal.get_user_memory(uid, "context", "old") == {"old": 4}


def test_memory_profile_and_preferences_are_the_user_fields(dal):
    uid = new_user(dal, preferences={"language": "pt"})
    assert dal.get_user_memory(uid, "preferences") == {"language": "pt"}
    dal.set_user_memory(uid, "preferences", "tone", "short")
    assert dal.get_user_by_id(uid)["preferences"] == {"language": "pt", "tone": "short"}
    dal.delete_user_memory(uid, "preferences", "language")
    assert dal.get_user_by_id(uid)["preferences"] == {"tone": "short"}
    dal.update_user(uid, {"profile": {"timezone": "UTC"}})
    assert dal.get_user_memory(uid, "profile") == {"timezone": "UTC"}


def test_memory_errors(dal):
    uid = new_user(dal)
    with pytest.raises(DataError, match="memory type"):
        dal.set_user_memory(uid, "secrets", "k", "v")
    with pytest.raises(NotFoundError):
        dal.set_user_memory("user_nobody", "context", "k", "v")
    assert dal.get_user_memory("user_nobody", "context") == {}
    assert dal.delete_user_memory("user_nobody", "context") is False


# ---------------------------------------------------------------- transactions
def test_transaction_commit_keeps_everything(dal):
    uid = new_user(dal)
    with dal.transaction():
        dal.create_chat_session("c_tx", uid, {})
        dal.add_message("c_tx", "user", "one")
        dal.add_message("c_tx", "assistant", "two")
        dal.set_user_memory(uid, "context", "k", "v")
    assert [m["content"] for m in dal.get_chat_history("c_tx")] == ["one", "two"]
    assert dal.get_user_memory(uid, "context") == {"k": "v"}


def test_transaction_rollback_undoes_everything(dal):
    uid = new_user(dal)
    dal.create_chat_session("c_kept", uid, {})
    dal.add_message("c_kept", "user", "before")
    with pytest.raises(RuntimeError), dal.transaction():
        dal.create_chat_session("c_tx", uid, {})
        dal.add_message("c_tx", "user", "one")
        dal.add_message("c_kept", "user", "inside")
        dal.set_user_memory(uid, "context", "k", "v")
        dal.update_user(uid, {"name": "changed"})
        raise RuntimeError("abort")
    assert dal.get_chat_session("c_tx") is None
    assert [m["content"] for m in dal.get_chat_history("c_kept")] == ["before"]
    assert dal.get_message_count("c_kept") == 1
    assert dal.get_user_memory(uid, "context") == {}
    assert dal.get_user_by_id(uid)["name"] == "Ana"
    # The store is usable afterwards, and positions continue without a gap.
    dal.add_message("c_kept", "user", "after")
    assert [m["sequence_number"] for m in dal.get_chat_history("c_kept")] == [1, 2]


def test_explicit_begin_commit_rollback(dal):
    assert dal.begin_transaction() is True
    with pytest.raises(TransactionError):
        dal.begin_transaction()
    dal.create_chat_session("c_a", None, {})
    assert dal.rollback() is True
    assert dal.get_chat_session("c_a") is None
    assert dal.begin_transaction() is True
    dal.create_chat_session("c_b", None, {})
    assert dal.commit() is True
    assert dal.get_chat_session("c_b") is not None
    with pytest.raises(TransactionError):
        dal.commit()
    with pytest.raises(TransactionError):
        dal.rollback()


def test_failed_call_inside_transaction_keeps_it_usable(dal):
    with dal.transaction():
        dal.create_chat_session("c_a", None, {})
        with pytest.raises(ConflictError):
            dal.create_chat_session("c_a", None, {})
        dal.add_message("c_a", "user", "still fine")
    assert dal.get_message_count("c_a") == 1


# ---------------------------------------------------------------- recent chats, search
def test_list_chat_sessions_most_recent_first(dal):
    ana, bob = new_user(dal), new_user(dal, "user_bob")
    for chat in ("c_old", "c_mid", "c_new"):
        dal.create_chat_session(chat, ana, {})
    dal.create_chat_session("c_bob", bob, {})
    dal.add_message("c_mid", "user", "first")
    dal.add_message("c_old", "user", "second")
    dal.add_message("c_new", "user", "third")
    dal.add_message("c_mid", "assistant", "fourth")  # c_mid is active again
    dal.add_message("c_bob", "user", "not ana's")
    dal.create_chat_session("c_empty", ana, {})  # no message yet: listed first

    sessions = dal.list_chat_sessions(ana)
    assert [s["chat_id"] for s in sessions] == ["c_empty", "c_mid", "c_new", "c_old"]
    assert all(set(s) == SESSION_KEYS and s["user_id"] == ana for s in sessions)
    assert sessions[0]["id"] == dal.get_chat_session("c_empty")["id"]
    assert (sessions[1]["message_count"], sessions[3]["message_count"]) == (2, 1)
    assert [s["chat_id"] for s in dal.list_chat_sessions(ana, limit=2)] == ["c_empty", "c_mid"]
    assert [s["chat_id"] for s in dal.list_chat_sessions(bob)] == ["c_bob"]
    assert dal.list_chat_sessions("user_nobody") == []
    assert dal.list_chat_sessions("00000000-0000-0000-0000-000000000000") == []
    with pytest.raises(DataError, match="limit"):
        dal.list_chat_sessions(ana, limit=-1)


def test_search_messages_finds_every_word(dal):
    ana, bob = new_user(dal), new_user(dal, "user_bob")
    dal.create_chat_session("c_trip", ana, {})
    dal.create_chat_session("c_work", ana, {})
    dal.create_chat_session("c_bob", bob, {})
    dal.add_message("c_trip", "user", "Book a hotel in Lisbon for May")
    dal.add_message("c_trip", "assistant", "Lisbon is busy in May.")
    dal.add_message("c_work", "user", "Move the LISBON meeting; hotel budget is fixed")
    dal.add_message("c_work", "user", "nothing to see")
    dal.add_message("c_bob", "user", "lisbon hotel for bob")
    awkward = "hotel lisbon with a nul \x00 inside"
    dal.add_message("c_trip", "user", awkward)

    hits = dal.search_messages(ana, "lisbon hotel")
    # The words side by side first; the others as close (one word apart), newest first.
    assert [(m["chat_id"], m["sequence_number"]) for m in hits] == [
        ("c_trip", 3), ("c_work", 1), ("c_trip", 1)]
    assert all(set(m) == MESSAGE_KEYS | {"snippet"} for m in hits)
    assert hits[0]["content"] == awkward  # stored escaped, returned as written
    assert hits[0]["snippet"] == "**hotel** **lisbon** with a nul \x00 inside"
    assert hits[2]["id"] == dal.get_chat_history("c_trip")[0]["id"]
    assert [m["sequence_number"] for m in dal.search_messages(ana, "Hotel Lisbon", limit=1)] == [3]
    # Only the most recently active chat: c_trip got the last message. A new chat without
    # messages (first in list_chat_sessions) is not one of the chats searched.
    dal.create_chat_session("c_new_empty", ana, {})
    assert {m["chat_id"] for m in dal.search_messages(ana, "lisbon", recent_chats=1)} == {
        "c_trip"}
    assert dal.search_messages(ana, "lisbon", recent_chats=0) == []
    assert dal.search_messages(ana, "lisbon zebra") == []
    assert dal.search_messages(ana, "  ") == []
    assert dal.search_messages("user_nobody", "lisbon") == []
    assert [m["chat_id"] for m in dal.search_messages(bob, "bob")] == ["c_bob"]
    with pytest.raises(DataError, match="query"):
        dal.search_messages(ana, None)
    with pytest.raises(DataError, match="recent_chats"):
        dal.search_messages(ana, "lisbon", recent_chats=-1)


def test_search_ranks_by_cover_density_then_newest(dal):
    """The query's words often and close together rank first (ts_rank_cd); equal
    ranks newest first."""
    ana = new_user(dal)
    dal.create_chat_session("c_a", ana, {})
    filler = " ".join(f"word{i}" for i in range(10))
    spread = dal.add_message("c_a", "user", f"lisbon {filler} hotel")
    adjacent = dal.add_message("c_a", "user", "lisbon hotel")
    twice = dal.add_message("c_a", "assistant", "lisbon hotel, hotel lisbon")
    apart = dal.add_message("c_a", "user", "lisbon and then hotel")
    newest = dal.add_message("c_a", "user", "Hotel Lisbon")
    assert [m["id"] for m in dal.search_messages(ana, "lisbon hotel")] == [
        twice, newest, adjacent, apart, spread]
    assert [m["id"] for m in dal.search_messages(ana, "hotel lisbon", limit=2)] == [
        twice, newest]


def test_search_snippets_mark_the_query_words(dal):
    ana = new_user(dal)
    dal.create_chat_session("c_a", ana, {})
    short = "Book a hotel in Lisbon, for May!"
    before = " ".join(f"before{i}" for i in range(30))
    after = " ".join(f"after{i}" for i in range(30))
    long = f"{before} the hotel near Lisbon station {after}."
    dal.add_message("c_a", "user", short)
    dal.add_message("c_a", "assistant", long)
    hits = {m["content"]: m["snippet"] for m in dal.search_messages(ana, "lisbon hotel")}
    # A short message is its own snippet, every query word marked as written.
    assert hits[short] == "Book a **hotel** in **Lisbon**, for May!"
    # A long one is a piece of it around the words, no longer than MAX_WORDS words.
    piece = hits[long]
    assert "**hotel** near **Lisbon**" in piece
    assert piece.replace(ranking.MARK, "") in long
    assert len(piece.split()) <= ranking.MAX_WORDS


# ---------------------------------------------------------------- system logs
def test_write_log_returns_an_id_and_checks_its_input(dal):
    first = dal.write_log("ERROR", "payment failed", {"order": 42, "tags": ["a"]},
                          trace_id="t-1", ip_address="203.0.113.7", user_agent="curl/8",
                          request_uri="/api/chat")
    second = dal.write_log("info", "ok")
    assert isinstance(first, str) and first and first != second
    for bad, match in (
        ({"level": "x" * 21}, "level"),
        ({"level": ""}, "level"),
        ({"ip_address": "not-an-ip"}, "ip_address"),
        ({"trace_id": "t" * 256}, "trace_id"),
        ({"context": ["not", "an", "object"]}, "context"),
        ({"context": {"when": datetime.now(UTC)}}, "context"),
        ({"context": {"_donnadb_legacy": {}}}, "reserved"),
        ({"message": "nul \x00"}, "NUL"),
        ({"context": {"k": "lone \ud800"}}, "NUL"),
        ({"message": None}, "message"),
    ):
        args = {"level": "error", "message": "m", **bad}
        level, message = args.pop("level"), args.pop("message")
        with pytest.raises(DataError, match=match):
            dal.write_log(level, message, **args)


def log_stores(dal) -> list:
    """Where ``dal`` keeps log entries: dual-write and mixed stores by the logs' phase."""
    if not isinstance(dal, DualWriteDataAccess):
        return [dal]
    return {"file": [dal.files], "dual": [dal.files, dal.pg],
            "postgresql": [dal.pg]}[dal.phases["logs"]]


def logged(dal, log_id: str) -> list[tuple[str, str]]:
    """(level, message) of entry ``log_id`` in each store behind ``dal``, read back from
    where that store keeps it: a ``logs/*.jsonl`` line, a ``system_logs`` row."""
    stores = log_stores(dal)
    found = []
    for store in stores:
        if isinstance(store, FileDataAccess):
            for path in sorted((store.data_dir / "logs").glob("*.jsonl")):
                for n in range(1, len(path.read_bytes().splitlines()) + 1):
                    if legacy_log_id(f"{path.name}:{n}") == log_id:
                        line = store.read_log(f"{path.name}:{n}")
                        found.append((line["level"], line["message"]))
        else:
            with store._pool.connection() as conn:
                row = conn.execute("SELECT level, message FROM system_logs WHERE id = %s",
                                   [log_id]).fetchone()
            if row is not None:
                found.append((row["level"], row["message"]))
    return found


def test_write_log_outlives_a_rollback(dal):
    with pytest.raises(RuntimeError), dal.transaction():
        dal.create_chat_session("c_tx", None, {})
        log_id = dal.write_log("ERROR", "what went wrong")
        raise RuntimeError("boom")
    assert dal.get_chat_session("c_tx") is None
    copies = len(log_stores(dal))
    assert logged(dal, log_id) == [("error", "what went wrong")] * copies
    later = dal.write_log("info", "still writable")
    assert logged(dal, later) == [("info", "still writable")] * copies


# ---------------------------------------------------------------- health
def test_health_check(dal):
    assert isinstance(dal, DataAccess)
    health = dal.health_check()
    assert health["status"] == "ok", health
    assert health["store"] in ("file", "postgresql", "dual", "mixed")

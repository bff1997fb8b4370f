"""Triggers: updated_at on UPDATE; chat_sessions.message_count/last_message_at follow messages."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from donnadb import db
from donnadb.config import load_settings

OLD = datetime(2020, 1, 1, tzinfo=UTC)
SESSION = "SELECT message_count, last_message_at FROM chat_sessions WHERE id = %s"
ADD_MESSAGE = """
INSERT INTO messages (chat_session_id, role, content, sequence_number, created_at)
VALUES (%s, 'user', 'hello', %s, %s) RETURNING id
"""


@pytest.fixture
def app_conn(migrated_db):
    with db.connection("app", settings=load_settings(), dbname=migrated_db, autocommit=True) as c:
        yield c


def _user(conn) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO users (clerk_id, updated_at) VALUES (%s, %s) RETURNING id",
        (f"user_{uuid.uuid4().hex}", OLD),
    ).fetchone()[0]


def _session(conn, user_id=None) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO chat_sessions (chat_id, user_id, updated_at) VALUES (%s, %s, %s)"
        " RETURNING id",
        (f"chat_{uuid.uuid4().hex}", user_id, OLD),
    ).fetchone()[0]


@pytest.mark.parametrize(
    ("table", "change"),
    [("users", "name = 'Ana'"), ("chat_sessions", "title = 'Lisbon'"),
     ("user_memory", "value = '\"v2\"'")],
)
def test_updated_at_is_bumped_on_update(app_conn, table, change):
    user = _user(app_conn)
    row = {
        "users": user,
        "chat_sessions": _session(app_conn, user),
        "user_memory": app_conn.execute(
            "INSERT INTO user_memory (user_id, memory_type, key, value, updated_at)"
            " VALUES (%s, 'context', 'k', '\"v1\"', %s) RETURNING id", (user, OLD)
        ).fetchone()[0],
    }[table]
    select = f"SELECT updated_at, created_at FROM {table} WHERE id = %s"  # noqa: S608 - fixed names
    assert app_conn.execute(select, (row,)).fetchone()[0] == OLD
    app_conn.execute(f"UPDATE {table} SET {change} WHERE id = %s", (row,))
    updated_at, created_at = app_conn.execute(select, (row,)).fetchone()
    assert updated_at > OLD and updated_at >= created_at
    # A caller setting updated_at itself (the legacy import) keeps its value.
    app_conn.execute(f"UPDATE {table} SET updated_at = %s WHERE id = %s", (OLD, row))
    assert app_conn.execute(select, (row,)).fetchone()[0] == OLD


def test_message_count_and_last_message_at_follow_inserts_and_deletes(app_conn):
    sid = _session(app_conn)
    assert app_conn.execute(SESSION, (sid,)).fetchone() == (0, None)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # One multi-row INSERT (the statement-level trigger sees 3 rows) then single rows.
    app_conn.execute(
        "INSERT INTO messages (chat_session_id, role, content, sequence_number, created_at)"
        " SELECT %s, 'assistant', 'batch', g, %s + g * interval '1 minute'"
        " FROM generate_series(1, 3) g", (sid, base))
    assert app_conn.execute(SESSION, (sid,)).fetchone() == (3, base + timedelta(minutes=3))
    newest = app_conn.execute(ADD_MESSAGE, (sid, 4, base + timedelta(hours=1))).fetchone()[0]
    # An older message arriving late does not move last_message_at back.
    app_conn.execute(ADD_MESSAGE, (sid, 5, base))
    assert app_conn.execute(SESSION, (sid,)).fetchone() == (5, base + timedelta(hours=1))
    app_conn.execute("DELETE FROM messages WHERE id = %s", (newest,))
    assert app_conn.execute(SESSION, (sid,)).fetchone() == (4, base + timedelta(minutes=3))
    app_conn.execute("DELETE FROM messages WHERE chat_session_id = %s", (sid,))
    assert app_conn.execute(SESSION, (sid,)).fetchone() == (0, None)


def test_moving_a_message_recounts_both_sessions(app_conn):
    a, b = _session(app_conn), _session(app_conn)
    t = datetime(2026, 2, 1, tzinfo=UTC)
    mid = app_conn.execute(ADD_MESSAGE, (a, 1, t)).fetchone()[0]
    app_conn.execute(ADD_MESSAGE, (a, 2, t - timedelta(days=1)))
    app_conn.execute("UPDATE messages SET abuse_flagged = true WHERE id = %s", (mid,))
    assert app_conn.execute(SESSION, (a,)).fetchone() == (2, t)
    app_conn.execute("UPDATE messages SET chat_session_id = %s WHERE id = %s", (b, mid))
    assert app_conn.execute(SESSION, (a,)).fetchone() == (1, t - timedelta(days=1))
    assert app_conn.execute(SESSION, (b,)).fetchone() == (1, t)


def test_deleting_a_session_cascades_to_its_messages(app_conn):
    sid = _session(app_conn)
    app_conn.execute(ADD_MESSAGE, (sid, 1, datetime.now(UTC)))
    app_conn.execute("DELETE FROM chat_sessions WHERE id = %s", (sid,))
    assert app_conn.execute(
        "SELECT count(*) FROM messages WHERE chat_session_id = %s", (sid,)).fetchone()[0] == 0


def test_concurrent_writers_never_lose_a_count(migrated_db, app_conn):
    sid = _session(app_conn)
    settings = load_settings()
    per_thread, threads = 25, 4
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            with db.connection("app", settings=settings, dbname=migrated_db,
                               autocommit=True) as conn:
                start.wait()
                for i in range(per_thread):
                    conn.execute(ADD_MESSAGE, (sid, offset + i, datetime.now(UTC)))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    count = app_conn.execute(SESSION, (sid,)).fetchone()[0]
    assert count == per_thread * threads == app_conn.execute(
        "SELECT count(*) FROM messages WHERE chat_session_id = %s", (sid,)).fetchone()[0]


def test_sequence_numbers_are_unique_per_chat_and_roles_checked(app_conn):
    sid = _session(app_conn)
    app_conn.execute(ADD_MESSAGE, (sid, 1, datetime.now(UTC)))
    with pytest.raises(psycopg.errors.UniqueViolation, match="idx_messages_sequence"):
        app_conn.execute(ADD_MESSAGE, (sid, 1, datetime.now(UTC)))
    with pytest.raises(psycopg.errors.CheckViolation, match="messages_role_check"):
        app_conn.execute(
            "INSERT INTO messages (chat_session_id, role, content, sequence_number)"
            " VALUES (%s, 'bot', 'x', 2)", (sid,))
    assert app_conn.execute(SESSION, (sid,)).fetchone()[0] == 1

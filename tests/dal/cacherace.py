"""The processes of the cache's staleness test (tests/dal/test_cache.py): writers that
each own a chat and a memory key and count up, readers that read them through the
cache. Each returns what it did with CLOCK_MONOTONIC times, which all processes of the
machine share."""

from __future__ import annotations

import time

from donnadb.dal import PostgresDataAccess


def run(role: str, n: int, settings, dbname: str, uid: str, chats: list[str],
        start_at: float, seconds: float) -> dict:
    dal = PostgresDataAccess(settings, dbname=dbname, min_size=1)
    try:
        while time.monotonic() < start_at:
            time.sleep(0.001)
        work = _write if role == "writer" else _read
        records = work(dal, n, uid, chats, start_at + seconds)
        return {"role": role, "n": n, "records": records,
                "cache": dal.health_check()["cache"]}
    finally:
        dal.close()


def _write(dal, n, uid, chats, end) -> list[tuple]:
    """(kind, writer, value, returned_at): after ``returned_at`` the value is committed."""
    done, i = [], 0
    while time.monotonic() < end:
        i += 1
        dal.add_message(chats[n], "user", str(i))
        done.append(("chat", n, i, time.monotonic_ns()))
        dal.set_user_memory(uid, "context", f"w{n}", i)
        done.append(("memory", n, i, time.monotonic_ns()))
        time.sleep(0.003)  # leave the readers some hits between two writes
    return done


def _read(dal, n, uid, chats, end) -> list[tuple]:
    """(kind, writer, value seen, started_at)."""
    seen = []
    while time.monotonic() < end:
        for w, chat in enumerate(chats):
            started = time.monotonic_ns()
            page = dal.get_chat_history(chat, limit=5)
            seen.append(("chat", w, max((int(m["content"]) for m in page), default=0),
                         started))
            started = time.monotonic_ns()
            session = dal.get_chat_session(chat)
            seen.append(("chat", w, session["message_count"], started))
        started = time.monotonic_ns()
        memory = dal.get_user_memory(uid, "context")
        seen += [("memory", w, memory.get(f"w{w}", 0), started) for w in range(len(chats))]
    return seen

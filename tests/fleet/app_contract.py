"""The DAL's contract, in brief, run ON an application host by its own user.

Copied to the app host and run with the deployed venv's python as the application's
OS user (tests/fleet/test_app.py): it reads only the host's settings file and that
user's passfile, goes through PgBouncer on the database host, and prints one JSON
document. An assertion failure exits non-zero with its message. ``argv[1]`` is a
marker the messages carry (the wire tests look for it).
"""

from __future__ import annotations

import json
import sys
import uuid

from donnadb.config import load_settings
from donnadb.dal.postgres import PostgresDataAccess


def main(marker: str) -> dict:
    settings = load_settings(data_storage_type="postgresql")
    dal = PostgresDataAccess(settings)
    try:
        clerk = f"fleet-{uuid.uuid4().hex[:12]}"
        user_id = dal.create_user({"clerk_id": clerk, "email": f"{clerk}@example.org",
                                   "name": "Fleet User"})
        assert dal.get_user_by_clerk_id(clerk)["id"] == user_id
        chat = f"chat-{uuid.uuid4().hex[:12]}"
        dal.create_chat_session(chat, user_id, {"source": "fleet"}, title="fleet")
        for n in range(1, 6):
            dal.add_message(chat, "user" if n % 2 else "assistant", f"{marker} message {n}")
        history = dal.get_chat_history(chat, limit=3)
        assert [m["content"] for m in history] == [f"{marker} message {n}" for n in (3, 4, 5)]
        # Read again: from the cache where the host's settings turn it on.
        assert dal.get_chat_history(chat, limit=3) == history
        assert dal.get_message_count(chat) == 5
        assert [s["chat_id"] for s in dal.list_chat_sessions(user_id)] == [chat]
        found = dal.search_messages(user_id, marker)
        assert len(found) == 5, found
        assert dal.set_user_memory(user_id, "preferences", "tone", {"value": marker})
        assert dal.get_user_memory(user_id, "preferences") == {"tone": {"value": marker}}
        dal.begin_transaction()
        dal.add_message(chat, "user", "rolled back")
        dal.rollback()
        assert dal.get_message_count(chat) == 5
        health = dal.health_check()
        with dal._conn() as conn:
            pgconn = conn.pgconn
            wire = {"ssl_in_use": bool(pgconn.ssl_in_use), "port": int(pgconn.port.decode()),
                    "host": pgconn.host.decode()}
        return {"user_id": str(user_id), "chat": chat, "health": health.get("status"),
                "wire": wire, "cache": health.get("cache")}
    finally:
        dal.close()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), default=str))

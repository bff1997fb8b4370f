"""Support and GDPR commands: `users inspect|forget`, `chats inspect`.

Inspection reads through the readonly role and shows what support needs (sessions,
message counts, memory *keys*), never message contents or memory values. A user's
e-mail and name stored sealed (field encryption) are opened with the key file when
CRYPTO_KEK_FILE names a usable one; otherwise the result says they are sealed, and why. Erasure runs
as the application role in ONE transaction and records itself in system_logs (the
record holds the user's id and the counts, no personal data) and in the ``erasures``
ledger (the id and the time). The application role may not delete from system_logs:
the user's log rows go through ``forget_user_logs()`` (migration 0005), which never
deletes an erasure record. The user's data key (field encryption, kept in the users
row) goes with the row: whatever copy of their sealed values a backup holds, nothing can
open it once the key is gone from every database restored from it, which
:func:`reapply_erasures` sees to for a restored backup.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from donnadb import db
from donnadb.config import Settings
from donnadb.crypto import keycache
from donnadb.errors import NotFound
from donnadb.ops import eventlog

USER_BY_ID_SQL = """
SELECT id, clerk_id, email, name, status, created_at, updated_at, last_active_at
FROM users WHERE id = %(id)s
"""
USER_BY_CLERK_SQL = """
SELECT id, clerk_id, email, name, status, created_at, updated_at, last_active_at
FROM users WHERE clerk_id = %(id)s
"""
SESSIONS_SQL = """
SELECT chat_id, title, profile, status, message_count, created_at, last_message_at
FROM chat_sessions WHERE user_id = %(id)s
ORDER BY last_message_at DESC NULLS LAST, created_at DESC
LIMIT %(limit)s
"""
SESSION_TOTALS_SQL = """
SELECT count(*)::int AS sessions, coalesce(sum(message_count), 0)::bigint AS messages
FROM chat_sessions WHERE user_id = %(id)s
"""
# The sealed e-mail and name, with the user's wrapped data key to open them.
SEALED_FIELDS_SQL = """
SELECT email_sealed, name_sealed, kek_id, wrapped_key FROM users WHERE id = %(id)s
"""
MEMORY_SQL = """
SELECT memory_type, key, updated_at, expires_at
FROM user_memory WHERE user_id = %(id)s ORDER BY memory_type, key
"""
CHAT_BY_CHAT_ID_SQL = """
SELECT id, chat_id, user_id, title, profile, status, message_count,
       created_at, updated_at, last_message_at
FROM chat_sessions WHERE chat_id = %(id)s
"""
CHAT_BY_ID_SQL = CHAT_BY_CHAT_ID_SQL.replace("WHERE chat_id =", "WHERE id =")
CHAT_MESSAGES_SQL = """
SELECT role, count(*)::int AS messages, coalesce(sum(token_count), 0)::bigint AS tokens,
       count(*) FILTER (WHERE abuse_flagged)::int AS flagged,
       min(created_at) AS first_at, max(created_at) AS last_at
FROM messages WHERE chat_session_id = %(id)s GROUP BY role ORDER BY role
"""
CHAT_RECENT_SQL = """
SELECT sequence_number, role, created_at, length(content) AS chars, token_count, abuse_flagged
FROM messages WHERE chat_session_id = %(id)s
ORDER BY sequence_number DESC LIMIT %(limit)s
"""

LOCK_USER_SQL = "SELECT id FROM users WHERE id = %(id)s FOR UPDATE"
COUNT_MEMORY_SQL = "SELECT count(*) FROM user_memory WHERE user_id = %(id)s"
DELETE_SESSIONS_SQL = "DELETE FROM chat_sessions WHERE user_id = %(id)s RETURNING chat_id"
DELETE_MEMORY_SQL = "DELETE FROM user_memory WHERE user_id = %(id)s"
# Application logs that name the user in their context go too (only the erasure records
# stay): through the owner's function, the application role has no DELETE on system_logs.
DELETE_LOGS_SQL = "SELECT public.forget_user_logs(%(id)s) AS deleted"
#: The reserved context key that marks an erasure record (forget_user_logs keeps them).
ERASURE_KEY = "_donnadb_erasure"
# The user's data key goes with the row; returned, so that the erasure counts it and
# this process's key caches refuse the wrapped key from then on. A database restored
# from a backup older than migration 0014 keeps it in a user_keys row (OLD_DELETE_KEY).
DELETE_USER_SQL = "DELETE FROM users WHERE id = %(id)s RETURNING *"
OLD_KEY_TABLE_SQL = "SELECT to_regclass('public.user_keys') IS NOT NULL AS old"
OLD_DELETE_KEY_SQL = "DELETE FROM user_keys WHERE user_id = %(id)s RETURNING wrapped_key"
RECORD_ERASURE_SQL = """
INSERT INTO erasures (user_id, erased_at) VALUES (%(id)s, COALESCE(%(at)s, now()))
ON CONFLICT (user_id) DO NOTHING
"""
LEDGER_TABLE_SQL = "SELECT to_regclass('public.erasures') AS ledger"
LEDGER_SQL = "SELECT user_id::text AS id, erased_at FROM erasures ORDER BY erased_at, user_id"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _find_user(cur: psycopg.Cursor, ident: str) -> dict[str, Any]:
    row = None
    if _is_uuid(ident):
        row = cur.execute(USER_BY_ID_SQL, {"id": ident}).fetchone()
    if row is None:
        row = cur.execute(USER_BY_CLERK_SQL, {"id": ident}).fetchone()
    if row is None:
        raise NotFound(f"no user with id or clerk_id {ident!r}")
    return row


def inspect_user(settings: Settings, ident: str, *, limit: int = 20,
                 dbname: str | None = None) -> dict[str, Any]:
    """A user (by id or clerk_id) with sessions, message counts and memory keys.

    :raises NotFound: no such user.
    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        user = _find_user(cur, ident)
        args = {"id": user["id"], "limit": limit}
        totals = cur.execute(SESSION_TOTALS_SQL, args).fetchone()
        sessions = cur.execute(SESSIONS_SQL, args).fetchall()
        memory = cur.execute(MEMORY_SQL, args).fetchall()
        sealed = cur.execute(SEALED_FIELDS_SQL, args).fetchone()
    user.update(_open_sealed_fields(settings, str(user["id"]), sealed))
    return {"user": user, **totals, "recent_sessions": sessions, "memory_keys": memory}


def _open_sealed_fields(settings: Settings, user_id: str, row: dict[str, Any]
                        ) -> dict[str, Any]:
    """The user's sealed e-mail and name opened with the key file; ``sealed`` lists the
    ones that stay sealed and ``sealed_reason`` says why (no key file, a key file that
    does not open them, an erased data key)."""
    stored = {f: row[f"{f}_sealed"] for f in ("email", "name") if row[f"{f}_sealed"]}
    if not stored:
        return {"sealed": [], "sealed_reason": None}
    if settings.crypto_kek_file is None:
        return {"sealed": list(stored),
                "sealed_reason": "no key file: set CRYPTO_KEK_FILE to open them"}
    from donnadb.crypto.errors import DecryptError, KeyFileError
    from donnadb.dal.sealed import Sealer  # only for sealed rows: as the DAL does

    try:
        dk = Sealer(settings).key_of(user_id, row["kek_id"], row["wrapped_key"])
        opened = {f: dk.open_text(f, value) for f, value in stored.items()}
    except (KeyFileError, DecryptError) as exc:
        # Support still sees the rest of the user; the reason names the fix.
        return {"sealed": list(stored), "sealed_reason": str(exc)}
    return {**opened, "sealed": [], "sealed_reason": None}


def inspect_chat(settings: Settings, ident: str, *, limit: int = 10,
                 dbname: str | None = None) -> dict[str, Any]:
    """A chat session (by chat_id or id): owner, counts by role, recent message metadata.

    :raises NotFound: no such chat.
    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        chat = cur.execute(CHAT_BY_CHAT_ID_SQL, {"id": ident}).fetchone()
        if chat is None and _is_uuid(ident):
            chat = cur.execute(CHAT_BY_ID_SQL, {"id": ident}).fetchone()
        if chat is None:
            raise NotFound(f"no chat with chat_id or id {ident!r}")
        args = {"id": chat["id"], "limit": limit}
        by_role = cur.execute(CHAT_MESSAGES_SQL, args).fetchall()
        recent = cur.execute(CHAT_RECENT_SQL, args).fetchall()
    return {"chat": chat, "by_role": by_role, "recent_messages": recent}


def forget_user(settings: Settings, ident: str, *, dbname: str | None = None,
                erased: Callable[[list[tuple[str, str]]], object] | None = None,
                ) -> dict[str, Any]:
    """Erase a user and everything that belongs to them, in one transaction, with a record.

    Sessions are deleted explicitly (the schema would only null their user_id) and their
    messages go by cascade; memory and logs naming the user go too. After the commit
    ``erased`` gets what changed as (kind, id) pairs (``("user", id)``, ``("chat",
    chat_id)``): the caller drops the DAL's cached copies of them. The user's data key
    leaves this process's key caches (donnadb/crypto/keycache.py).

    :raises NotFound: no such user (nothing changed).
    :raises DatabaseError: the database cannot be reached (nothing changed).
    """
    with db.connection("app", settings=settings, dbname=dbname) as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        user = _find_user(cur, ident)
        result, chats, wrapped = _erase(cur, str(user["id"]))
        eventlog.record_event(conn, "notice", "user erased (GDPR)", {**result, ERASURE_KEY: True})
    keycache.forget([result["user_id"]], wrapped)
    if erased is not None:
        erased([("user", result["user_id"]), *(("chat", c) for c in chats)])
    return result


def _erase(cur: psycopg.Cursor, user_id: str, at: Any = None,
           ) -> tuple[dict[str, Any], list[str], list[bytes]]:
    """Delete a user (who exists) and all that is theirs, key included, and add them to
    the ledger: (the counts, their chat ids, their wrapped data keys). In the caller's
    transaction."""
    args = {"id": user_id, "at": at}
    cur.execute(LOCK_USER_SQL, args)
    totals = cur.execute(SESSION_TOTALS_SQL, args).fetchone()
    memory = cur.execute(COUNT_MEMORY_SQL, args).fetchone()["count"]
    chats = [r["chat_id"] for r in cur.execute(DELETE_SESSIONS_SQL, args).fetchall()]
    cur.execute(DELETE_MEMORY_SQL, args)
    logs = cur.execute(DELETE_LOGS_SQL, args).fetchone()["deleted"]
    wrapped = []
    if cur.execute(OLD_KEY_TABLE_SQL).fetchone()["old"]:
        wrapped = [r["wrapped_key"] for r in cur.execute(OLD_DELETE_KEY_SQL, args)]
    row = cur.execute(DELETE_USER_SQL, args).fetchone()
    if row.get("wrapped_key") is not None:
        wrapped.append(row["wrapped_key"])
    cur.execute(RECORD_ERASURE_SQL, args)
    return {"user_id": user_id, "sessions": len(chats), "messages": totals["messages"],
            "memory": memory, "logs": logs, "data_key": len(wrapped)}, chats, wrapped


def reapply_erasures(settings: Settings, *, ledger_db: str, dbname: str) -> dict[str, Any]:
    """Erase again, in ``dbname`` (a database restored from a backup), every user that
    the ledger of ``ledger_db`` (the database it replaces, or a copy of its ledger) says
    was erased, and complete ``dbname``'s ledger: :func:`read_ledger`, then
    :func:`apply_ledger`. Rerunning it changes nothing more.

    :raises NotFound: ``ledger_db`` has no erasures ledger (nothing changed).
    :raises DatabaseError: either database cannot be reached.
    """
    ledger = read_ledger(settings, ledger_db)
    if ledger is None:
        raise NotFound(f"database {ledger_db} has no erasures ledger; --ledger-db names the "
                       "database the restore replaced, or a copy of its ledger")
    return {"ledger": len(ledger), "erased_again": apply_ledger(settings, ledger, dbname)}


def read_ledger(settings: Settings, dbname: str, *, role: str = "readonly",
                ) -> list[dict[str, Any]] | None:
    """The erasures ledger of ``dbname`` (``{"id", "erased_at"}`` oldest first), or None
    when it has no ledger table (not a donnadb database, or older than the ledger).
    ``role``: the role kind to read it as (the backup jobs hold only theirs).

    :raises DatabaseError: the database cannot be reached.
    """
    with db.connection(role, settings=settings, dbname=dbname,
                       autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        if cur.execute(LEDGER_TABLE_SQL).fetchone()["ledger"] is None:
            return None
        return cur.execute(LEDGER_SQL).fetchall()


def apply_ledger(settings: Settings, ledger: list[dict[str, Any]], dbname: str) -> list[str]:
    """Erase in ``dbname`` every user ``ledger`` (:func:`read_ledger`) names, one
    transaction per user, each recorded in system_logs like `users forget`; users
    already gone are only added to ``dbname``'s ledger. Returns the ids erased again.

    :raises DatabaseError: the database cannot be reached (users done so far stay done).
    """
    erased = []
    with db.connection("app", settings=settings, dbname=dbname) as conn:
        for entry in ledger:
            with conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                if cur.execute(USER_BY_ID_SQL, entry).fetchone() is None:
                    cur.execute(RECORD_ERASURE_SQL, {**entry, "at": entry["erased_at"]})
                    continue
                result, _, wrapped = _erase(cur, entry["id"], entry["erased_at"])
                eventlog.record_event(conn, "notice", "user erased again (restored backup)",
                                      {**result, ERASURE_KEY: True})
            keycache.forget([entry["id"]], wrapped)
            erased.append(entry["id"])
    return erased

"""Comparing a legacy DATA_DIR with the database, chat by chat and user by user.

The files are read through the same normalisation as the import (so a quarantined file
is expected to be missing) and every row is reduced to a canonical text on both sides:
per chat a count and a SHA-256 of the chat row and its messages in order (plus the
session's message_count/last_message_at against the messages), per user the user row,
and per memory entry its own checksum; logs per file and line.

``updated_at`` (users, chat sessions) and a memory entry's ``created_at``/``updated_at``
are not compared: the schema's trigger stamps ``updated_at`` at every write, so a
dual-write copy of a file (or a message added to its chat) gives the row the time of
the copy, not the file's; and a memory file holds one time for all its entries, which
PostgreSQL keeps per entry. What they record is when, not what: the content is compared.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from donnadb.crypto.errors import DecryptError
from donnadb.dal.sealed import Sealer
from donnadb.errors import UsageError
from donnadb.legacy.model import ChatRow, MessageRow, UserRow
from donnadb.legacy.normalise import LEGACY_KEY, canon, iso
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.sealing import Opener

DB_CHATS = """
SELECT c.chat_id, u.clerk_id, c.title, c.profile, c.metadata, c.created_at, c.status,
       c.message_count, c.last_message_at
  FROM chat_sessions AS c LEFT JOIN users AS u ON u.id = c.user_id
"""
DB_MESSAGES = """
SELECT c.chat_id, m.id, m.sequence_number, m.role, m.content, m.metadata, m.created_at,
       m.token_count, m.abuse_flagged
  FROM messages AS m JOIN chat_sessions AS c ON c.id = m.chat_session_id
 ORDER BY c.chat_id COLLATE "C", m.sequence_number
"""
# With the user's wrapped data key: sealed values are opened before they are compared.
DB_USERS = """
SELECT u.id, u.clerk_id, u.email, u.name, u.profile, u.preferences, u.created_at, u.status,
       u.last_active_at, u.email_sealed, u.name_sealed, u.kek_id, u.wrapped_key
  FROM users AS u
"""
DB_MEMORY = """
SELECT u.id, u.clerk_id, um.memory_type, um.key, um.value, um.expires_at, u.kek_id,
       u.wrapped_key
  FROM user_memory AS um JOIN users AS u ON u.id = um.user_id
 ORDER BY u.id
"""
DB_LOGS = """
SELECT context -> '_donnadb_legacy' ->> 'source', level, message, context, trace_id,
       host(ip_address), user_agent, request_uri, created_at
  FROM system_logs WHERE context ? '_donnadb_legacy'
"""
#: Per-table content checksum in primary-key order (tests compare two databases).
TABLE_CHECKSUM = """
SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {table} AS t
"""
#: In place of a digest: a row whose sealed values do not open (reported as such).
UNREADABLE = "unreadable"
TABLE_ORDER = {"users": "id", "chat_sessions": "id", "messages": "id", "user_memory": "id",
               "system_logs": "id, created_at"}


def _h(*parts: Any) -> str:
    return hashlib.sha256(canon([iso(p) if hasattr(p, "tzinfo") else p for p in parts])
                          .encode()).hexdigest()


def message_digest(m: MessageRow) -> str:
    return _h(str(m.id), m.sequence_number, m.role, m.content, m.metadata, m.created_at,
              m.token_count, m.abuse_flagged)


def chat_digest(c: ChatRow) -> str:
    return _h(c.chat_id, c.clerk_id, c.title, c.profile, c.metadata, c.created_at, c.status)


def user_digest(u: UserRow) -> str:
    """Without ``created_at``: see :func:`_compare_users`."""
    return _h(u.clerk_id, u.email, u.name, u.profile, u.preferences, u.status, u.last_active_at)


@dataclass
class VerifyResult:
    """``ok`` is False when any difference was found (donnactl exits 1)."""

    compared: dict[str, int] = field(default_factory=dict)
    differences: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    #: With CRYPTO_ENABLED, users and memory rows holding a personal value in clear
    #: (compared as they are; the DAL refuses them until `keys seal-existing`).
    in_clear: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def diff(self, kind: str, key: str, detail: str) -> None:
        self.differences.append({"kind": kind, "key": key, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "compared": self.compared, "differences": self.differences,
                "quarantined": self.quarantined, "stored_in_clear": self.in_clear}


def _db_chats(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    chats: dict[str, dict[str, Any]] = {}
    for chat_id, clerk, title, profile, meta, created, status, count, last in \
            conn.execute(DB_CHATS):
        chats[chat_id] = {"digest": _h(chat_id, clerk, title, profile, meta, created, status),
                          "message_count": count, "last_message_at": last,
                          "messages": 0, "newest": None, "hash": hashlib.sha256()}
    with conn.cursor(name="verify_messages") as cur:
        cur.itersize = 5000
        cur.execute(DB_MESSAGES)
        for chat_id, message_id, seq, role, content, meta, created, tokens, flagged in cur:
            entry = chats[chat_id]
            entry["messages"] += 1
            entry["newest"] = created if entry["newest"] is None else max(entry["newest"], created)
            entry["hash"].update(_h(str(message_id), seq, role, content, meta, created, tokens,
                                    flagged).encode())
    return chats


def _compare_chats(reader: LegacyReader, conn: psycopg.Connection, result: VerifyResult,
                   orphans: dict[str, Any]) -> None:
    db = _db_chats(conn)
    n = 0
    for chat in reader.chats():
        n += 1
        if chat.clerk_id and chat.clerk_id not in orphans:
            orphans[chat.clerk_id] = chat.created_at
        entry = db.pop(chat.chat_id, None)
        if entry is None:
            result.diff("chat_missing", chat.chat_id, f"{chat.source_path} is not in the database")
            continue
        if entry["digest"] != chat_digest(chat):
            result.diff("chat_differs", chat.chat_id, "session row differs from the file")
        expected = hashlib.sha256()
        for m in chat.messages:
            expected.update(message_digest(m).encode())
        if entry["messages"] != len(chat.messages):
            result.diff("message_count", chat.chat_id,
                        f"file has {len(chat.messages)} messages, database {entry['messages']}")
        elif entry["hash"].hexdigest() != expected.hexdigest():
            result.diff("messages_differ", chat.chat_id, "message content checksum differs")
        if entry["message_count"] != entry["messages"] or \
                entry["last_message_at"] != entry["newest"]:
            result.diff("session_counters", chat.chat_id,
                        f"message_count={entry['message_count']} but {entry['messages']} rows")
    for chat_id in sorted(db):
        result.diff("chat_extra", chat_id, "in the database but in no legacy file")
    result.compared["chats"] = n


def _compare_users(reader: LegacyReader, conn: psycopg.Connection, result: VerifyResult,
                   orphans: dict[str, Any], opener: Opener) -> None:
    # A memory file without created_at gives the time of its last write instead (the
    # import's rule), which each write through the DAL moves on: the row's may be earlier.
    db_users: dict[str, tuple[str, Any]] = {}
    for uid, clerk, email, name, profile, prefs, created, status, last_active, \
            email_sealed, name_sealed, kek_id, wrapped in conn.execute(DB_USERS):
        ukey = clerk or str(uid)
        try:
            user = opener.user(uid, email, name, email_sealed, name_sealed, profile, prefs,
                               kek_id, wrapped)
        except DecryptError as exc:
            result.diff("user_unreadable", ukey, str(exc))
            db_users[ukey] = (UNREADABLE, created)
            continue
        result.in_clear += user.in_clear
        db_users[ukey] = (_h(clerk, user.email, user.name, user.profile, user.preferences,
                             status, last_active), created)
    db_memory: dict[tuple[str, str, str], str] = {}
    for uid, clerk, mtype, key, value, expires, kek_id, wrapped in conn.execute(DB_MEMORY):
        mkey = (clerk or str(uid), mtype, key)
        try:
            value, in_clear = opener.memory(uid, mtype, key, value, kek_id, wrapped)
        except DecryptError as exc:
            result.diff("memory_unreadable", "/".join(mkey), str(exc))
            db_memory[mkey] = UNREADABLE
            continue
        result.in_clear += in_clear
        db_memory[mkey] = _h(value, expires)
    users = memory = 0
    for user in reader.users():
        users += 1
        ukey = user.clerk_id or str(user.id)
        got = db_users.pop(ukey, None)
        if got is None:
            result.diff("user_missing", ukey, f"{', '.join(user.source_paths)} not imported")
        elif got[0] == UNREADABLE:
            pass  # reported as such
        elif got[0] != user_digest(user) or got[1] > user.created_at:
            result.diff("user_differs", ukey, "user row differs from the memory file(s)")
        for m in user.memory:
            memory += 1
            got = db_memory.pop((ukey, m.memory_type, m.key), None)
            want = _h(m.value, m.expires_at)
            if got is None:
                result.diff("memory_missing", f"{ukey}/{m.memory_type}/{m.key}", "not imported")
            elif got != want and got != UNREADABLE:
                result.diff("memory_differs", f"{ukey}/{m.memory_type}/{m.key}",
                            "value or expiry differs")
    for clerk, first_created in orphans.items():
        if clerk in db_users:
            got = db_users.pop(clerk)
            want = (_h(clerk, None, None, {}, {}, "active", None), first_created)
            if got != want:
                result.diff("user_differs", clerk, "user created from chats differs")
        elif not any(d["key"] == clerk for d in result.differences):
            result.diff("user_missing", clerk, "owner of chats, not in the database")
    for ukey in sorted(db_users):
        result.diff("user_extra", ukey, "in the database but in no legacy file")
    for mkey in sorted(db_memory):
        result.diff("memory_extra", "/".join(mkey), "in the database but in no memory file")
    result.compared["users"] = users + len(orphans)
    result.compared["memory_entries"] = memory


def _compare_logs(reader: LegacyReader, conn: psycopg.Connection, result: VerifyResult) -> None:
    db_logs = {}
    for source, level, message, context, trace, ip, ua, uri, created in conn.execute(DB_LOGS):
        db_logs[source] = _h(level, message, context, trace, _ip(ip), ua, uri, created)
    n = 0
    for row in reader.logs():
        n += 1
        got = db_logs.pop(row.source, None)
        want = _h(row.level, row.message, row.context, row.trace_id, _ip(row.ip_address),
                  row.user_agent, row.request_uri, row.created_at)
        if got is None:
            result.diff("log_missing", f"logs/{row.source}", "not imported")
        elif got != want:
            result.diff("log_differs", f"logs/{row.source}", "log row differs")
    for source in sorted(db_logs):
        result.diff("log_extra", f"logs/{source}", "imported from a line no longer in logs/")
    result.compared["logs"] = n


def _ip(value: str | None) -> str | None:
    # PostgreSQL and Python spell some addresses differently (::ffff:10.0.0.1).
    return str(ipaddress.ip_address(value)) if value else None


#: The differences each entity owns, by the start of their kind.
ENTITY_DIFFERENCES = {
    "users": ("user_",),
    "memory": ("memory_",),
    "chats": ("chat_", "session_counters"),
    "messages": ("message_count", "messages_differ"),
    "logs": ("log_",),
}


def verify(reader: LegacyReader, conn: psycopg.Connection, *, entity: str | None = None,
           sealer: Sealer | None = None) -> VerifyResult:
    """Compare everything ``reader`` yields with the database behind ``conn``; only what
    belongs to ``entity`` (:data:`ENTITY_DIFFERENCES`) when given.

    With a ``sealer`` (CRYPTO_ENABLED) sealed values are opened and compared as the files
    hold them, values stored in clear as they are (counted in ``in_clear``); a value
    that does not open (its user's data key erased, or altered) is a difference.

    :raises psycopg.Error: the database cannot be read (the CLI maps it to one line).
    :raises UsageError: ``entity`` is unknown.
    :raises ConfigError: the database holds sealed values and no ``sealer`` was given.
    :raises KeyFileError: a data key's KEK is not in the key file.
    """
    if entity is not None and entity not in ENTITY_DIFFERENCES:
        raise UsageError(f"unknown entity {entity!r}; use one of "
                         f"{', '.join(ENTITY_DIFFERENCES)}")
    result = VerifyResult()
    orphans: dict[str, Any] = {}
    # One transaction: a consistent view, and the server-side cursor needs one.
    with conn.transaction():
        if entity in (None, "chats", "messages"):
            _compare_chats(reader, conn, result, orphans)
        elif entity in ("users", "memory"):
            _chat_owners(reader, orphans)  # users made from chats are compared too
        if entity in (None, "users", "memory"):
            memory_users = _user_keys(reader)
            for clerk in list(orphans):
                if clerk in memory_users:
                    del orphans[clerk]
            _compare_users(reader, conn, result, orphans, Opener(sealer))
        if entity in (None, "logs"):
            _compare_logs(reader, conn, result)
    result.quarantined = sorted(reader.report.quarantined, key=lambda q: q["path"])
    result.differences = _unique(result.differences)
    if entity is not None:
        owned = ENTITY_DIFFERENCES[entity]
        result.differences = [d for d in result.differences if d["kind"].startswith(owned)]
    return result


def _chat_owners(reader: LegacyReader, orphans: dict[str, Any]) -> None:
    """The chats' owners and their first chat's time, as _compare_chats collects them,
    without reading the database's messages."""
    for chat in reader.chats():
        if chat.clerk_id and chat.clerk_id not in orphans:
            orphans[chat.clerk_id] = chat.created_at


def _user_keys(reader: LegacyReader) -> set[str]:
    from donnadb.legacy.report import Report
    from donnadb.legacy.users import group_memory_files

    return {k[1] for k in group_memory_files(reader.inventory, Report()) if k[0] == "clerk"}


def _unique(items: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for item in items:
        key = (item["kind"], item["key"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def table_checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row's text in primary-key order) per imported table."""
    out = {}
    for table, order in TABLE_ORDER.items():
        query = sql.SQL(TABLE_CHECKSUM).format(table=sql.Identifier(table),
                                               order=sql.SQL(order))
        count, digest = conn.execute(query).fetchone()
        out[table] = (count, digest)
    return out


__all__ = ["LEGACY_KEY", "VerifyResult", "table_checksums", "verify"]

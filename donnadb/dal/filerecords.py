"""The legacy JSON records of the file store as the DAL's shapes (and small checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from donnadb.dal.protocol import ChatSession, Message, User
from donnadb.dal.values import (
    check_memory_key,
    legacy_message_id,
    normalise_role,
    parse_timestamp,
)
from donnadb.errors import DataError


def user_record(user_id: str, raw: dict[str, Any]) -> User:
    return {
        "id": user_id,
        "clerk_id": raw.get("user_id") or user_id,
        "email": raw.get("email"),
        "name": raw.get("name"),
        "profile": raw.get("profile") if isinstance(raw.get("profile"), dict) else {},
        "preferences": raw.get("preferences") if isinstance(raw.get("preferences"), dict) else {},
        "created_at": parse_timestamp(raw.get("created_at")),
        "updated_at": parse_timestamp(raw.get("updated_at")),
        "last_active_at": parse_timestamp(raw.get("last_active_at")),
        "status": raw.get("status") or "active",
    }


def session_record(chat_id: str, raw: dict[str, Any]) -> ChatSession:
    messages = raw.get("messages") or []
    stamps = [t for t in (parse_timestamp(m.get("timestamp")) for m in messages
                          if isinstance(m, dict)) if t is not None]
    return {
        "id": chat_id,
        "chat_id": chat_id,
        "user_id": raw.get("user_id"),
        "title": raw.get("title"),
        "profile": raw.get("profile") or "general",
        "metadata": raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {},
        "created_at": parse_timestamp(raw.get("created_at")),
        "updated_at": parse_timestamp(raw.get("updated_at")),
        "last_message_at": max(stamps) if stamps else None,
        "message_count": len(messages),
        "status": raw.get("status") or "active",
    }


def message_record(chat_id: str, sequence_number: int, raw: dict[str, Any]) -> Message:
    if not isinstance(raw, dict):
        raise DataError(f"message {sequence_number} of chat {chat_id!r} is not a JSON object")
    return {
        "id": raw.get("id") or legacy_message_id(chat_id, sequence_number),
        "chat_id": chat_id,
        "role": normalise_role(raw.get("role")),
        "content": raw.get("content") if isinstance(raw.get("content"), str) else "",
        "metadata": raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {},
        "created_at": parse_timestamp(raw.get("timestamp")),
        "sequence_number": sequence_number,
        "token_count": raw.get("tokens"),
        "abuse_flagged": bool(raw.get("flagged", False)),
    }


def drop_stale_expiry(raw: dict[str, Any], section: str) -> None:
    expires = raw.get("expires")
    if not isinstance(expires, dict):
        return
    keys = raw[section]
    for name in [n for n in expires if n.startswith(f"{section}.")]:
        if name[len(section) + 1:] not in keys:
            del expires[name]


def check_key(key: object) -> None:
    check_memory_key(key)



_EARLIEST = datetime.min.replace(tzinfo=UTC)


def recent_first(sessions: list[ChatSession]) -> list[ChatSession]:
    """The order of list_chat_sessions (postgres_sql.RECENT_ORDER): last message newest
    first with chats that have none ahead, then created_at newest first, then chat_id."""
    ordered = sorted(sessions, key=lambda s: s["chat_id"])
    ordered.sort(key=lambda s: s["created_at"] or _EARLIEST, reverse=True)
    ordered.sort(key=lambda s: (s["last_message_at"] is None, s["last_message_at"] or _EARLIEST),
                 reverse=True)
    return ordered


def newest_first(messages: list[Message]) -> list[Message]:
    """The order of search_messages: created_at newest first, chat_id, position from last."""
    ordered = sorted(messages, key=lambda m: m["sequence_number"], reverse=True)
    ordered.sort(key=lambda m: m["chat_id"])
    ordered.sort(key=lambda m: m["created_at"] or _EARLIEST, reverse=True)
    return ordered


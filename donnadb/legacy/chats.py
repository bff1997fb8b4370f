"""One legacy chat (JSON or transcript) -> a normalised :class:`ChatRow`.

What the rules change is recorded under ``metadata["_donnadb_legacy"]`` (chat and
message), with enough to undo it: export writes the original spelling back, so
import -> export -> import gives the same rows.

Timestamp rule (documented in docs/migrate-data.md): a message without a readable
timestamp takes the previous message's, the first ones take the next readable one,
and a chat with none at all takes the chat's created_at. A chat's created_at falls back
to its earliest message, then its updated_at, then the file's mtime; updated_at falls
back to the newest of its messages and created_at.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

from donnadb.legacy.model import ChatRow, MessageRow
from donnadb.legacy.normalise import (
    ESCAPE_MARKER,
    LEGACY_KEY,
    chat_uuid,
    escape_all,
    escape_json,
    escape_str,
    json_object_field,
    message_uuid,
    normalise_role,
    parse_timestamp,
)

CHAT_FIELDS = ("chat_id", "user_id", "title", "profile", "created_at", "updated_at",
               "metadata", "messages", "status")
STATUS_MAX = 50
CLERK_MAX = 255
MESSAGE_FIELDS = ("role", "content", "timestamp", "metadata", "tokens", "flagged")
TITLE_MAX = 255
PROFILE_MAX = 50
#: ``[2024-05-01 10:00:00] user: text``
TRANSCRIPT_HEADER = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\] ([^:\n]{1,40}): ?(.*)$")


def own_message_id(value: Any) -> uuid.UUID | None:
    """A message's own ``"id"`` when it is a UUID in canonical form (what the DAL and
    export write), else None: the position rule applies and the raw value is kept under
    ``_donnadb_legacy.extra`` (a non-canonical spelling would not survive a round trip)."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


def drop_own_id(chat_id: str, row: MessageRow) -> None:
    """Back to the position rule (the id is taken by an earlier message), keeping the
    file's value as an extra field so export writes it back."""
    legacy = row.metadata.setdefault(LEGACY_KEY, {})
    legacy.setdefault("extra", {})["id"] = str(row.id)
    row.id = message_uuid(chat_id, row.sequence_number)
    row.own_id = False


class ChatFileError(ValueError):
    """The JSON object is not a chat (the file is quarantined with this reason)."""


def _message(chat_id: str, seq: int, raw: Any) -> tuple[MessageRow, Any]:
    """The message without its timestamp resolved; returns (row, raw timestamp)."""
    legacy: dict[str, Any] = {}
    if not isinstance(raw, dict):
        legacy["not_an_object"] = True
        raw = {"content": raw}
    role, known = normalise_role(raw.get("role"))
    if not known or raw.get("role") != role:
        legacy["role"] = raw.get("role")
    content = raw.get("content")
    if isinstance(content, str):
        text = content
    elif content is None:
        text = ""
        legacy["content"] = "missing" if "content" not in raw else "null"
    else:
        text = json.dumps(content, ensure_ascii=False, sort_keys=True)
        legacy["content"] = "json"
    text, content_escaped = escape_str(text)
    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
        if "metadata" in raw:
            legacy["metadata"] = "null"
    elif not isinstance(metadata, dict):
        legacy["metadata_raw"], metadata = metadata, {}
    tokens = raw.get("tokens")
    token_count = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) \
        and 0 <= tokens < 2**31 else None
    if tokens is not None and token_count is None:
        legacy["tokens"] = tokens
    flagged = raw.get("flagged", False)
    if not isinstance(flagged, bool):
        legacy["flagged"] = flagged
        flagged = bool(flagged)
    own_id = own_message_id(raw.get("id"))
    extra = {k: v for k, v in raw.items()
             if k not in MESSAGE_FIELDS and (own_id is None or k != "id")}
    if extra:
        legacy["extra"] = extra
    legacy_escaped, meta_changed = escape_json(legacy)
    metadata, metadata_escaped = escape_json(metadata)
    metadata = dict(metadata)
    escaped = []
    if metadata_escaped:
        escaped.append("metadata")
    if meta_changed:
        escaped.append("legacy")
        legacy = legacy_escaped
    if content_escaped:
        metadata[ESCAPE_MARKER] = True
    row = MessageRow(
        id=own_id or message_uuid(chat_id, seq), sequence_number=seq, role=role,
        content=text, metadata=metadata, created_at=None,  # type: ignore[arg-type]
        token_count=token_count, abuse_flagged=flagged, own_id=own_id is not None,
    )
    if escaped:
        legacy["escaped"] = escaped
    if legacy:
        metadata[LEGACY_KEY] = legacy
    return row, raw.get("timestamp")


def _fill_timestamps(rows: list[MessageRow], raws: list[Any],
                     fallback: datetime | None) -> None:
    """Resolve message timestamps in place (the rule in the module docstring)."""
    parsed = [parse_timestamp(r) for r in raws]
    first_known = next((t for t in parsed if t is not None), fallback)
    previous = None
    for row, raw, ts in zip(rows, raws, parsed, strict=True):
        if ts is None:
            ts = previous or first_known
            legacy = row.metadata.setdefault(LEGACY_KEY, {})
            if raw is None:
                legacy["timestamp"] = "missing"
            else:
                legacy["timestamp"] = "unparseable"
                _keep_raw(legacy, "timestamp", raw)
        row.created_at = ts  # type: ignore[assignment]
        previous = ts


def _keep_raw(legacy: dict[str, Any], name: str, raw: Any) -> None:
    """Keep an unreadable timestamp for export (escaped, and marked so, when needed)."""
    stored, changed = escape_json(raw)
    if "legacy" in legacy.get("escaped", ()):
        # ``legacy`` was escaped as a whole already: what joins it later is too, as export
        # unescapes the whole before it reads the raw value.
        stored = escape_all(stored)
    legacy[f"{name}_raw"] = stored
    if changed:
        legacy[f"{name}_raw_escaped"] = True


def _clip(value: str, limit: int, legacy: dict[str, Any], name: str) -> str:
    if len(value) > limit:
        legacy[f"{name}_full"] = value
        return value[:limit]
    return value


def chat_from_json(doc: dict[str, Any], chat_id: str, source_path: str, source: str | None,
                   file_mtime: datetime) -> ChatRow:
    """Normalise a parsed chat_sessions/conversations file.

    :raises ChatFileError: ``messages`` is not a list (the whole file is quarantined).
    """
    messages_raw = doc.get("messages", [])
    if messages_raw is None:
        messages_raw = []
    if not isinstance(messages_raw, list):
        raise ChatFileError(f"messages is a {type(messages_raw).__name__}, not a list")
    legacy: dict[str, Any] = {}
    if source:
        legacy["source"] = source
    if "messages" not in doc:
        legacy["messages"] = "missing"
    if doc.get("chat_id") != chat_id:
        legacy["chat_id"] = doc.get("chat_id", "missing")
    clerk = doc.get("user_id")
    if clerk is not None and (not isinstance(clerk, str) or not clerk):
        legacy["user_id"] = clerk
        clerk = None
    if isinstance(clerk, str) and (escape_str(clerk)[1] or len(clerk) > CLERK_MAX):
        # Not a Clerk id users.clerk_id can hold: kept raw, the chat stays anonymous.
        legacy["user_id"] = clerk
        clerk = None
    title = doc.get("title")
    if title is not None and not isinstance(title, str):
        legacy["title_raw"], title = title, None
    escaped: list[str] = []
    if title is not None:
        title, changed = escape_str(title)
        if changed:
            escaped.append("title")
        title = _clip(title, TITLE_MAX, legacy, "title")
    profile = doc.get("profile", "general")
    if profile is None:
        legacy["profile"] = "null"
        profile = "general"
    elif not isinstance(profile, str):
        legacy["profile_raw"], profile = profile, "general"
    else:
        profile, changed = escape_str(profile)
        if changed:
            escaped.append("profile")
        profile = _clip(profile, PROFILE_MAX, legacy, "profile")
    metadata = json_object_field(doc, "metadata", legacy, escaped)
    status = doc.get("status")
    if status is not None and not _storable_status(status):
        legacy["status_raw"] = status
    status = status if _storable_status(status) else "active"
    extra = {k: v for k, v in doc.items() if k not in CHAT_FIELDS}
    if extra:
        legacy["extra"] = extra

    pairs = [_message(chat_id, i + 1, m) for i, m in enumerate(messages_raw)]
    rows = [p[0] for p in pairs]
    raws = [p[1] for p in pairs]
    created, updated = _chat_times(doc.get("created_at"), doc.get("updated_at"), raws,
                                   file_mtime, legacy)
    _fill_timestamps(rows, raws, created)
    if "updated_at" in legacy or updated is None:
        newest = max((r.created_at for r in rows), default=created)
        updated = max(newest, created)
    versioned = "updated_at" not in legacy and updated is not None
    chat = _finish(chat_id, clerk, title, profile, metadata, created, updated, rows,
                   source_path, legacy, escaped)
    chat.status = status
    chat.versioned = versioned
    return chat


def _storable_status(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= STATUS_MAX and not escape_str(value)[1]


def _chat_times(created_raw: Any, updated_raw: Any, message_raws: list[Any],
                file_mtime: datetime, legacy: dict[str, Any]):
    created = parse_timestamp(created_raw)
    updated = parse_timestamp(updated_raw)
    if created is None:
        legacy["created_at"] = "missing" if created_raw is None else "unparseable"
        if created_raw is not None:
            _keep_raw(legacy, "created_at", created_raw)
        known = [t for t in (parse_timestamp(r) for r in message_raws) if t is not None]
        if known:
            created = min(known)
        elif updated is not None:
            created = updated
        else:
            created = file_mtime
            legacy["created_at_from"] = "file_mtime"
    if updated is None:
        legacy["updated_at"] = "missing" if updated_raw is None else "unparseable"
        if updated_raw is not None:
            _keep_raw(legacy, "updated_at", updated_raw)
    return created, updated


def _finish(chat_id, clerk, title, profile, metadata, created, updated, rows, source_path,
            legacy, escaped) -> ChatRow:
    if legacy:
        legacy_escaped, changed = escape_json(legacy)
        if changed:
            escaped.append("legacy")
            legacy = legacy_escaped
    if escaped:
        legacy["escaped"] = escaped
    if legacy:
        metadata[LEGACY_KEY] = legacy
    return ChatRow(id=chat_uuid(chat_id), chat_id=chat_id, clerk_id=clerk, title=title,
                   profile=profile, metadata=metadata, created_at=created, updated_at=updated,
                   messages=rows, source_path=source_path)


def parse_transcript(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(text before the first header, messages as dicts in the chat_sessions shape).

    :raises ChatFileError: no ``[YYYY-MM-DD HH:MM:SS] role:`` header at all.
    """
    preamble: list[str] = []
    messages: list[dict[str, Any]] = []
    for line in text.split("\n"):
        match = TRANSCRIPT_HEADER.match(line)
        if match:
            messages.append({"timestamp": match.group(1), "role": match.group(2),
                             "content": match.group(3)})
        elif messages:
            messages[-1]["content"] += "\n" + line
        else:
            preamble.append(line)
    if not messages:
        raise ChatFileError("no '[YYYY-MM-DD HH:MM:SS] role: text' header line")
    # The file's final newline ends the last message; it is not part of its text.
    if messages[-1]["content"].endswith("\n"):
        messages[-1]["content"] = messages[-1]["content"][:-1]
    return "\n".join(preamble), messages


def format_transcript(messages: list[dict[str, Any]], preamble: str = "") -> str:
    """Inverse of :func:`parse_transcript`."""
    out = [preamble] if preamble else []
    for m in messages:
        out.append(f"[{m['timestamp']}] {m['role']}: {m['content']}")
    return "\n".join(out) + "\n"


def chat_from_transcript(text: str, chat_id: str, source_path: str,
                         file_mtime: datetime) -> ChatRow:
    """A chat known only from chat_history/<chat_id>.txt (anonymous: no user id).

    :raises ChatFileError: the text has no message header.
    """
    preamble, messages = parse_transcript(text)
    doc: dict[str, Any] = {"chat_id": chat_id, "user_id": None, "title": None,
                           "messages": messages}
    chat = chat_from_json(doc, chat_id, source_path, "chat_history", file_mtime)
    legacy = chat.metadata.setdefault(LEGACY_KEY, {})
    for k in ("created_at", "updated_at"):  # a transcript never has them: not a deviation
        legacy.pop(k, None)
    if preamble:
        legacy["preamble"] = escape_json(preamble)[0]
    return chat


def transcript_signature(chat: ChatRow) -> list[tuple[str, str]]:
    """(role, content) pairs used to cross-check a transcript against its JSON chat."""
    return [(m.role, m.content.strip()) for m in chat.messages]

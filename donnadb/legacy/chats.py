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

#: A chat_sessions file's record of where the chat was before (``{"source":
#: "chat_history" or "conversations/<user>", "preamble": ...}``): an export for the
#: application's file store puts every chat in chat_sessions/, and the import gives the
#: chat its origin back from this, so the database it rebuilds is the same.
ORIGIN_KEY = "_donnadb_origin"
ORIGIN_FIELDS = ("source", "preamble")
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
    role = _message_role(raw.get("role"), legacy)
    text, content_escaped = escape_str(_message_text(raw, legacy))
    metadata = _message_metadata(raw, legacy)
    token_count = _token_count(raw.get("tokens"), legacy)
    flagged = _flagged(raw.get("flagged", False), legacy)
    own_id = own_message_id(raw.get("id"))
    extra = {k: v for k, v in raw.items()
             if k not in MESSAGE_FIELDS and (own_id is None or k != "id")}
    if extra:
        legacy["extra"] = extra
    row = MessageRow(
        id=own_id or message_uuid(chat_id, seq), sequence_number=seq, role=role,
        content=text, metadata=_storable_metadata(metadata, legacy, content_escaped),
        created_at=None,  # type: ignore[arg-type]
        token_count=token_count, abuse_flagged=flagged, own_id=own_id is not None,
    )
    return row, raw.get("timestamp")


def _message_role(raw_role: Any, legacy: dict[str, Any]) -> str:
    """The schema's role; any other spelling is kept for export."""
    role, known = normalise_role(raw_role)
    if not known or raw_role != role:
        legacy["role"] = raw_role
    return role


def _message_text(raw: dict[str, Any], legacy: dict[str, Any]) -> str:
    """The content as text: missing or null is ``""``, any other JSON value its JSON."""
    content = raw.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        legacy["content"] = "missing" if "content" not in raw else "null"
        return ""
    legacy["content"] = "json"
    return json.dumps(content, ensure_ascii=False, sort_keys=True)


def _message_metadata(raw: dict[str, Any], legacy: dict[str, Any]) -> Any:
    """The metadata object: ``{}`` for null (noted) or for a non-object (kept raw)."""
    metadata = raw.get("metadata")
    if metadata is None:
        if "metadata" in raw:
            legacy["metadata"] = "null"
        return {}
    if not isinstance(metadata, dict):
        legacy["metadata_raw"] = metadata
        return {}
    return metadata


def _token_count(tokens: Any, legacy: dict[str, Any]) -> int | None:
    """``tokens`` when token_count can hold it, else None (the value kept raw)."""
    if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens < 2**31:
        return tokens
    if tokens is not None:
        legacy["tokens"] = tokens
    return None


def _flagged(flagged: Any, legacy: dict[str, Any]) -> bool:
    if not isinstance(flagged, bool):
        legacy["flagged"] = flagged
    return bool(flagged)


def _storable_metadata(metadata: Any, legacy: dict[str, Any],
                       content_escaped: bool) -> dict[str, Any]:
    """The message's metadata as PostgreSQL can store it, with what the rules changed
    (``legacy``, escaped as a whole when any of it must be) under :data:`LEGACY_KEY`."""
    legacy_escaped, legacy_changed = escape_json(legacy)
    metadata, metadata_changed = escape_json(metadata)
    metadata = dict(metadata)
    escaped = [name for name, changed in (("metadata", metadata_changed),
                                          ("legacy", legacy_changed)) if changed]
    if legacy_changed:
        legacy = legacy_escaped
    if content_escaped:
        metadata[ESCAPE_MARKER] = True
    if escaped:
        legacy["escaped"] = escaped
    if legacy:
        metadata[LEGACY_KEY] = legacy
    return metadata


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
    messages_raw = _messages(doc)
    legacy = _chat_origin(doc, chat_id, source)
    clerk = _clerk_id(doc.get("user_id"), legacy)
    escaped: list[str] = []
    title = _title(doc.get("title"), legacy, escaped)
    profile = _profile(doc, legacy, escaped)
    metadata = json_object_field(doc, "metadata", legacy, escaped)
    status = _status(doc.get("status"), legacy)
    known = CHAT_FIELDS if source or _origin(doc) is None else (*CHAT_FIELDS, ORIGIN_KEY)
    extra = {k: v for k, v in doc.items() if k not in known}
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


def _messages(doc: dict[str, Any]) -> list[Any]:
    """:raises ChatFileError: ``messages`` is neither a list nor missing/null."""
    messages = doc.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise ChatFileError(f"messages is a {type(messages).__name__}, not a list")
    return messages


def _chat_origin(doc: dict[str, Any], chat_id: str, source: str | None) -> dict[str, Any]:
    """The chat's legacy record, begun: where it came from, what its file lacked."""
    legacy: dict[str, Any] = {}
    if source:
        legacy["source"] = source
    elif _origin(doc) is not None:
        legacy.update(_origin(doc))
    if "messages" not in doc:
        legacy["messages"] = "missing"
    if doc.get("chat_id") != chat_id:
        legacy["chat_id"] = doc.get("chat_id", "missing")
    return legacy


def _origin(doc: dict[str, Any]) -> dict[str, str] | None:
    """The chat's earlier place recorded by an export (:data:`ORIGIN_KEY`); None when
    the file has none, or something else under that name (then an extra field)."""
    origin = doc.get(ORIGIN_KEY)
    if isinstance(origin, dict) and origin and set(origin) <= set(ORIGIN_FIELDS) and \
            all(isinstance(v, str) for v in origin.values()):
        return origin
    return None


def _clerk_id(clerk: Any, legacy: dict[str, Any]) -> str | None:
    """The chat's Clerk id; a value users.clerk_id cannot hold is kept raw and the chat
    stays anonymous."""
    if clerk is None:
        return None
    if isinstance(clerk, str) and clerk and not escape_str(clerk)[1] and len(clerk) <= CLERK_MAX:
        return clerk
    legacy["user_id"] = clerk
    return None


def _title(title: Any, legacy: dict[str, Any], escaped: list[str]) -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        legacy["title_raw"] = title
        return None
    return _storable_text(title, "title", TITLE_MAX, legacy, escaped)


def _profile(doc: dict[str, Any], legacy: dict[str, Any], escaped: list[str]) -> str:
    profile = doc.get("profile", "general")
    if profile is None:
        legacy["profile"] = "null"
        return "general"
    if not isinstance(profile, str):
        legacy["profile_raw"] = profile
        return "general"
    return _storable_text(profile, "profile", PROFILE_MAX, legacy, escaped)


def _storable_text(value: str, name: str, limit: int, legacy: dict[str, Any],
                   escaped: list[str]) -> str:
    """``value`` escaped (``name`` appended to ``escaped`` then) and clipped to ``limit``."""
    value, changed = escape_str(value)
    if changed:
        escaped.append(name)
    return _clip(value, limit, legacy, name)


def _status(status: Any, legacy: dict[str, Any]) -> str:
    if _storable_status(status):
        return status
    if status is not None:
        legacy["status_raw"] = status
    return "active"


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

"""Small pure helpers every store shares: validation, timestamps, ids, text escaping."""

from __future__ import annotations

import ipaddress
import json
import math
import re
import reprlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from donnadb.dal.fileio import check_file_name
from donnadb.dal.protocol import MEMORY_TYPES, ROLES
from donnadb.errors import DataError

#: Namespace of the deterministic ids given to legacy messages that have none.
LEGACY_MESSAGE_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-4c9e-9a57-2f0d0c7b9e41")
#: Namespace of the ids the legacy import derives (users, chats, memory, log lines).
LEGACY_NAMESPACE = uuid.UUID("0d7c9a4e-3f61-5b1e-8c2a-9e4b7f13d6a0")
#: Metadata key recording that ``content`` was escaped (see :func:`escape_text`).
ESCAPE_MARKER = "_donnadb_content_escaped"
#: Metadata/context key under which the import records where a row came from and what it
#: changed; a log row written by dual-write carries ``{"source": "FILE:LINE"}`` there too.
LEGACY_KEY = "_donnadb_legacy"
#: Keys starting with this are donnadb's own bookkeeping (the two above, erasure records):
#: no caller may set or shadow one in metadata, a log context, a profile or preferences.
RESERVED_PREFIX = "_donnadb_"
#: User fields that name the user's legacy memory file (the e-mail when it has no clerk id).
NAMING_USER_FIELDS = ("clerk_id", "email")
#: Column sizes of system_logs.level and system_logs.trace_id.
LOG_LEVEL_MAX = 20
TRACE_ID_MAX = 255
#: The first and last instants a timestamp may name (what ``datetime`` holds in UTC).
TIMESTAMP_MIN = datetime.min.replace(tzinfo=UTC)
TIMESTAMP_MAX = datetime.max.replace(tzinfo=UTC)
#: Epoch values at or above this (in absolute value) are milliseconds: 1e11 s is the year 5138.
EPOCH_MS_THRESHOLD = 10**11
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")

# Chat ids and user keys become file names: no separators, no leading dot, bounded.
_NAME_RE = re.compile(r"^[A-Za-z0-9@_+=-][A-Za-z0-9@._+=-]{0,199}$")
# Characters PostgreSQL text/jsonb cannot hold: NUL and lone surrogates.
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
# orjson reads an integer beyond 64 bits as a float (json.loads keeps it exact); any such
# literal has 19+ digits in a row, and so does nothing else orjson could misread.
_LONG_DIGITS_RE = re.compile(rb"\d{19}")


def now_utc() -> datetime:
    return datetime.now(UTC)


def check_name(value: object, what: str) -> str:
    """``value`` if it is usable as a chat id / clerk id (and file name).

    :raises DataError: it is not a string of 1-200 letters, digits or ``@._+=-``.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise DataError(
            f"invalid {what} {value!r}: use 1-200 letters, digits or @._+=- "
            "(no leading dot, no slash)"
        )
    return check_file_name(value, what, ".json")  # what every path built from data passes


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME_RE.match(value))


def check_role(role: object) -> str:
    """:raises DataError: ``role`` is not one of :data:`ROLES`."""
    if role not in ROLES:
        raise DataError(f"invalid message role {role!r}: use one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def check_memory_type(memory_type: object) -> str:
    """:raises DataError: ``memory_type`` is not one of :data:`MEMORY_TYPES`."""
    if memory_type not in MEMORY_TYPES:
        raise DataError(
            f"invalid memory type {memory_type!r}: use one of {', '.join(MEMORY_TYPES)}"
        )
    return memory_type  # type: ignore[return-value]


def check_fields(updates: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """:raises DataError: ``updates`` has a key outside ``allowed``."""
    unknown = sorted(set(updates) - set(allowed))
    if unknown:
        raise DataError(
            f"cannot set {what} field(s) {', '.join(unknown)}: allowed are {', '.join(allowed)}"
        )


def check_json_object(value: object, what: str) -> dict[str, Any]:
    """:raises DataError: ``value`` is not a JSON object (dict), or it has a reserved key
    (:func:`check_reserved_keys`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{what} must be a JSON object, not {type(value).__name__}")
    check_reserved_keys(value, what)
    return dict(value)


def check_reserved_keys(value: Mapping[str, Any], what: str) -> None:
    """:raises DataError: a top-level key starts with :data:`RESERVED_PREFIX` (the export
    and the readers would take it for donnadb's own: a legacy source path, an escaped
    content marker, an erasure record)."""
    reserved = sorted(k for k in value if isinstance(k, str) and k.startswith(RESERVED_PREFIX))
    if reserved:
        raise DataError(f"{what} key {reserved[0]!r} is reserved: keys starting with "
                        f"{RESERVED_PREFIX} are donnadb's own; rename it")


def check_memory_key(key: object) -> str:
    """:raises DataError: ``key`` is not 1-255 characters, or it is reserved (a profile or
    preferences key is also a key of the users column)."""
    if not isinstance(key, str) or not key or len(key) > 255:
        raise DataError(f"invalid memory key {key!r}: use 1-255 characters")
    check_reserved_keys({key: None}, "memory")
    return key


def check_user_names(user: Mapping[str, Any]) -> None:
    """The user fields that name its legacy memory file must be safe file names.

    :raises DataError: ``clerk_id`` or ``email`` holds ``/`` or NUL, is ``.``/``..`` or is
        too long for a file name.
    """
    for field in NAMING_USER_FIELDS:
        value = user.get(field)
        # An empty e-mail names nothing (the user's id names the file then).
        if value is not None and (value != "" or field == "clerk_id"):
            check_file_name(value, field, ".json")


def parse_timestamp(value: object) -> datetime | None:
    """A timestamp as an aware UTC datetime; ``None`` when it is missing or unreadable.

    The one reading of a timestamp, for every store and for the legacy import:

    * a ``datetime``: converted to UTC; a naive one is taken as UTC;
    * ISO 8601 text, ``T`` or a space between date and time: its offset is honoured
      (``+05:30``, ``-0500``; ``Z``, ``z`` and ``-00:00`` are UTC) and no zone means UTC;
      digits past the microsecond are dropped (truncated: rounding up could carry
      ``9999-12-31T23:59:59.9999999`` past the last instant);
    * epoch seconds, or milliseconds from :data:`EPOCH_MS_THRESHOLD` on, as a number or
      numeric text (integers exactly, without a float's rounding).

    Only instants from :data:`TIMESTAMP_MIN` to :data:`TIMESTAMP_MAX` (UTC) are readable:
    PostgreSQL would store a later one, but no Python client could read it back. So
    ``9999-12-31T23:59:59-01:00`` (year 10000 in UTC) and year 0 are unreadable.
    """
    if isinstance(value, datetime):
        return _in_utc(value)
    if isinstance(value, str):
        return _parse_text(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _from_epoch(value)
    return None


def _parse_text(text: str) -> datetime | None:
    if _NUMBER_RE.fullmatch(text):
        try:
            number = float(text) if "." in text else int(text)
        except ValueError:  # more digits than int() reads: far out of range anyway
            return None
        return _from_epoch(number)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return _in_utc(parsed)


def _from_epoch(value: int | float) -> datetime | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    unit = "milliseconds" if abs(value) >= EPOCH_MS_THRESHOLD else "seconds"
    try:
        return _EPOCH + timedelta(**{unit: value})
    except OverflowError:
        return None


def _in_utc(value: datetime) -> datetime | None:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):  # the UTC instant is before year 1 or after 9999
        return None


def check_timestamp(value: object, what: str) -> datetime | None:
    """A timestamp a caller gave (``None`` stays ``None``), read by :func:`parse_timestamp`.

    :raises DataError: ``value`` is given but unreadable or out of range.
    """
    if value is None:
        return None
    parsed = parse_timestamp(value)
    if parsed is None:
        raise DataError(f"invalid {what} {_shown(value)}: use a datetime, ISO 8601 text or "
                        "epoch seconds/milliseconds, from year 1 to 9999 in UTC")
    return parsed


def _shown(value: object) -> str:
    """``value`` shortened for a one-line error (an integer of more than 4,300 digits has
    no ``repr``)."""
    try:
        return reprlib.repr(value)
    except ValueError:
        return f"<an integer of {value.bit_length()} bits>"  # type: ignore[attr-defined]


def format_timestamp(value: datetime | None) -> str | None:
    """``2025-03-01T10:00:00.123456Z``: UTC, microseconds kept, the year in four digits,
    so :func:`parse_timestamp` reads back exactly this instant (a naive value is UTC)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def legacy_message_id(chat_id: str, sequence_number: int) -> str:
    """The id of a legacy message stored without one: stable for its chat and position.

    The legacy import uses the same rule, so a message keeps its id in both stores.
    """
    return str(uuid.uuid5(LEGACY_MESSAGE_NAMESPACE, f"{chat_id}:{sequence_number}"))


def check_limit(value: object, name: str = "limit") -> int:
    """:raises DataError: ``value`` is not a non-negative integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def check_window(limit: object, offset: object) -> None:
    """get_chat_history's window. :raises DataError: either is not a non-negative int."""
    check_limit(limit)
    check_limit(offset, "offset")


def check_search(query: object, limit: object, recent_chats: object) -> str:
    """search_messages' arguments; returns the query.

    :raises DataError: the query is not text, or a bound is not a non-negative integer.
    """
    if not isinstance(query, str):
        raise DataError(f"search query must be text, not {type(query).__name__}")
    check_limit(limit)
    if recent_chats is not None:
        check_limit(recent_chats, "recent_chats")
    return query


def legacy_log_uuid(source: str) -> uuid.UUID:
    """The id of the log row read from ``source`` (``FILE.jsonl:LINE``): stable across
    re-imports, and the same whether dual-write or the import puts the line in PostgreSQL."""
    return uuid.uuid5(LEGACY_NAMESPACE, f"log:{source}")


def legacy_log_id(source: str) -> str:
    """:func:`legacy_log_uuid` as the DAL's id string."""
    return str(legacy_log_uuid(source))


def has_unstorable(value: Any) -> bool:
    """True when a string, key or nested value holds text PostgreSQL cannot store."""
    if isinstance(value, str):
        return needs_escape(value)
    if isinstance(value, list):
        return any(has_unstorable(v) for v in value)
    if isinstance(value, dict):
        return any(has_unstorable(k) or has_unstorable(v) for k, v in value.items())
    return False


def log_line(
    level: object,
    message: object,
    context: Mapping[str, Any] | None,
    *,
    trace_id: object = None,
    ip_address: object = None,
    user_agent: object = None,
    request_uri: object = None,
    at: datetime,
) -> dict[str, Any]:
    """One log entry, checked, as a legacy ``logs/*.jsonl`` object (docs/dal.md).

    Every store writes exactly this: the file store as a line, PostgreSQL as a
    system_logs row; so the import of the line gives the row dual-write wrote. ``level``
    is lower-cased and ``ip_address`` written in its canonical form.

    :raises DataError: a field of the wrong type or size, an invalid IP address, text
        PostgreSQL cannot store (NUL, a lone surrogate), or a reserved context key.
    """
    if not isinstance(level, str) or not 0 < len(level) <= LOG_LEVEL_MAX:
        raise DataError(f"invalid log level {level!r}: use 1-{LOG_LEVEL_MAX} characters")
    if not isinstance(message, str):
        raise DataError(f"log message must be text, not {type(message).__name__}")
    texts = {"trace_id": trace_id, "user_agent": user_agent, "request_uri": request_uri}
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise DataError(f"log {name} must be text or None, not {type(value).__name__}")
    if trace_id is not None and len(trace_id) > TRACE_ID_MAX:
        raise DataError(f"log trace_id is longer than {TRACE_ID_MAX} characters")
    ctx = check_json_object(context, "log context")
    ip = None
    if ip_address is not None:
        try:
            ip = str(ipaddress.ip_address(ip_address))
        except ValueError:
            raise DataError(f"invalid log ip_address {ip_address!r}: use an IPv4 or IPv6 "
                            "address") from None
    line = {"ts": format_timestamp(at), "level": level.lower(), "message": message,
            "context": ctx, "trace_id": trace_id, "ip": ip, "user_agent": user_agent,
            "uri": request_uri}
    try:
        json.dumps(ctx, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"log context cannot be stored as JSON: {exc}") from None
    if has_unstorable(line):
        raise DataError("log entry holds NUL or a lone surrogate, which PostgreSQL cannot "
                        "store: remove or replace those characters")
    return line


def is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def needs_escape(text: str) -> bool:
    # An ASCII string (str.isascii() reads a flag, it does not scan) has no surrogate:
    # only NUL is left to find, by memchr; the character class is 10-20x slower per byte.
    if text.isascii():
        return "\x00" in text
    return bool(_UNSTORABLE_RE.search(text))


def escape_text(text: str) -> str:
    """A reversible form of ``text`` PostgreSQL can store: the body of its JSON string.

    Only applied to text containing NUL or lone surrogates; the caller records
    :data:`ESCAPE_MARKER` in the row's metadata so :func:`unescape_text` is applied on read.
    """
    return json.dumps(text, ensure_ascii=True)[1:-1]


def unescape_text(stored: str) -> str:
    return json.loads(f'"{stored}"')


_ROLE_ALIASES = {"bot": "assistant", "ai": "assistant", "human": "user"}


def load_json(data: bytes) -> Any:
    """``json.loads(data)``, computed by orjson when that gives the same value (~10x faster).

    Used for every json/jsonb column the DAL reads (one call per row per column). orjson
    differs only on integers beyond 64 bits (it returns floats: guarded by a digit-run
    test), numbers beyond float range and nesting deeper than 1,024 (it refuses: then
    json.loads decides, raising what it raises).
    """
    if _LONG_DIGITS_RE.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dump_json(value: Any) -> bytes | str:
    """``json.dumps(value)`` as jsonb will store it, computed by orjson where it can.

    orjson refuses what it cannot encode exactly like json.dumps (integers beyond 64 bits,
    non-string keys, lone surrogates): json.dumps then decides. Its one silent difference,
    NaN/Infinity written as null, cannot reach it: legacy files are parsed with those
    constants rejected, and jsonb refuses them anyway.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def normalise_role(role: object) -> str:
    """A legacy role spelling (``User``, ``bot``, ``ai``, ``SYSTEM``) in the schema's form;
    anything unrecognised is returned lower-cased (and then rejected by the database)."""
    text = str(role).strip().lower() if role is not None else ""
    return _ROLE_ALIASES.get(text, text)

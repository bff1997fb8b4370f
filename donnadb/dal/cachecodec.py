"""How the cache keeps what a PostgreSQL read returned: JSON that gives back the same
values, not merely similar ones.

The rows are dicts of text, numbers, booleans, None, timezone-aware datetimes and
JSON values of json/jsonb columns (metadata, memory values). JSON alone would turn a
datetime into text, so a datetime is written as an object with a tag key,
``{"$dt": "<ISO 8601 with offset>", "$tz": "<zone name>"}`` (the zone only for a
named zone: psycopg returns the session's, ``Etc/UTC``, and the decoded value keeps
it). A stored dict may hold such keys itself: every key of a stored dict that starts
with ``$`` gets one more ``$`` on the way in and loses it on the way out, so a tag can
never be confused with data. Not pickle: whoever can write to Redis must not be able
to run code in the application.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from donnadb.dal.values import dump_json

_DT = "$dt"
_TZ = "$tz"


class CodecError(ValueError):
    """A value the cache cannot keep exactly (a type JSON and the tags do not cover)."""


def encode(value: Any) -> bytes:
    """``value`` as bytes for Redis.

    :raises CodecError: it holds a type other than dict, list, str, int, float, bool,
        None and aware datetime.
    """
    data = dump_json(_tagged(value))
    return data if isinstance(data, bytes) else data.encode()


def decode(data: bytes) -> Any:
    """The value :func:`encode` was given, as a new object.

    :raises ValueError: not what :func:`encode` writes.
    """
    return json.loads(data, object_hook=_untagged)


def _tagged(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {(f"${k}" if k.startswith("$") else k) if isinstance(k, str) else _bad(k):
                _tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, datetime) and value.tzinfo is not None:
        tagged = {_DT: value.isoformat()}
        if isinstance(value.tzinfo, ZoneInfo):
            tagged[_TZ] = value.tzinfo.key
        return tagged
    return _bad(value)


def _bad(value: Any) -> Any:
    raise CodecError(f"the cache cannot keep a {type(value).__name__} exactly")


def _untagged(obj: dict[str, Any]) -> Any:
    # Called for every JSON object, innermost first: only a tag has a key with one "$".
    if _DT in obj:
        when = datetime.fromisoformat(obj[_DT])
        zone = obj.get(_TZ)
        return when.astimezone(ZoneInfo(zone)) if zone else when
    if any(k.startswith("$") for k in obj):
        return {k[1:] if k.startswith("$") else k: v for k, v in obj.items()}
    return obj

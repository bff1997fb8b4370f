"""logs/*.jsonl -> :class:`LogRow`, one per line, streamed.

A line that is not a JSON object is quarantined as ``logs/FILE:LINE``; blank lines are
not data. Each row keeps its origin in ``context["_donnadb_legacy"]["source"]``: the
id is derived from it (stable across re-imports) and export writes the line back to
the same file and line number.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from donnadb.legacy.files import BOM, Inventory, loads, mtime, open_inside
from donnadb.legacy.model import LogRow
from donnadb.legacy.normalise import (
    LEGACY_KEY,
    escape_json,
    escape_str,
    json_object_field,
    log_uuid,
    parse_timestamp,
)
from donnadb.legacy.report import Report

FIELDS = ("ts", "level", "message", "context", "trace_id", "ip", "user_agent", "uri")
LEVEL_MAX = 20
TRACE_MAX = 255


def _text(raw: dict[str, Any], name: str, legacy: dict[str, Any], escaped: list[str],
          limit: int | None = None) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        legacy[f"{name}_raw"] = value
        return None
    value, changed = escape_str(value)
    if changed:
        escaped.append(name)
    if limit is not None and len(value) > limit:
        legacy[f"{name}_full"] = value
        value = value[:limit]
    return value


def log_from_line(raw: dict[str, Any], source: str, previous_ts, fallback_ts) -> LogRow:
    """Normalise one parsed log object (``source`` is ``FILE:LINE``)."""
    legacy: dict[str, Any] = {"source": source}
    escaped: list[str] = []
    ts = _timestamp(raw.get("ts"), previous_ts, fallback_ts, legacy)
    level = _level(raw, legacy, escaped)
    message = _text(raw, "message", legacy, escaped)
    if message is None:
        legacy.setdefault("message", "missing")
        message = ""
    context = json_object_field(raw, "context", legacy, escaped)
    ip_address = _ip_address(raw.get("ip"), legacy)
    extra = {k: v for k, v in raw.items() if k not in FIELDS}
    if extra:
        legacy["extra"] = extra
    trace_id = _text(raw, "trace_id", legacy, escaped, TRACE_MAX)
    user_agent = _text(raw, "user_agent", legacy, escaped)
    uri = _text(raw, "uri", legacy, escaped)
    context[LEGACY_KEY] = _storable_legacy(legacy, escaped)
    return LogRow(id=log_uuid(source), level=level, message=message, context=context,
                  trace_id=trace_id, ip_address=ip_address, user_agent=user_agent,
                  request_uri=uri, created_at=ts, source=source)


def _timestamp(raw_ts: Any, previous_ts, fallback_ts, legacy: dict[str, Any]):
    """The line's time; a missing or unreadable one takes the previous line's (the first
    lines: the file's mtime), noted with the raw value."""
    ts = parse_timestamp(raw_ts)
    if ts is not None:
        return ts
    legacy["ts"] = "missing" if raw_ts is None else "unparseable"
    if raw_ts is not None:
        legacy["ts_raw"] = raw_ts
    if previous_ts is None:
        legacy["ts_from"] = "file_mtime"
    return previous_ts or fallback_ts


def _level(raw: dict[str, Any], legacy: dict[str, Any], escaped: list[str]) -> str:
    """The level lower-cased and clipped (``info`` when missing); the file's spelling is
    kept for export."""
    level = _text(raw, "level", legacy, escaped)
    if level is None:
        legacy.setdefault("level", "missing")
        return "info"
    if "level" in escaped or level != level.lower() or len(level) > LEVEL_MAX:
        legacy["level_raw"] = raw["level"]  # export writes the file's spelling back
        return level.lower()[:LEVEL_MAX]
    return level


def _ip_address(ip: Any, legacy: dict[str, Any]) -> str | None:
    """The address in inet's canonical form; any other spelling is kept raw, and one inet
    cannot hold (not an address, an IPv6 zone as in ``fe80::1%eth0``) only raw."""
    if ip is None:
        return None
    try:
        parsed = ipaddress.ip_address(ip) if isinstance(ip, str) else None
    except ValueError:
        parsed = None
    ip_address = None if parsed is None or getattr(parsed, "scope_id", None) else str(parsed)
    if ip_address is None or ip_address != ip:
        legacy["ip_raw"] = ip
    return ip_address


def _storable_legacy(legacy: dict[str, Any], escaped: list[str]) -> dict[str, Any]:
    """``legacy`` escaped as a whole when any of it must be, with the escaped fields."""
    legacy_escaped, changed = escape_json(legacy)
    if changed:
        legacy = legacy_escaped
        escaped.append("legacy")
    if escaped:
        legacy["escaped"] = escaped
    return legacy


def iter_log_file(path: Path, inv: Inventory, report: Report) -> Iterator[LogRow]:
    """Stream one .jsonl file line by line (a multi-GB log never sits in memory)."""
    rel = path.name
    try:
        fd = open_inside(path, inv)  # never through a symlink swapped in after the scan
    except OSError as exc:
        report.quarantine(f"logs/{rel}", "unreadable", exc.strerror or str(exc))
        return
    fallback = mtime(path)
    previous = None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            report.quarantine(f"logs/{rel}", "empty file", "0 bytes")
            return
        for number, raw_line in enumerate(fh, start=1):
            if number == 1 and raw_line.startswith(BOM):
                raw_line = raw_line[len(BOM):]
                report.note(f"logs/{rel}", "bom_stripped", "UTF-8 byte-order mark removed")
            if not raw_line.strip():
                continue
            where = f"logs/{rel}:{number}"
            try:
                doc = loads(raw_line.decode("utf-8"))
            except ValueError as exc:  # UnicodeDecodeError included
                report.quarantine(where, "invalid log line", str(exc))
                continue
            if not isinstance(doc, dict):
                report.quarantine(where, "invalid log line", "not a JSON object")
                continue
            try:
                row = log_from_line(doc, f"{rel}:{number}", previous, fallback)
            except RecursionError:
                report.quarantine(where, "nested too deeply",
                                  "a value nests too deeply to normalise")
                continue
            previous = row.created_at
            report.add("logs")
            yield row


def iter_logs(inv: Inventory, report: Report) -> Iterator[LogRow]:
    for path in inv.logs:
        yield from iter_log_file(path, inv, report)

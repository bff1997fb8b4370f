"""memory/<user_key>.json files -> one normalised :class:`UserRow` per user.

Identity: the file's ``user_id`` (Clerk id); else the file name when it is not an
e-mail address; else the e-mail, matched to a Clerk id through the other memory files
(early files were named by e-mail). Several files for one user are merged key by key;
the file named by the Clerk id wins, then the newer ``updated_at``.

Top-level keys outside the documented ones are kept as ``user_memory`` rows of type
``legacy`` so nothing is lost and export can write them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from donnadb.legacy.files import Inventory, mtime, read_json_object
from donnadb.legacy.model import MemoryRow, UserRow
from donnadb.legacy.normalise import (
    escape_str,
    memory_uuid,
    parse_timestamp,
    user_uuid,
    wrap_memory_value,
)
from donnadb.legacy.report import Report

KNOWN_KEYS = ("user_id", "email", "name", "profile", "preferences", "context", "expires",
              "updated_at", "created_at", "status", "last_active_at")
STATUS_MAX = 50
SECTIONS = ("profile", "preferences", "context")
LEGACY_TYPE = "legacy"
#: The legacy row listing the keys user_memory.key cannot hold.
UNSTORABLE_KEYS = "unstorable_keys"
KEY_MAX = 255
TEXT_MAX = 255


def storable_key(value: Any) -> bool:
    """``value`` can be a users.clerk_id / user_memory.key as it is (else it is kept raw)."""
    return isinstance(value, str) and 0 < len(value) <= KEY_MAX and not escape_str(value)[1]


def _identity(path: Path, doc: dict[str, Any]) -> tuple[str | None, str | None]:
    stem = path.name[:-5]
    clerk = doc.get("user_id") if storable_key(doc.get("user_id")) else None
    if clerk is None and "@" not in stem:
        clerk = stem
    email = doc.get("email") if isinstance(doc.get("email"), str) and doc["email"] else None
    if email is None and "@" in stem:
        email = stem
    return clerk, email


def group_memory_files(inv: Inventory, report: Report) -> dict[tuple[str, str], list[Path]]:
    """(kind, key) -> that user's memory files, highest priority last. Reads each file once
    (quarantining the unreadable) and keeps only paths."""
    seen: list[tuple[Path, str | None, str | None]] = []
    email_to_clerk: dict[str, str] = {}
    for path in inv.memory:
        doc = read_json_object(path, inv, report)
        if doc is None:
            continue
        clerk, email = _identity(path, doc)
        seen.append((path, clerk, email))
        if clerk and email:
            email_to_clerk.setdefault(email.lower(), clerk)
    groups: dict[tuple[str, str], list[tuple[tuple[int, str], Path]]] = {}
    for path, clerk, email in seen:
        if clerk is None and email and email.lower() in email_to_clerk:
            clerk = email_to_clerk[email.lower()]
            report.note(inv.rel(path), "memory_matched_by_email", f"belongs to {clerk}")
        ident = ("clerk", clerk) if clerk else ("email", (email or "").lower())
        named_by_id = path.name[:-5] == clerk
        groups.setdefault(ident, []).append(((1 if named_by_id else 0, path.name), path))
    return {k: [p for _, p in sorted(v)] for k, v in sorted(groups.items())}


def _merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Lowest priority first; sections merge key by key, scalars: later non-null wins."""
    merged: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if key in (*SECTIONS, "expires") and isinstance(value, dict) \
                    and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif value is not None or key not in merged:
                merged[key] = value
    return merged


def user_from_files(ident: tuple[str, str], paths: list[Path], inv: Inventory,
                    report: Report) -> UserRow | None:
    """Merge one user's memory files into a row (None when every file is quarantined)."""
    quiet = Report()  # problems were reported by group_memory_files already
    docs = [d for d in (read_json_object(p, inv, quiet) for p in paths) if d is not None]
    if not docs:
        return None
    doc = _merge(docs)
    clerk = ident[1] if ident[0] == "clerk" else None
    email = doc.get("email") if isinstance(doc.get("email"), str) else None
    if email is None and ident[0] == "email" and ident[1]:
        email = ident[1]
    rel = inv.rel(paths[-1])
    file_time = max(mtime(p) for p in paths)
    versions = _latest([parse_timestamp(d.get("updated_at")) for d in docs])
    updated = versions or file_time
    created = parse_timestamp(doc.get("created_at")) or updated
    uid = user_uuid(clerk, email)
    legacy_rows: dict[str, Any] = {k: v for k, v in doc.items() if k not in KNOWN_KEYS}
    # Keys user_memory.key cannot hold (and a key spelled like the list itself) are kept
    # in one legacy row, as {"type": None (top level) or the section, "key", "value"}.
    unstorable: list[dict[str, Any]] = [
        {"type": None, "key": k, "value": legacy_rows.pop(k)} for k in list(legacy_rows)
        if k == UNSTORABLE_KEYS or len(k) > KEY_MAX or escape_str(k)[1]]
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        value = doc.get(name)
        if value is None:
            sections[name] = {}
        elif isinstance(value, dict):
            sections[name] = value
        else:
            sections[name] = {}
            legacy_rows[name] = value
            report.note(rel, "memory_section_not_object", f"{name} kept as a legacy row")
    name_value = doc.get("name") if isinstance(doc.get("name"), str) else None
    for field, value in (("email", email), ("name", name_value)):
        if value is not None and (len(value) > TEXT_MAX or escape_str(value)[1]):
            legacy_rows[field] = value
            report.note(rel, "memory_field_unstorable", f"{field} kept as a legacy row")
    if email is not None and "email" in legacy_rows:
        email = None
    if name_value is not None and "name" in legacy_rows:
        name_value = None
    for field in ("email", "name"):
        if field in doc and not isinstance(doc[field], str) and doc[field] is not None:
            legacy_rows[field] = doc[field]
    if "user_id" in doc and doc["user_id"] is not None and not storable_key(doc["user_id"]):
        legacy_rows["user_id"] = doc["user_id"]  # not a Clerk id users.clerk_id can hold
    expires = doc.get("expires") or {}
    if not isinstance(expires, dict):
        legacy_rows["expires"], expires = expires, {}
    used: set[str] = set()
    rows: list[MemoryRow] = []
    for mtype, entries in sections.items():
        for key, value in entries.items():
            exp_key = f"{mtype}.{key}"
            expires_at = parse_timestamp(expires.get(exp_key))
            if exp_key in expires and expires_at is not None:
                used.add(exp_key)
            if len(key) > KEY_MAX or escape_str(key)[1]:
                unstorable.append({"type": mtype, "key": key, "value": value})
                continue
            rows.append(MemoryRow(memory_uuid(uid, mtype, key), mtype, key,
                                  wrap_memory_value(value), updated, updated, expires_at))
    if unstorable:
        legacy_rows[UNSTORABLE_KEYS] = unstorable
        report.note(rel, "memory_key_unstorable", "keys kept in a legacy row")
    leftover = {k: v for k, v in expires.items() if k not in used}
    if leftover:
        legacy_rows["expires"] = leftover
        report.note(rel, "memory_expires_unmatched", ", ".join(sorted(leftover))[:200])
    for key, value in sorted(legacy_rows.items()):
        rows.append(MemoryRow(memory_uuid(uid, LEGACY_TYPE, key), LEGACY_TYPE, key,
                              wrap_memory_value(value), updated, updated, None))
    profile = {k: wrap_memory_value(v) for k, v in sections["profile"].items()
               if len(k) <= KEY_MAX and not escape_str(k)[1]}
    preferences = {k: wrap_memory_value(v) for k, v in sections["preferences"].items()
                   if len(k) <= KEY_MAX and not escape_str(k)[1]}
    status = doc.get("status")
    if status is not None and not (isinstance(status, str) and 0 < len(status) <= STATUS_MAX
                                   and not escape_str(status)[1]):
        rows.append(MemoryRow(memory_uuid(uid, LEGACY_TYPE, "status"), LEGACY_TYPE, "status",
                              wrap_memory_value(status), updated, updated, None))
        status = None
    last_active = parse_timestamp(doc.get("last_active_at"))
    if doc.get("last_active_at") is not None and last_active is None:
        rows.append(MemoryRow(memory_uuid(uid, LEGACY_TYPE, "last_active_at"), LEGACY_TYPE,
                              "last_active_at", wrap_memory_value(doc["last_active_at"]),
                              updated, updated, None))
    return UserRow(id=uid, clerk_id=clerk, email=email, name=name_value, profile=profile,
                   preferences=preferences, created_at=min(created, updated),
                   updated_at=updated, memory=rows,
                   source_paths=[inv.rel(p) for p in paths], status=status or "active",
                   last_active_at=last_active, versioned=versions is not None)


def _latest(values: list[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def iter_users(inv: Inventory, report: Report) -> Iterator[UserRow]:
    """Every user that has at least one readable memory file, in identity order."""
    for ident, paths in group_memory_files(inv, report).items():
        try:
            user = user_from_files(ident, paths, inv, report)
        except RecursionError:
            report.quarantine(inv.rel(paths[-1]), "nested too deeply",
                              "a value nests too deeply to normalise")
            continue
        if user is not None:
            report.add("users")
            report.add("memory_entries", len(user.memory))
            yield user



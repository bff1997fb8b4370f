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
from uuid import UUID

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
    rel = inv.rel(paths[-1])
    versions = _latest([parse_timestamp(d.get("updated_at")) for d in docs])
    updated = versions or max(mtime(p) for p in paths)
    created = parse_timestamp(doc.get("created_at")) or updated
    clerk = ident[1] if ident[0] == "clerk" else None
    email = _email(doc, ident)
    uid = user_uuid(clerk, email)
    legacy_rows, unstorable = _unknown_keys(doc)
    sections = _sections(doc, legacy_rows, rel, report)
    email = _storable_text(email, "email", legacy_rows, rel, report)
    name = _storable_text(_text(doc, "name"), "name", legacy_rows, rel, report)
    _keep_raw_identity(doc, legacy_rows)
    expires = _expires(doc, legacy_rows)
    rows, used = _section_rows(uid, sections, expires, updated, unstorable)
    _keep_leftovers(legacy_rows, unstorable, expires, used, rel, report)
    rows += [_legacy_row(uid, key, value, updated) for key, value in sorted(legacy_rows.items())]
    status = doc.get("status")
    if status is not None and not _storable_status(status):
        rows.append(_legacy_row(uid, "status", status, updated))
        status = None
    last_active = parse_timestamp(doc.get("last_active_at"))
    if doc.get("last_active_at") is not None and last_active is None:
        rows.append(_legacy_row(uid, "last_active_at", doc["last_active_at"], updated))
    return UserRow(id=uid, clerk_id=clerk, email=email, name=name,
                   profile=_storable_section(sections["profile"]),
                   preferences=_storable_section(sections["preferences"]),
                   created_at=min(created, updated), updated_at=updated, memory=rows,
                   source_paths=[inv.rel(p) for p in paths], status=status or "active",
                   last_active_at=last_active, versioned=versions is not None)


def _fits_key(key: str) -> bool:
    """``key`` can be a user_memory.key as it is."""
    return len(key) <= KEY_MAX and not escape_str(key)[1]


def _text(doc: dict[str, Any], field: str) -> str | None:
    value = doc.get(field)
    return value if isinstance(value, str) else None


def _email(doc: dict[str, Any], ident: tuple[str, str]) -> str | None:
    """The file's e-mail, else the one the user is identified by."""
    email = _text(doc, "email")
    if email is None and ident[0] == "email" and ident[1]:
        return ident[1]
    return email


def _unknown_keys(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(legacy rows of the top-level keys outside :data:`KNOWN_KEYS`, the unstorable ones).

    Keys user_memory.key cannot hold (and a key spelled like the list itself) are kept in
    one legacy row, as ``{"type": None (top level) or the section, "key", "value"}``.
    """
    legacy_rows = {k: v for k, v in doc.items() if k not in KNOWN_KEYS}
    unstorable = [{"type": None, "key": k, "value": legacy_rows.pop(k)} for k in list(legacy_rows)
                  if k == UNSTORABLE_KEYS or not _fits_key(k)]
    return legacy_rows, unstorable


def _sections(doc: dict[str, Any], legacy_rows: dict[str, Any], rel: str,
              report: Report) -> dict[str, dict[str, Any]]:
    """Each of :data:`SECTIONS` as an object; one that is not is kept as a legacy row."""
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        value = doc.get(name)
        if value is None or isinstance(value, dict):
            sections[name] = {} if value is None else value
            continue
        sections[name] = {}
        legacy_rows[name] = value
        report.note(rel, "memory_section_not_object", f"{name} kept as a legacy row")
    return sections


def _storable_text(value: str | None, field: str, legacy_rows: dict[str, Any], rel: str,
                   report: Report) -> str | None:
    """``value`` when its users column can hold it, else None (kept as a legacy row)."""
    if value is None or (len(value) <= TEXT_MAX and not escape_str(value)[1]):
        return value
    legacy_rows[field] = value
    report.note(rel, "memory_field_unstorable", f"{field} kept as a legacy row")
    return None


def _keep_raw_identity(doc: dict[str, Any], legacy_rows: dict[str, Any]) -> None:
    """An e-mail or name that is not text, and a ``user_id`` that is not a Clerk id
    users.clerk_id can hold, are kept as legacy rows."""
    for field in ("email", "name"):
        if field in doc and not isinstance(doc[field], str) and doc[field] is not None:
            legacy_rows[field] = doc[field]
    if "user_id" in doc and doc["user_id"] is not None and not storable_key(doc["user_id"]):
        legacy_rows["user_id"] = doc["user_id"]


def _expires(doc: dict[str, Any], legacy_rows: dict[str, Any]) -> dict[str, Any]:
    """The ``expires`` object (one that is not an object is kept as a legacy row)."""
    expires = doc.get("expires") or {}
    if not isinstance(expires, dict):
        legacy_rows["expires"] = expires
        return {}
    return expires


def _section_rows(uid: UUID, sections: dict[str, dict[str, Any]], expires: dict[str, Any],
                  updated: datetime, unstorable: list[dict[str, Any]],
                  ) -> tuple[list[MemoryRow], set[str]]:
    """(one row per section key, the ``expires`` keys those rows took their expiry from);
    keys user_memory.key cannot hold are appended to ``unstorable`` instead."""
    used: set[str] = set()
    rows: list[MemoryRow] = []
    for mtype, entries in sections.items():
        for key, value in entries.items():
            exp_key = f"{mtype}.{key}"
            expires_at = parse_timestamp(expires.get(exp_key))
            if exp_key in expires and expires_at is not None:
                used.add(exp_key)
            if not _fits_key(key):
                unstorable.append({"type": mtype, "key": key, "value": value})
                continue
            rows.append(MemoryRow(memory_uuid(uid, mtype, key), mtype, key,
                                  wrap_memory_value(value), updated, updated, expires_at))
    return rows, used


def _keep_leftovers(legacy_rows: dict[str, Any], unstorable: list[dict[str, Any]],
                    expires: dict[str, Any], used: set[str], rel: str, report: Report) -> None:
    """The unstorable keys, and expiries no row took, become legacy rows."""
    if unstorable:
        legacy_rows[UNSTORABLE_KEYS] = unstorable
        report.note(rel, "memory_key_unstorable", "keys kept in a legacy row")
    leftover = {k: v for k, v in expires.items() if k not in used}
    if leftover:
        legacy_rows["expires"] = leftover
        report.note(rel, "memory_expires_unmatched", ", ".join(sorted(leftover))[:200])


def _legacy_row(uid: UUID, key: str, value: Any, updated: datetime) -> MemoryRow:
    return MemoryRow(memory_uuid(uid, LEGACY_TYPE, key), LEGACY_TYPE, key,
                     wrap_memory_value(value), updated, updated, None)


def _storable_section(entries: dict[str, Any]) -> dict[str, Any]:
    """A profile/preferences object as its users column holds it (storable keys only)."""
    return {k: wrap_memory_value(v) for k, v in entries.items() if _fits_key(k)}


def _storable_status(status: Any) -> bool:
    return isinstance(status, str) and 0 < len(status) <= STATUS_MAX \
        and not escape_str(status)[1]


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



"""Finding and decoding the legacy files: one directory walk, nothing held but paths.

A file that cannot be read as intended (empty, cut short, editor backup, not UTF-8,
not a JSON object) is quarantined in the :class:`~donnadb.legacy.report.Report`; a
UTF-8 byte-order mark is stripped and noted (the content is intact, so it is imported).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donnadb.errors import UsageError
from donnadb.legacy.report import Report

BOM = b"\xef\xbb\xbf"
#: The folders the import reads; generated_pages/ is app output and stays on disk.
FOLDERS = ("chat_sessions", "memory", "chat_history", "conversations", "logs")


@dataclass
class ChatSources:
    """Every file that holds one chat_id, in priority order of the duplicate rule."""

    session: Path | None = None
    conversations: list[tuple[str, Path]] = field(default_factory=list)
    transcript: Path | None = None


@dataclass
class Inventory:
    """Paths found by :func:`scan`: small (one entry per file), never file contents."""

    root: Path
    memory: list[Path] = field(default_factory=list)
    chats: dict[str, ChatSources] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    def chat_ids(self) -> list[str]:
        # Code-point order: the same order PostgreSQL's "C" collation gives.
        return sorted(self.chats)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def _is_editor_backup(name: str) -> bool:
    return name.endswith("~") or name.startswith(".#") or (
        name.startswith("#") and name.endswith("#")
    ) or name.endswith((".swp", ".swo", ".bak", ".orig"))


def _check_perms(path: Path, st: os.stat_result, inv: Inventory, report: Report) -> None:
    if st.st_mode & stat.S_IWOTH:
        report.permissions(inv.rel(path) if path != inv.root else ".")


def _entries(folder: Path, inv: Inventory, report: Report, suffix: str) -> list[Path]:
    """Regular files ending in ``suffix`` directly in ``folder``; others are quarantined."""
    found = []
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                # Gone since the listing: the application's atomic write renamed its
                # temporary file into place (import or verify while the app runs).
                continue
            _check_perms(path, st, inv, report)
            if entry.is_dir(follow_symlinks=False):
                continue
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                report.quarantine(shown, "file name not UTF-8", "rename it to import it")
                continue
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                report.quarantine(inv.rel(path), "temporary file",
                                  "left by an interrupted atomic write; ignored")
            elif _is_editor_backup(entry.name):
                report.quarantine(inv.rel(path), "editor backup", "not the live file; ignored")
            elif not entry.is_file(follow_symlinks=False):
                report.quarantine(inv.rel(path), "not a regular file", "symlink or special file")
            elif not entry.name.endswith(suffix) or entry.name == suffix:
                report.quarantine(inv.rel(path), "unexpected file", f"expected *{suffix}")
            else:
                found.append(path)
    return found


def _real_dir(path: Path) -> bool:
    """A directory, and not through a symlink."""
    return path.is_dir() and not path.is_symlink()


def scan(data_dir: Path, report: Report) -> Inventory:
    """Walk DATA_DIR once and classify every file.

    :raises UsageError: DATA_DIR does not exist or is not a directory.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"data directory {root} does not exist; pass --data-dir or set DATA_DIR")
    inv = Inventory(root=root.resolve())
    report.data_dir = str(inv.root)
    _check_perms(inv.root, inv.root.stat(), inv, report)
    for folder in FOLDERS:
        path = inv.root / folder
        if path.is_symlink():
            # Its files would come from outside DATA_DIR: nothing in it is read.
            report.quarantine(folder, "not a regular folder", "a symlink; not followed")
        elif path.is_dir():
            _check_perms(path, path.stat(), inv, report)
    if _real_dir(inv.root / "memory"):
        inv.memory = _entries(inv.root / "memory", inv, report, ".json")
    if _real_dir(inv.root / "chat_sessions"):
        for path in _entries(inv.root / "chat_sessions", inv, report, ".json"):
            inv.chats.setdefault(path.name[:-5], ChatSources()).session = path
    conv = inv.root / "conversations"
    if _real_dir(conv):
        for user_dir in sorted(p for p in conv.iterdir() if _real_dir(p)):
            _check_perms(user_dir, user_dir.stat(), inv, report)
            for path in _entries(user_dir, inv, report, ".json"):
                sources = inv.chats.setdefault(path.name[:-5], ChatSources())
                sources.conversations.append((user_dir.name, path))
        for stray in sorted(p for p in conv.iterdir() if not _real_dir(p)):
            report.quarantine(inv.rel(stray), "unexpected file",
                              "expected <user>/<chat_id>.json (a folder, not a symlink)")
    if _real_dir(inv.root / "chat_history"):
        for path in _entries(inv.root / "chat_history", inv, report, ".txt"):
            inv.chats.setdefault(path.name[:-4], ChatSources()).transcript = path
    if _real_dir(inv.root / "logs"):
        inv.logs = _entries(inv.root / "logs", inv, report, ".jsonl")
    return inv


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (PostgreSQL jsonb cannot store it)")


#: A number a float may not hold (an exponent of 3+ digits, 300+ digits in a row): only
#: text holding one is parsed with the checked float parser (the common path is not).
_FLOAT_RANGE_RISK = re.compile(r"\d[eE][+-]?\d{3}|\d{300}")


def _checked_float(text: str) -> float:
    value = float(text)
    mantissa = re.split("[eE]", text, maxsplit=1)[0]
    if math.isinf(value) or (value == 0 and mantissa.strip("-+0.")):
        raise ValueError(f"the number {text[:40]} is beyond what this import keeps exactly "
                         "(a 64-bit float)")
    return value


def open_inside(path: Path, inv: Inventory) -> int:
    """A read-only fd for ``path`` (a file under DATA_DIR), opened one component at a
    time from DATA_DIR with ``O_NOFOLLOW``: a file or folder swapped for a symlink after
    the scan (the import often runs as root over a directory others can write) fails
    instead of reading what the link points to; so does anything but a regular file.

    :raises OSError: a component is a symlink (ELOOP/ENOTDIR), missing, unreadable, or
        the file is not a regular file.
    """
    parts = path.relative_to(inv.root).parts
    fd = os.open(inv.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        # O_NONBLOCK: a FIFO planted there must not hang the import.
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise OSError(f"{path.name} is not a regular file")
    os.set_blocking(leaf, True)
    return leaf


def read_text(path: Path, inv: Inventory, report: Report) -> str | None:
    """The file as text (BOM stripped and noted), or None when quarantined."""
    rel = inv.rel(path)
    try:
        with os.fdopen(open_inside(path, inv), "rb") as fh:
            raw = fh.read()
    except OSError as exc:  # permission denied, or a symlink swapped in after the scan
        report.quarantine(rel, "unreadable", exc.strerror or str(exc))
        return None
    if not raw.strip():
        report.quarantine(rel, "empty file", f"{len(raw)} bytes")
        return None
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
        report.note(rel, "bom_stripped", "UTF-8 byte-order mark removed before parsing")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.quarantine(rel, "not UTF-8", str(exc))
        return None


def loads(text: str) -> Any:
    """json.loads that rejects NaN/Infinity (jsonb has no such numbers).

    :raises ValueError: not JSON, a number a float cannot hold (1e400, 1e-400), or nested
        deeper than Python's recursion limit allows.
    """
    try:
        if _FLOAT_RANGE_RISK.search(text):
            return json.loads(text, parse_constant=_reject_constant,
                              parse_float=_checked_float)
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply to be read (about a thousand levels)") from None


def read_json_object(path: Path, inv: Inventory, report: Report) -> dict[str, Any] | None:
    """The file's JSON object, or None when quarantined (reason in ``report``)."""
    text = read_text(path, inv, report)
    if text is None:
        return None
    try:
        doc = loads(text)
    except ValueError as exc:
        report.quarantine(inv.rel(path), "invalid JSON", f"truncated, corrupt or too large: {exc}")
        return None
    if not isinstance(doc, dict):
        report.quarantine(inv.rel(path), "not a JSON object", type(doc).__name__)
        return None
    return doc


def mtime(path: Path):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(path.lstat().st_mtime, UTC)

"""The dual-write reconcile queue: a JSONL file of what PostgreSQL missed.

Each line names an entity whose file copy PostgreSQL may not have::

    {"v": 1, "kind": "user", "clerk_id": "...", "op": "set_user_memory",
     "queued_at": "...", "error": "..."}
    {"v": 1, "kind": "chat", "chat_id": "...", ...}
    {"v": 1, "kind": "message", "chat_id": "...", "message_id": "...", ...}
    {"v": 1, "kind": "log", "source": "donnadb-<day>-<token>.jsonl:LINE", ...}

The line records *which* entity, not the values: reconcile copies the entity's current
state from the files (the source of truth), so replaying is idempotent and a stale
entry can never overwrite newer data. Appends are flock-serialised, O_APPEND and
fsync'd; the file and its folder are 0600/0700.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from donnadb.dal import fileio
from donnadb.dal.errors import LockTimeout
from donnadb.dal.mirrorstats import OP_ENTITY
from donnadb.dal.values import format_timestamp, now_utc, parse_timestamp
from donnadb.errors import UsageError

log = logging.getLogger(__name__)

#: The entity a queued entry holds back, by its kind; a "user" entry is a whole memory
#: file, counted as memory when only memory writes queued it (see :func:`entry_entity`).
KIND_ENTITY = {"user": "users", "chat": "chats", "message": "messages", "log": "logs"}


def default_path(data_dir: Path) -> Path:
    """Where dual-write queues when MIGRATION_RECONCILE_QUEUE is not set."""
    return Path(data_dir) / ".dualwrite" / "pending.jsonl"


def entry_entity(entry: dict[str, Any]) -> str | None:
    """The entity (phases.ENTITIES) a queued entry belongs to; None for an unknown kind."""
    kind = entry.get("kind")
    entity = KIND_ENTITY.get(kind) if isinstance(kind, str) else None
    if entity == "users":
        ops = {OP_ENTITY.get(op) for op in str(entry.get("op", "")).split("+")}
        if "memory" in ops and "users" not in ops:
            return "memory"
    return entity


class ReconcileQueue:
    """``pending.jsonl`` plus its lock files in one private folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.folder = self.path.parent
        self._lock = self.folder / f"{self.path.name}.lock"
        self._run_lock = self.folder / f"{self.path.name}.reconcile.lock"

    def _ensure(self) -> None:
        fileio.ensure_dir(self.folder)

    def append(self, entries: Iterable[dict[str, Any]], *, op: str, error: str) -> None:
        """Durably add ``entries`` (each with ``kind`` and its keys)."""
        stamp = format_timestamp(now_utc())
        lines = [
            json.dumps({"v": 1, **e, "op": op, "queued_at": stamp, "error": error[:500]},
                       ensure_ascii=True) + "\n"
            for e in entries
        ]
        if not lines:
            return
        self._ensure()
        fd = fileio.acquire(self._lock)
        try:
            out = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                          fileio.FILE_MODE)
            try:
                os.fchmod(out, fileio.FILE_MODE)
                os.write(out, "".join(lines).encode("ascii"))
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            fileio.release(fd)

    def count(self) -> int:
        """Entries waiting (pending plus any batch a crashed reconcile left behind)."""
        total = 0
        for path in self._batch_files() + ([self.path] if self.path.exists() else []):
            with path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        return total

    def backlog(self) -> dict[str, dict[str, Any]]:
        """``{entity: {"entries": n, "oldest": datetime | None}}`` of every waiting entry
        (pending plus unfinished batches); entities with none are left out, and a
        missing folder or file is an empty queue.

        Read without the queue's lock, so no write of the application ever waits for a
        reader: the pending file is opened before the batches are listed, and a file
        met twice (a reconcile renamed it in between) is read once; a batch deleted
        meanwhile was replayed; a last line without its newline is an append under way.

        :raises OSError: the folder or a file cannot be read (permissions).
        """
        with contextlib.ExitStack() as stack:
            handles = []
            with contextlib.suppress(FileNotFoundError):
                handles.append(stack.enter_context(self.path.open("rb")))
            for path in self._batch_files():
                with contextlib.suppress(FileNotFoundError):
                    handles.append(stack.enter_context(path.open("rb")))
            return _tally(handles)

    def _batch_files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(self.folder.glob(f"{self.path.name}.*.processing"))

    @contextlib.contextmanager
    def claim(self) -> Iterator[list[dict[str, Any]]]:
        """Take every queued entry for one reconcile run.

        The pending file is renamed to a ``.processing`` batch (appends go on into a new
        pending file meanwhile); on a clean exit the batches are deleted, so the caller
        must :meth:`append` back whatever it could not replay first. A crash leaves the
        batches, and the next run replays them again (replays are idempotent).

        :raises UsageError: another reconcile is running.
        """
        self._ensure()
        try:
            run_fd = fileio.acquire(self._run_lock, timeout=0)
        except LockTimeout:
            raise UsageError("another reconcile is running; wait for it to finish") from None
        try:
            fd = fileio.acquire(self._lock)
            try:
                if self.path.exists():
                    os.replace(self.path,
                               self.folder / f"{self.path.name}.{uuid.uuid4().hex}.processing")
                    fileio.fsync_dir(self.folder)
            finally:
                fileio.release(fd)
            batches = self._batch_files()
            entries = []
            for path in batches:
                entries.extend(_read_lines(path))
            yield entries
            for path in batches:
                fileio.remove(path)
        finally:
            fileio.release(run_fd)


def _tally(handles: list[Any]) -> dict[str, dict[str, Any]]:
    tally: dict[str, dict[str, Any]] = {}
    seen = set()
    for fh in handles:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        for line in fh:
            if not line.endswith(b"\n") or not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                continue
            entity = entry_entity(entry) if isinstance(entry, dict) else None
            if entity is None:
                continue
            at = parse_timestamp(entry.get("queued_at"))
            seen_for = tally.setdefault(entity, {"entries": 0, "oldest": None})
            seen_for["entries"] += 1
            if at is not None and (seen_for["oldest"] is None or at < seen_for["oldest"]):
                seen_for["oldest"] = at
    return tally


def _read_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                # Only a crash mid-append cuts a line; `migrate-data verify` finds that entity.
                log.warning("skipping unreadable line %d of %s", number, path)
                continue
            if isinstance(entry, dict) and "kind" in entry:
                entries.append(entry)
    return entries

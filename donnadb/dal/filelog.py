"""The file store's system log: legacy ``logs/*.jsonl`` lines (one JSON object a line).

Each :class:`LogFile` (one per FileDataAccess and process) appends to a file of its own,
``logs/donnadb-<UTC day>-<token>.jsonl``. Owning the file is what lets it number its
lines without reading the file or locking out other writers, and the number names the
line: ``FILE:LINE`` is the line's *source*, from which the import and dual-write derive
the same system_logs id (:func:`~donnadb.dal.values.legacy_log_id`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from donnadb.dal import fileio
from donnadb.errors import DataError

_SOURCE_RE = re.compile(r"^(donnadb-[0-9-]{10}-[0-9a-f]{12}\.jsonl):([1-9][0-9]*)$")


class LogFile:
    """Appends log lines durably (O_APPEND, fsync per line); thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name = ""
        self._day = ""
        self._pid = 0
        self._lines = 0

    def append(self, line: dict[str, Any]) -> str:
        """Write ``line`` (a :func:`~donnadb.dal.values.log_line` object); return its source.

        :raises OSError: the write failed (disk full...): the next line starts a new file,
            so a torn last line never shifts the numbers of the lines after it.
        """
        payload = fileio.dump_json(line) + b"\n"
        with self._lock:
            day = line["ts"][:10]
            # A forked child must not share its parent's file (nor its line count).
            if self._fd is None or self._pid != os.getpid() or self._day != day:
                self._open(day)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError:
                self._close_fd()
                raise
            self._lines += 1
            return f"{self._name}:{self._lines}"

    def _open(self, day: str) -> None:
        self._close_fd()
        fileio.ensure_dir(self.folder)
        name = f"donnadb-{day}-{uuid.uuid4().hex[:12]}.jsonl"
        self._fd = os.open(self.folder / name,
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           fileio.FILE_MODE)
        fileio.fsync_dir(self.folder)
        self._name, self._day, self._pid, self._lines = name, day, os.getpid(), 0

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def _close_fd(self) -> None:
        # A forked child's copy of the parent's fd is closed too; only the parent's own
        # count and name matter, and the child opens a file of its own.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


def read_line(folder: Path, source: str) -> dict[str, Any] | None:
    """The object written as ``source`` (``FILE:LINE``); None when the file or line is gone.

    :raises DataError: ``source`` does not name a line this store wrote, or the line is
        not a JSON object.
    """
    m = _SOURCE_RE.match(source)
    if m is None:
        raise DataError(f"{source!r} is not a log line written by donnadb (FILE.jsonl:LINE)")
    wanted = int(m.group(2))
    try:
        with (folder / m.group(1)).open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number == wanted:
                    return _parse(source, raw)
    except FileNotFoundError:
        return None
    return None


def _parse(source: str, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"log line {source} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"log line {source} is not a JSON object")
    return doc

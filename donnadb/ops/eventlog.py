"""Structured JSON logs for every donnactl command, each line carrying a trace id.

One JSON object per line goes to ``OPS_LOG_FILE`` (0600, directory 0700); events
that change data are also written to ``system_logs`` inside the transaction that
made the change (:func:`record_event`), so the audit trail commits or rolls back
with the work it describes. The trace id comes from ``DONNADB_TRACE_ID`` when a
caller wants to correlate, otherwise it is new per command.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("donnadb_trace_id", default="")

#: The log record attributes of the stdlib; anything else passed through ``extra`` is context.
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

INSERT_SYSTEM_LOG = """
INSERT INTO system_logs (level, message, context, trace_id)
VALUES (%(level)s, %(message)s, %(context)s, %(trace_id)s)
"""

_HANDLER_NAME = "donnadb-json"
_STDERR_NAME = "donnadb-stderr"


def trace_id() -> str:
    """The current command's trace id (a new one is made on first use)."""
    tid = _trace_id.get()
    if not tid:
        tid = os.environ.get("DONNADB_TRACE_ID") or uuid.uuid4().hex
        _trace_id.set(tid)
    return tid


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, trace id, context."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": trace_id(),
        }
        context = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}
        if context:
            doc["context"] = context
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, sort_keys=True)


class _JsonLinesHandler(logging.FileHandler):
    """The ``OPS_LOG_FILE`` handler. A line the disk refuses (full, failing) turns the
    log off for the rest of the command with one warning, rather than a traceback a
    record, and the file is cut back to its last whole line."""

    _size = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            self._size = os.fstat(self.stream.fileno()).st_size
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)  # a bug (a bad format): logging's own report
            return
        logger = logging.getLogger("donnadb")
        logger.removeHandler(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            # Close the descriptor under the buffer first: what it holds is dropped, not
            # written after the truncate as a torn line.
            with contextlib.suppress(OSError):
                os.close(stream.fileno())
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        with contextlib.suppress(OSError):
            os.truncate(self.baseFilename, self._size)
        logger.warning("structured log disabled: cannot write %s (%s)", self.baseFilename,
                       exc.strerror)


def _open_private(path: Path) -> None:
    """Create ``path`` (0600) and its directory (0700) if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)


def configure(log_file: Path, *, level: int = logging.INFO) -> str:
    """Send the ``donnadb`` logger's records as JSON lines to ``log_file``; return the trace id.

    Idempotent. When the file cannot be opened (a read-only host, an unprivileged
    user) logging stays off rather than breaking the command; the reason goes to stderr
    once through the stdlib's last-resort handler.
    """
    logger = logging.getLogger("donnadb")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
            handler.close()
    try:
        _open_private(log_file)
        handler = _JsonLinesHandler(log_file, encoding="utf-8")
    except OSError as exc:
        logger.warning("structured log disabled: cannot write %s (%s)", log_file, exc.strerror)
        return trace_id()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    # INFO lines belong in the file only; people see warnings once on stderr, and a
    # command's failure is printed by donnactl's main(), not again by the log.
    logger.propagate = False
    if not any(h.get_name() == _STDERR_NAME for h in logger.handlers):
        stderr = logging.StreamHandler()
        stderr.set_name(_STDERR_NAME)
        stderr.setLevel(logging.WARNING)
        stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        stderr.addFilter(lambda record: not hasattr(record, "command"))
        logger.addHandler(stderr)
    return trace_id()


def record_event(
    conn: psycopg.Connection, level: str, message: str, context: dict[str, Any]
) -> None:
    """Insert an audit row into ``system_logs`` on ``conn`` (inside its current transaction).

    :raises psycopg.Error: the insert failed; the caller's transaction is then aborted too,
        which is the point: no change without its record.
    """
    conn.execute(
        INSERT_SYSTEM_LOG,
        {"level": level, "message": message, "context": Jsonb(context), "trace_id": trace_id()},
    )
    logging.getLogger("donnadb.audit").info(message, extra={"audit": context})

"""Writing the database back into the legacy layout: the plan's rollback path.

Every chat goes back where it came from (chat_sessions/, conversations/<user>/ or
chat_history/), with the original spellings the import recorded under
``_donnadb_legacy`` (roles, raw timestamps, extra fields) and escaped text restored, so
import -> export -> import gives the same database. Logs go back to their file and
line. Files are created 0600 and folders 0700, whatever the umask.

Nothing is ever written outside ``--out``, whatever the database holds: every name taken
from a row (chat id, the legacy source folder, a user's clerk id or e-mail, a log file
name) must be one safe file name (:func:`donnadb.dal.fileio.check_file_name`), and every
folder and file is opened from ``--out``'s descriptor one component at a time with
``O_NOFOLLOW`` (files with ``O_EXCL``: nothing is overwritten). A record that fails stops
the export with a :class:`~donnadb.dal.fileio.UnsafeNameError` naming it, and ``--out`` is
left empty: a partial export must never pass for a rollback copy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from donnadb.dal.fileio import UnsafeNameError, check_file_name, create_under, sync_filesystem
from donnadb.dal.sealed import Sealer
from donnadb.errors import DataError, DiskWriteError, UsageError
from donnadb.legacy.chats import ORIGIN_FIELDS, ORIGIN_KEY, format_transcript
from donnadb.legacy.normalise import (
    ESCAPE_MARKER,
    LEGACY_KEY,
    iso,
    message_uuid,
    unescape_json,
    unescape_str,
    unwrap_memory_value,
)
from donnadb.legacy.sealing import Opener
from donnadb.legacy.users import LEGACY_TYPE, SECTIONS

EXPORT_CHATS = """
SELECT c.id, c.chat_id, u.clerk_id, c.title, c.profile, c.metadata, c.created_at, c.updated_at,
       c.status
  FROM chat_sessions AS c LEFT JOIN users AS u ON u.id = c.user_id
 ORDER BY c.chat_id COLLATE "C"
"""
EXPORT_MESSAGES = """
SELECT c.chat_id, m.id, m.sequence_number, m.role, m.content, m.metadata, m.created_at,
       m.token_count, m.abuse_flagged
  FROM messages AS m JOIN chat_sessions AS c ON c.id = m.chat_session_id
 ORDER BY c.chat_id COLLATE "C", m.sequence_number
"""
# With the user's wrapped data key: sealed values are opened (the files are plain).
EXPORT_USERS = """
SELECT u.id, u.clerk_id, u.email, u.name, u.profile, u.preferences, u.created_at,
       u.updated_at, u.status, u.last_active_at,
       EXISTS (SELECT 1 FROM chat_sessions AS c WHERE c.user_id = u.id) AS has_chats,
       u.email_sealed, u.name_sealed, u.kek_id, u.wrapped_key
  FROM users AS u
 ORDER BY u.id
"""
EXPORT_MEMORY = """
SELECT m.user_id, m.memory_type, m.key, m.value, m.expires_at, u.kek_id, u.wrapped_key
  FROM user_memory AS m JOIN users AS u ON u.id = m.user_id
 ORDER BY m.user_id, m.memory_type, m.key
"""
EXPORT_LOGS = """
SELECT context -> '_donnadb_legacy' ->> 'source' AS source, level, message, context, trace_id,
       host(ip_address), user_agent, request_uri, created_at
  FROM system_logs
 ORDER BY substring(context -> '_donnadb_legacy' ->> 'source' from '^(.*):[0-9]+$') NULLS LAST,
          (substring(context -> '_donnadb_legacy' ->> 'source' from ':([0-9]+)$'))::numeric,
          created_at, id
"""
LOG_ROWS = """
SELECT substring(context -> '_donnadb_legacy' ->> 'source' from '^([^/]+\\.jsonl):[0-9]+$'),
       count(*)
  FROM system_logs GROUP BY 1
"""
# \Z, not $: the same rows as LOG_ROWS counts (PostgreSQL's $ is the very end).
SOURCE_RE = re.compile(r"^(?P<file>[^/]+\.jsonl):(?P<line>[0-9]+)\Z")
DATABASE_ONLY_LOGS = "database-only.jsonl"
#: Blank lines an export may add to one log file beyond its rows, to keep every line at
#: its number (lines the import skipped or quarantined, rows deleted since). A row whose
#: line lies further out is refused: a planted ``x.jsonl:99999999999`` must not fill the
#: disk with blank lines.
DEFAULT_LOG_GAP_MARGIN = 1_000_000


@dataclass
class ExportSummary:
    out_dir: str
    written: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, n: int = 1) -> None:
        self.written[what] = self.written.get(what, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "written": self.written}


def _private_dir(path: Path) -> None:
    # mkdir(parents=True) would create the parents with the umask's mode: go level by level.
    if path.is_dir():
        return
    _private_dir(path.parent)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class _OutDir:
    """``--out`` opened once; every file is created below its descriptor (create_under)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def create(self, parts: tuple[str, ...], record: str) -> int:
        """A new 0600 file ``parts`` below --out, open for writing.

        :raises DataError: a record already wrote that file, or a component is a symlink.
        """
        try:
            return create_under(self.fd, parts)
        except FileExistsError:
            raise DataError(f"{record}: {'/'.join(parts)} is written by another record "
                            "too; rename one of them in the database") from None
        except OSError as exc:
            raise DataError(f"{record}: cannot create {'/'.join(parts)} in the export "
                            f"directory: {exc.strerror}") from None

    def write(self, parts: tuple[str, ...], data: bytes, record: str,
              mtime: float | None = None) -> None:
        with os.fdopen(self.create(parts, record), "wb") as fh:
            fh.write(data)
            fh.flush()
            if mtime is not None:
                os.utime(fh.fileno(), (mtime, mtime))

    def sync(self) -> None:
        """Every file and folder written below --out on disk.

        :raises OSError: the file system reports a write that failed.
        """
        sync_filesystem(self.fd)

    def discard(self) -> None:
        """Remove everything below --out (it was empty when the export began)."""
        for name in os.listdir(self.fd):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode):
                    shutil.rmtree(name, dir_fd=self.fd)  # never follows a symlink
                else:
                    os.unlink(name, dir_fd=self.fd)


def _dumps(doc: Any) -> bytes:
    # ensure_ascii writes NUL and lone surrogates as \u escapes: valid JSON, exact text.
    # Compact, as the application's file store writes (dal/fileio.py), and through
    # json's C encoder (an indent takes its pure-Python one).
    return json.dumps(doc, ensure_ascii=True).encode("ascii")


def _pop_legacy(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    meta = dict(meta)
    legacy = dict(meta.pop(LEGACY_KEY, {}) or {})
    escaped = legacy.pop("escaped", [])
    if "legacy" in escaped:
        legacy = unescape_json(legacy)
    return meta, legacy, escaped


def _timestamp(legacy: dict[str, Any], name: str, value) -> tuple[bool, Any]:
    """(write the key?, value) for a timestamp the import may have filled in."""
    state = legacy.get(name)
    if state == "missing":
        return False, None
    if state == "unparseable":
        raw = legacy.get(f"{name}_raw")
        return True, unescape_json(raw) if legacy.get(f"{name}_raw_escaped") else raw
    return True, iso(value)


def message_doc(chat_id, message_id, seq, role, content, meta, created, tokens,
                flagged) -> Any:
    """The legacy JSON form of one message row. Its id is written as ``"id"`` unless it
    is the position rule's (the import gives it back either way)."""
    meta, legacy, escaped = _pop_legacy(meta)
    if meta.pop(ESCAPE_MARKER, False):
        content = unescape_str(content)
    kind = legacy.get("content")
    value: Any = content
    if kind == "json":
        value = json.loads(content)
    elif kind == "null":
        value = None
    if legacy.get("not_an_object"):
        return value
    doc: dict[str, Any] = {}
    if message_id != message_uuid(chat_id, seq):
        doc["id"] = str(message_id)
    doc["role"] = legacy.get("role", role)
    if kind != "missing":
        doc["content"] = value
    write, stamp = _timestamp(legacy, "timestamp", created)
    if write:
        doc["timestamp"] = stamp
    if "metadata_raw" in legacy:
        doc["metadata"] = legacy["metadata_raw"]
    elif legacy.get("metadata") == "null":
        doc["metadata"] = None
    else:
        doc["metadata"] = unescape_json(meta) if "metadata" in escaped else meta
    if "tokens" in legacy:
        doc["tokens"] = legacy["tokens"]
    elif tokens is not None:
        doc["tokens"] = tokens
    if "flagged" in legacy:
        doc["flagged"] = legacy["flagged"]
    elif flagged:
        doc["flagged"] = True
    doc.update(legacy.get("extra", {}))
    return doc


def chat_doc(chat_id, clerk, title, profile, meta, created, updated,
             messages: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(legacy JSON document, the import's legacy record) of one chat."""
    meta, legacy, escaped = _pop_legacy(meta)
    doc: dict[str, Any] = {}
    if "chat_id" in legacy:
        if legacy["chat_id"] != "missing":
            doc["chat_id"] = legacy["chat_id"]
    else:
        doc["chat_id"] = chat_id
    doc["user_id"] = legacy.get("user_id", clerk)
    if "title_raw" in legacy:
        doc["title"] = legacy["title_raw"]
    else:
        title = legacy.get("title_full", title)
        doc["title"] = unescape_str(title) if title is not None and "title" in escaped else title
    if "profile_raw" in legacy:
        doc["profile"] = legacy["profile_raw"]
    elif legacy.get("profile") == "null":
        doc["profile"] = None
    else:
        profile = legacy.get("profile_full", profile)
        doc["profile"] = unescape_str(profile) if "profile" in escaped else profile
    for name, value in (("created_at", created), ("updated_at", updated)):
        write, stamp = _timestamp(legacy, name, value)
        if write:
            doc[name] = stamp
    if "metadata_raw" in legacy:
        doc["metadata"] = legacy["metadata_raw"]
    elif legacy.get("metadata") == "null":
        doc["metadata"] = None
    else:
        doc["metadata"] = unescape_json(meta) if "metadata" in escaped else meta
    if legacy.get("messages") != "missing":
        doc["messages"] = messages
    doc.update(legacy.get("extra", {}))
    return doc, legacy


def _transcript(doc: dict[str, Any], legacy: dict[str, Any]) -> bytes:
    lines = []
    for m in doc.get("messages", []):
        stamp = m.get("timestamp")
        if isinstance(stamp, str) and stamp.endswith("Z") and "T" in stamp:
            stamp = stamp[:19].replace("T", " ")
        lines.append({"timestamp": stamp, "role": m["role"], "content": m["content"]})
    return format_transcript(lines, legacy.get("preamble", "")).encode()


def _chat_parts(chat_id: str, legacy: dict[str, Any], app_layout: bool) -> tuple[str, ...]:
    """Where the chat goes below --out: in ``app_layout``, chat_sessions/ always.

    :raises UnsafeNameError: the chat id or the legacy source folder cannot be a file name.
    """
    source = None if app_layout else legacy.get("source")
    record = f"chat {chat_id[:80]!r}" if isinstance(chat_id, str) else f"chat {chat_id!r}"
    suffix = ".txt" if source == "chat_history" else ".json"
    name = check_file_name(chat_id, f"{record}: chat_id", suffix) + suffix
    if source == "chat_history":
        return ("chat_history", name)
    if isinstance(source, str) and source.startswith("conversations/"):
        folder = source.split("/")
        if len(folder) != 2:
            raise UnsafeNameError(f"{record}: legacy source {source[:120]!r} is not "
                                  "conversations/<user folder>")
        return ("conversations", check_file_name(folder[1], f"{record}: legacy source folder"),
                name)
    return ("chat_sessions", name)


def _grouped_messages(conn: psycopg.Connection) -> Iterator[tuple[str, list[Any]]]:
    with conn.cursor(name="export_messages") as cur:
        cur.itersize = 5000
        cur.execute(EXPORT_MESSAGES)
        current, batch = None, []
        for chat_id, *row in cur:
            if chat_id != current:
                if current is not None:
                    yield current, batch
                current, batch = chat_id, []
            batch.append(message_doc(chat_id, *row))
        if current is not None:
            yield current, batch


def _export_chats(conn: psycopg.Connection, out: _OutDir, summary: ExportSummary,
                  app_layout: bool) -> None:
    """Every chat with its messages. In ``app_layout`` each goes to chat_sessions/ as
    JSON, the one folder the application's file store serves, with its earlier place
    recorded (ORIGIN_KEY) for the import: a chat the import found only in
    conversations/ or chat_history/ was served from PostgreSQL and may have taken
    messages there, which a transcript could not even hold (ids, metadata, tokens)."""
    messages = _grouped_messages(conn)
    pending = next(messages, None)
    with conn.cursor(name="export_chats") as cur:
        cur.execute(EXPORT_CHATS)
        for _id, chat_id, clerk, title, profile, meta, created, updated, status in cur:
            msgs: list[Any] = []
            if pending is not None and pending[0] == chat_id:
                msgs = pending[1]
                pending = next(messages, None)
            doc, legacy = chat_doc(chat_id, clerk, title, profile, meta, created, updated, msgs)
            if "status_raw" in legacy:
                doc["status"] = legacy["status_raw"]
            elif status != "active":
                doc["status"] = status
            parts = _chat_parts(chat_id, legacy, app_layout)
            origin = {k: legacy[k] for k in ORIGIN_FIELDS if k in legacy}
            if app_layout and origin:
                doc[ORIGIN_KEY] = origin
            data = _transcript(doc, legacy) if parts[0] == "chat_history" else _dumps(doc)
            # The import took created_at from the file's mtime: give it back.
            stamp = created.astimezone(UTC).timestamp() \
                if legacy.get("created_at_from") == "file_mtime" else None
            out.write(parts, data, f"chat {chat_id!r}", stamp)
            summary.add("chats")
            summary.add("messages", len(msgs))


def _export_users(conn: psycopg.Connection, out: _OutDir, summary: ExportSummary,
                  opener: Opener) -> None:
    memory: dict[Any, list[tuple[str, str, Any, Any]]] = {}
    for user_id, mtype, key, value, expires, kek_id, wrapped in conn.execute(EXPORT_MEMORY):
        value = opener.memory(user_id, mtype, key, value, kek_id, wrapped)[0]
        memory.setdefault(user_id, []).append((mtype, key, value, expires))
    for uid, clerk, email, name, profile, prefs, created, updated, status, last_active, \
            has_chats, email_sealed, name_sealed, kek_id, wrapped in conn.execute(EXPORT_USERS):
        opened = opener.user(uid, email, name, email_sealed, name_sealed, profile, prefs,
                             kek_id, wrapped)
        email, name, profile, prefs = (opened.email, opened.name, opened.profile,
                                       opened.preferences)
        rows = memory.get(uid, [])
        if has_chats and not (rows or email or name or profile or prefs):
            continue  # known only from its chats: the import recreates it from them
        doc: dict[str, Any] = {"user_id": clerk, "email": email, "name": name}
        sections, expires_doc, extra = _memory_sections(profile, prefs, rows)
        top = _unstorable_keys(extra, sections)
        doc.update(sections)
        doc["expires"] = _with_leftover_expires(expires_doc, extra.pop("expires", None))
        doc["updated_at"] = iso(updated)
        doc["created_at"] = iso(created)
        if status != "active":
            doc["status"] = status
        if last_active is not None:
            doc["last_active_at"] = iso(last_active)
        doc.update(extra)  # raw sections, unstorable e-mail/name, unknown top-level keys
        doc.update(top)
        field_name, stem = next((f, v) for f, v in (("clerk_id", clerk), ("email", email),
                                                    ("id", str(uid))) if v)
        record = f"user {uid}"
        name = check_file_name(stem, f"{record}: {field_name}", ".json") + ".json"
        out.write(("memory", name), _dumps(doc), record)
        summary.add("users")
        summary.add("memory_entries", len(rows))


def _memory_sections(profile: dict[str, Any], prefs: dict[str, Any],
                     rows: list[tuple[str, str, Any, Any]],
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(sections, the expires object, legacy rows by key) of one user's memory rows."""
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    sections["profile"] = {k: unwrap_memory_value(v) for k, v in profile.items()}
    sections["preferences"] = {k: unwrap_memory_value(v) for k, v in prefs.items()}
    expires_doc: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for mtype, key, value, expires in rows:
        value = unwrap_memory_value(value)
        if mtype == LEGACY_TYPE:
            extra[key] = value
            continue
        sections.setdefault(mtype, {})[key] = value
        if expires is not None:
            expires_doc[f"{mtype}.{key}"] = iso(expires)
    return sections, expires_doc, extra


def _unstorable_keys(extra: dict[str, Any], sections: dict[str, dict[str, Any]]
                     ) -> dict[str, Any]:
    """Put the keys user_memory.key could not hold back into their sections; returns the
    top-level ones."""
    top: dict[str, Any] = {}
    for item in extra.pop("unstorable_keys", []):
        if item["type"] is None:  # a top-level key user_memory.key cannot hold
            top[item["key"]] = item["value"]
        else:
            sections.setdefault(item["type"], {})[item["key"]] = item["value"]
    return top


def _with_leftover_expires(expires_doc: dict[str, Any], leftover: Any) -> Any:
    """The expires object with the import's unmatched entries, or the file's non-object."""
    if isinstance(leftover, dict):
        expires_doc.update(leftover)
    elif leftover is not None:
        return leftover
    return expires_doc


def _log_doc(level, message, context, trace, ip, ua, uri, created) -> dict[str, Any]:
    context, legacy, escaped = _pop_legacy(context)
    doc: dict[str, Any] = {}
    write, stamp = _timestamp(legacy, "ts", created)
    if write:
        doc["ts"] = stamp
    if "level_raw" in legacy:
        doc["level"] = legacy["level_raw"]
    elif legacy.get("level") != "missing":
        doc["level"] = level
    if "message_raw" in legacy:
        doc["message"] = legacy["message_raw"]
    elif legacy.get("message") != "missing":
        doc["message"] = unescape_str(message) if "message" in escaped else message
    if "context_raw" in legacy:
        doc["context"] = legacy["context_raw"]
    elif legacy.get("context") == "null":
        doc["context"] = None
    else:
        doc["context"] = unescape_json(context) if "context" in escaped else context
    for name, value in (("trace_id", trace), ("user_agent", ua), ("uri", uri)):
        value = legacy.get(f"{name}_full", value)
        if f"{name}_raw" in legacy:
            doc[name] = legacy[f"{name}_raw"]
        elif value is not None:
            doc[name] = unescape_str(value) if name in escaped else value
    if "ip_raw" in legacy:
        doc["ip"] = legacy["ip_raw"]
    elif ip is not None:
        doc["ip"] = ip
    doc.update(legacy.get("extra", {}))
    return doc


def _line_number(source: str, line: str, rows: int, margin: int) -> int:
    """The line a log row goes to: at most ``rows + margin`` in its file.

    :raises DataError: the line lies further out (the message names the row).
    """
    if len(line) <= 18 and int(line) <= rows + margin:
        return int(line)
    raise DataError(f"log line {source[:120]!r} lies more than {margin} lines beyond the "
                    f"{rows} rows of its file: correct or delete that row's "
                    "_donnadb_legacy.source, or raise --log-gap-margin if the gap is real")


def _export_logs(conn: psycopg.Connection, out: _OutDir, summary: ExportSummary,
                 margin: int) -> None:
    rows_of = dict(conn.execute(LOG_ROWS).fetchall())
    handles: dict[str, Any] = {}
    lines: dict[str, int] = {}
    mtimes: dict[str, float] = {}
    try:
        with conn.cursor(name="export_logs") as cur:
            cur.itersize = 5000
            cur.execute(EXPORT_LOGS)
            for source, *row in cur:
                match = SOURCE_RE.match(source or "")
                name = match.group("file") if match else DATABASE_ONLY_LOGS
                if name not in handles:
                    record = f"log line {source!r}"
                    check_file_name(name, f"{record}: file name")
                    handles[name] = os.fdopen(out.create(("logs", name), record), "w",
                                              encoding="utf-8")
                    lines[name] = 0
                fh = handles[name]
                target = lines[name] + 1 if not match else _line_number(
                    source, match.group("line"), rows_of.get(name, 0), margin)
                # Blank lines keep every line at its original number (ids derive from it).
                fh.write("\n" * max(0, target - lines[name] - 1))
                fh.write(json.dumps(_log_doc(*row), ensure_ascii=True) + "\n")
                if (row[2] or {}).get(LEGACY_KEY, {}).get("ts_from") == "file_mtime":
                    mtimes[name] = row[-1].astimezone(UTC).timestamp()
                lines[name] = max(lines[name] + 1, target)
                summary.add("logs")
        for name, stamp in mtimes.items():  # the import took those timestamps from the mtime
            handles[name].flush()
            os.utime(handles[name].fileno(), (stamp, stamp))
    finally:
        for fh in handles.values():
            fh.close()


#: What an export of one entity writes: whole legacy files, so users and memory (one
#: memory file) come together, and so do chat sessions and their messages (one chat file).
#: An entity's export rolls the application back to its file store, so its chats are
#: all written where that store reads them (_export_chats).
ENTITY_FILES = {"users": "memory", "memory": "memory", "chats": "chats",
                "messages": "chats", "logs": "logs"}


def export_data_dir(conn: psycopg.Connection, out_dir: Path, *,
                    log_gap_margin: int = DEFAULT_LOG_GAP_MARGIN,
                    entity: str | None = None, sealer: Sealer | None = None) -> ExportSummary:
    """Write the database into ``out_dir`` in the legacy layout; only the files holding
    ``entity`` (:data:`ENTITY_FILES`) when given.

    A log file gets at most ``log_gap_margin`` blank lines beyond its rows. Sealed values
    are written opened, with ``sealer`` (CRYPTO_ENABLED): the files are plain, as the
    legacy app reads them.

    :raises UsageError: ``out_dir`` exists and is not empty (an export never overwrites),
        or it is a symlink; ``entity`` is unknown.
    :raises UnsafeNameError: a record's name cannot be a file name (``out_dir`` is then
        left empty).
    :raises DataError: two records would write the same file, or a log row's line lies
        beyond its file's rows plus ``log_gap_margin`` (``out_dir`` left empty).
    :raises DiskWriteError: a write failed, or the disk reported one at the final flush
        (a full or failing disk; ``out_dir`` left empty).
    :raises DecryptError: a sealed value does not open: its user's data key was erased,
        or the value altered (``out_dir`` left empty).
    :raises ConfigError: the database holds sealed values and no ``sealer`` was given;
        a data key's KEK is not in the key file (``out_dir`` left empty).
    """
    if entity is not None and entity not in ENTITY_FILES:
        raise UsageError(f"unknown entity {entity!r}; use one of {', '.join(ENTITY_FILES)}")
    files = None if entity is None else ENTITY_FILES[entity]
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"export directory {out} is not empty; choose a new --out path")
    _private_dir(out.parent)
    with contextlib.suppress(FileExistsError):
        out.mkdir(mode=0o700)
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UsageError(f"export directory {out} is a symlink or not a directory; "
                             "choose a new --out path") from None
        raise
    try:
        if os.listdir(fd):
            raise UsageError(f"export directory {out} is not empty; choose a new --out path")
        os.fchmod(fd, 0o700)
        summary = ExportSummary(out_dir=str(out.resolve()))
        target = _OutDir(fd)
        if conn.autocommit:  # one snapshot for the whole export
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                if files in (None, "memory"):
                    _export_users(conn, target, summary, Opener(sealer))
                if files in (None, "chats"):
                    _export_chats(conn, target, summary, app_layout=files is not None)
                if files in (None, "logs"):
                    _export_logs(conn, target, summary, log_gap_margin)
            # On disk before the export says it is done: a rollback puts these files in
            # place of the database, and a crash just after must not leave them empty.
            target.sync()
        except OSError as exc:  # a full or failing disk, at a write or at the flush
            target.discard()
            # Exit 1 as any full disk (DiskWriteError), not 6: the data are not at fault.
            raise DiskWriteError(f"cannot write the export into {out}: {exc.strerror}; "
                                 "free space or fix the disk, then export again into a "
                                 "new --out path") from None
        except BaseException:
            target.discard()
            raise
    finally:
        os.close(fd)
    return summary

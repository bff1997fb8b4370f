"""Loading a legacy DATA_DIR into PostgreSQL: COPY into staging, then upsert, per batch.

Why a kill -9 at any moment is harmless (the resumable, idempotent design):

* every row has a deterministic identity: users by clerk_id (or a uuid5 of the e-mail),
  chats by chat_id, messages by (chat, sequence_number), memory by (user, type, key),
  logs by uuid5 of ``file:line``;
* a batch is ONE transaction: COPY into ``ON COMMIT DELETE ROWS`` temp tables, then
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE the file is newer``.
  A killed batch rolls back completely; a committed batch, when replayed, matches
  every row and changes nothing. The messages of a chat with no message stored yet
  (checked inside the batch's transaction) skip the staging table and are COPYed straight
  into ``messages`` — the fast path of a first load, equally safe to kill and replay;
* with CRYPTO_ENABLED, users and memory are staged sealed and a user's new data key is
  written in the same transaction (:mod:`donnadb.legacy.sealing`); a value the stored row
  already holds is staged as its stored ciphertext, so a replay still changes nothing;
* ``chat_sessions.message_count``/``last_message_at`` are kept by the schema's
  statement-level triggers, which only see rows actually inserted, so a replay never
  counts a message twice;
* the schema's ``set_updated_at`` trigger stamps now() on any UPDATE that leaves
  ``updated_at`` as it was (the message triggers' updates of chat_sessions); each batch
  ends by writing the file's ``updated_at`` back to the chats it owns, so the final
  content never depends on when (or how often) the import ran.

Why a re-run after cut-over never loses what the app wrote since: a stored row is
replaced only by a file whose ``updated_at`` is newer than the row's; a file without one
only inserts what is missing; a message already stored at a position is never replaced
(the file may only give it its own id). Every stored row the file differs from and may
not replace is a conflict, reported, not written.

Why one bad record never stops the run: a batch the database refuses for a record's
values is written again one record per transaction; the refused records are quarantined
with PostgreSQL's reason and the others commit (the common path stays one transaction).

A re-run therefore resumes by replaying from the start, cheaply: replayed batches
write nothing. Rows the files no longer hold are never deleted (verify reports them).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps

from donnadb import db
from donnadb.dal.sealed import Sealer
from donnadb.dal.values import dump_json
from donnadb.errors import DatabaseError, DataError, MigrationError, UsageError
from donnadb.legacy import indexes
from donnadb.legacy.copybin import MESSAGE_COLUMNS, SIGNATURE, TRAILER, with_chat_id
from donnadb.legacy.logs import iter_log_file
from donnadb.legacy.model import ChatRow, LogRow, UserRow
from donnadb.legacy.normalise import iso, user_uuid
from donnadb.legacy.parallel import ChatPart, iter_parts
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.report import Report
from donnadb.legacy.sealing import SealedUser, save_new_keys, seal_users

log = logging.getLogger(__name__)

#: A batch is flushed early when its text reaches this size (multi-MB messages).
BATCH_BYTES = 32 * 1024 * 1024
#: Chats below which the import parses in its own process (see default_workers).
PARALLEL_MIN_CHATS = 256
MAX_WORKERS = 4

# Staging tables per phase (users, chats, logs), created when the phase starts and dropped
# when it ends: PostgreSQL empties every ON COMMIT DELETE ROWS table at each commit, so
# keeping only the current phase's tables saves ~0.6 ms per batch.
STAGE_DDL = {
    "users": """
CREATE TEMP TABLE IF NOT EXISTS stage_users (
    id uuid, clerk_id text, email text, name text, profile jsonb, preferences jsonb,
    created_at timestamptz, updated_at timestamptz, status text, last_active_at timestamptz,
    versioned bool, email_sealed bytea, name_sealed bytea, email_hmac bytea)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_memory (
    id uuid, user_uuid uuid, clerk_id text, memory_type text, key text, value jsonb,
    created_at timestamptz, updated_at timestamptz, expires_at timestamptz, versioned bool)
    ON COMMIT DELETE ROWS;
""",
    "chats": """
CREATE TEMP TABLE IF NOT EXISTS stage_chats (
    id uuid, chat_id text, clerk_id text, user_uuid uuid, title text, profile text,
    metadata jsonb, created_at timestamptz, updated_at timestamptz, status text,
    versioned bool) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_messages (
    chat_session_id uuid, id uuid, role text, content text, metadata jsonb,
    created_at timestamptz, sequence_number int4, token_count int4, abuse_flagged bool)
    ON COMMIT DELETE ROWS;
""",
    "logs": """
CREATE TEMP TABLE IF NOT EXISTS stage_logs (
    id uuid, level text, message text, context jsonb, trace_id text, ip text,
    user_agent text, request_uri text, created_at timestamptz) ON COMMIT DELETE ROWS;
""",
}
STAGE_TABLES = {"users": ("stage_users", "stage_memory"),
                "chats": ("stage_chats", "stage_messages"), "logs": ("stage_logs",)}

COPY_USERS = ("COPY stage_users FROM STDIN (FORMAT BINARY)",
              ["uuid", "text", "text", "text", "jsonb", "jsonb", "timestamptz", "timestamptz",
               "text", "timestamptz", "bool", "bytea", "bytea", "bytea"])
COPY_MEMORY = ("COPY stage_memory FROM STDIN (FORMAT BINARY)",
               ["uuid", "uuid", "text", "text", "text", "jsonb", "timestamptz", "timestamptz",
                "timestamptz", "bool"])
COPY_CHATS = ("COPY stage_chats FROM STDIN (FORMAT BINARY)",
              ["uuid", "text", "text", "uuid", "text", "text", "jsonb", "timestamptz",
               "timestamptz", "text", "bool"])
# Messages arrive as binary COPY rows already (copybin, built where the files are parsed).
COPY_STAGE_MESSAGES = f"COPY stage_messages ({MESSAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_MESSAGES_DIRECT = f"COPY messages ({MESSAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_LOGS = ("COPY stage_logs FROM STDIN (FORMAT BINARY)",
             ["uuid", "text", "text", "jsonb", "text", "text", "text", "text", "timestamptz"])

# Never replace a newer row. A file's row replaces the stored one only when the file is
# versioned (it carries an updated_at) and that version is newer than the row's; files
# without one (``versioned`` false) only insert what is missing. Rows that differ but are
# not replaced are conflicts (the *_CONFLICTS queries, run before the writes, find them).
# The sealed columns are NULL in clear (CRYPTO_ENABLED off), as they are in its rows.
_USER_COLUMNS = "id, clerk_id, email, name, profile, preferences, created_at, updated_at, " \
    "status, last_active_at, email_sealed, name_sealed, email_hmac"
_USER_SET = """
    DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name, profile = EXCLUDED.profile,
                  email_sealed = EXCLUDED.email_sealed, name_sealed = EXCLUDED.name_sealed,
                  email_hmac = EXCLUDED.email_hmac,
                  preferences = EXCLUDED.preferences, created_at = EXCLUDED.created_at,
                  updated_at = EXCLUDED.updated_at, status = EXCLUDED.status,
                  last_active_at = EXCLUDED.last_active_at
    WHERE EXCLUDED.updated_at > u.updated_at"""


def _users_upsert(target: str, where: str) -> tuple[str, str]:
    insert = f"INSERT INTO users AS u ({_USER_COLUMNS}) SELECT {_USER_COLUMNS} FROM stage_users"
    return (f"{insert} WHERE {where} AND versioned ON CONFLICT ({target})" + _USER_SET,
            f"{insert} WHERE {where} AND NOT versioned ON CONFLICT ({target}) DO NOTHING")


UPSERT_USERS_BY_CLERK = _users_upsert("clerk_id", "clerk_id IS NOT NULL")
UPSERT_USERS_BY_ID = _users_upsert("id", "clerk_id IS NULL")
_USER_DIFFERS = """NOT (s.versioned AND s.updated_at > u.updated_at)
   AND (u.email, u.name, u.email_sealed, u.name_sealed, u.profile, u.preferences, u.status)
       IS DISTINCT FROM (s.email, s.name, s.email_sealed, s.name_sealed, s.profile,
                         s.preferences, s.status)"""
USER_CONFLICTS = f"""
SELECT s.id, s.versioned, s.updated_at, u.updated_at
  FROM stage_users AS s JOIN users AS u ON u.clerk_id = s.clerk_id
 WHERE {_USER_DIFFERS}
UNION ALL
SELECT s.id, s.versioned, s.updated_at, u.updated_at
  FROM stage_users AS s JOIN users AS u ON u.id = s.id
 WHERE s.clerk_id IS NULL AND {_USER_DIFFERS}
"""
# Users known only from a chat: created once, from their first chat in chat_id order
# (independent of batch boundaries); a memory-file user is never overwritten here.
INSERT_ORPHAN_USERS = """
INSERT INTO users (id, clerk_id, created_at, updated_at)
SELECT DISTINCT ON (clerk_id) user_uuid, clerk_id, created_at, created_at
  FROM stage_chats WHERE clerk_id IS NOT NULL
 ORDER BY clerk_id, chat_id COLLATE "C"
ON CONFLICT (clerk_id) DO NOTHING
"""
_CHAT_INSERT = """
INSERT INTO chat_sessions AS c (id, chat_id, user_id, title, profile, metadata, created_at,
                                updated_at, status)
SELECT s.id, s.chat_id, u.id, s.title, s.profile, s.metadata, s.created_at, s.updated_at,
       s.status
  FROM stage_chats AS s LEFT JOIN users AS u ON u.clerk_id = s.clerk_id
 WHERE {}"""
UPSERT_CHATS = _CHAT_INSERT.format("s.versioned") + """
ON CONFLICT (chat_id) DO UPDATE
   SET user_id = EXCLUDED.user_id, title = EXCLUDED.title, profile = EXCLUDED.profile,
       metadata = EXCLUDED.metadata, created_at = EXCLUDED.created_at,
       updated_at = EXCLUDED.updated_at, status = EXCLUDED.status
 WHERE EXCLUDED.updated_at > c.updated_at""", \
    _CHAT_INSERT.format("NOT s.versioned") + "\nON CONFLICT (chat_id) DO NOTHING"
CHAT_CONFLICTS = """
SELECT s.chat_id, s.versioned, s.updated_at, c.updated_at
  FROM stage_chats AS s JOIN chat_sessions AS c ON c.chat_id = s.chat_id
  LEFT JOIN users AS u ON u.clerk_id = s.clerk_id
 WHERE NOT (s.versioned AND s.updated_at > c.updated_at)
   AND (c.user_id, c.title, c.profile, c.metadata, c.status)
       IS DISTINCT FROM (u.id, s.title, s.profile, s.metadata, s.status)
"""
# A message already stored at a position is never replaced: the file's may only give it
# its own id (a message the DAL wrote back with its id); any other difference is a conflict.
_MESSAGE_CONTENT = "role, content, metadata, created_at, token_count, abuse_flagged"
UPSERT_MESSAGES = f"""
INSERT INTO messages AS m (id, chat_session_id, {_MESSAGE_CONTENT}, sequence_number)
SELECT s.id, s.chat_session_id, {_MESSAGE_CONTENT.replace(", ", ", s.").join(("s.", ""))},
       s.sequence_number
  FROM stage_messages AS s
ON CONFLICT (chat_session_id, sequence_number) DO UPDATE SET id = EXCLUDED.id
 WHERE m.id <> EXCLUDED.id
   AND ({_MESSAGE_CONTENT.replace(", ", ", m.").join(("m.", ""))})
       IS NOT DISTINCT FROM
       ({_MESSAGE_CONTENT.replace(", ", ", EXCLUDED.").join(("EXCLUDED.", ""))})
"""
MESSAGE_CONFLICTS = f"""
SELECT s.chat_session_id, s.sequence_number, s.created_at, m.created_at
  FROM stage_messages AS s
  JOIN messages AS m ON m.chat_session_id = s.chat_session_id
                    AND m.sequence_number = s.sequence_number
 WHERE ({_MESSAGE_CONTENT.replace(", ", ", m.").join(("m.", ""))})
       IS DISTINCT FROM ({_MESSAGE_CONTENT.replace(", ", ", s.").join(("s.", ""))})
"""
# The database id of each chat of the batch (the import's deterministic one unless the
# app created the chat first), whether it has no message yet (a first load, or a batch
# rolled back by a kill): those chats' messages are COPYed straight into ``messages``,
# skipping the staging table and the upsert. Safe to replay: the check runs inside the
# batch's transaction, and a chat is never split between batches. ``owned``: the row is
# not newer than the file, so the file's updated_at is written back after the messages.
BATCH_CHATS = """
SELECT c.chat_id, c.id,
       NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.chat_session_id = c.id) AS fresh,
       c.updated_at <= s.updated_at AS owned
  FROM stage_chats AS s JOIN chat_sessions AS c ON c.chat_id = s.chat_id
"""
# A failed batch is replayed whole on the next run, so losing the last commits in a crash
# costs nothing: do not wait for the WAL flush of each batch.
SESSION_SETTINGS = "SET synchronous_commit = off"
# The message triggers stamp now() on the sessions they touch: the file's updated_at is
# written back to the chats the file owns (never to a row changed since the file).
FIX_CHATS_UPDATED_AT = """
UPDATE chat_sessions AS c SET updated_at = s.updated_at
  FROM stage_chats AS s
 WHERE c.chat_id = s.chat_id AND c.updated_at IS DISTINCT FROM s.updated_at
   AND s.chat_id = ANY(%s)
"""
_MEMORY_INSERT = """
INSERT INTO user_memory AS um (id, user_id, memory_type, key, value, created_at, updated_at,
                               expires_at)
SELECT s.id, COALESCE(u.id, s.user_uuid), s.memory_type, s.key, s.value, s.created_at,
       s.updated_at, s.expires_at
  FROM stage_memory AS s LEFT JOIN users AS u ON u.clerk_id = s.clerk_id
 WHERE {}"""
UPSERT_MEMORY = _MEMORY_INSERT.format("s.versioned") + """
ON CONFLICT (user_id, memory_type, key) DO UPDATE
   SET value = EXCLUDED.value, created_at = EXCLUDED.created_at,
       updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
 WHERE EXCLUDED.updated_at > um.updated_at""", \
    _MEMORY_INSERT.format("NOT s.versioned") + \
    "\nON CONFLICT (user_id, memory_type, key) DO NOTHING"
MEMORY_CONFLICTS = """
SELECT s.user_uuid, s.memory_type, s.key, s.versioned, s.updated_at, um.updated_at
  FROM stage_memory AS s LEFT JOIN users AS u ON u.clerk_id = s.clerk_id
  JOIN user_memory AS um ON um.user_id = COALESCE(u.id, s.user_uuid)
                        AND um.memory_type = s.memory_type AND um.key = s.key
 WHERE NOT (s.versioned AND s.updated_at > um.updated_at)
   AND (um.value, um.expires_at) IS DISTINCT FROM (s.value, s.expires_at)
"""
INSERT_LOGS = """
INSERT INTO system_logs (id, level, message, context, trace_id, ip_address, user_agent,
                         request_uri, created_at)
SELECT id, level, message, context, trace_id, ip::inet, user_agent, request_uri, created_at
  FROM stage_logs
ON CONFLICT (id, created_at) DO NOTHING
"""

SCHEMA_PRESENT = "SELECT to_regclass('messages')"

#: A first load grows the tables from nothing, and plans chosen while ``chat_sessions`` held
#: a few rows (a sequential scan in the messages trigger's UPDATE, hash joins over whole
#: tables in the upserts) stay cached in the session: every later batch then scans the
#: whole table and the import turns quadratic. So each table is analysed when the rows
#: this run wrote to it pass the next power of four from ANALYZE_FIRST: about log4(n)
#: quick ANALYZEs (a 30,000-row sample each), and the relcache invalidation they cause
#: makes every cached plan, the trigger's included, be planned again on fresh figures.
ANALYZE_FIRST = 1024
ANALYZED_TABLES = ("users", "user_memory", "chat_sessions", "messages")

ProgressFn = Callable[[str, int], None]

#: Conflicts shown in the summary (all of them go to the conflicts file).
CONFLICT_EXAMPLES = 5
#: What a batch can fail with because of one record's values (PostgreSQL refusing a value
#: or a limit, or the encoding of a value): the batch is then written record by record.
#: Anything else (a lost connection, a cancelled statement) stops the import.
RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded,
                 ValueError, OverflowError, RecursionError)


@dataclass
class ImportSummary:
    """What one run read and wrote. ``written`` counts rows inserted or changed; a
    replay of an already imported directory writes 0."""

    dry_run: bool = False
    read: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    indexes_rebuilt: int = 0
    #: Wall seconds of that rebuild (0 when nothing was deferred).
    index_build_seconds: float = 0.0
    #: Stored rows the files differ from and were not allowed to replace (see
    #: :data:`CONFLICT_EXAMPLES`); each a dict: table, key, reason, file/db versions, path.
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    #: Records the database refused (quarantined, the rest of their batch committed).
    rejected: int = 0

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "read": self.read, "written": self.written,
                "batches": self.batches, "indexes_rebuilt": self.indexes_rebuilt,
                "index_build_seconds": self.index_build_seconds,
                "conflicts": len(self.conflicts),
                "conflict_examples": self.conflicts[:CONFLICT_EXAMPLES],
                "rejected": self.rejected}


@dataclass
class _Batch:
    users: list[UserRow] = field(default_factory=list)
    chats: dict[str, ChatRow] = field(default_factory=dict)
    parts: list[ChatPart] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    rows: int = 0
    size: int = 0


#: What an import of one entity loads: whole legacy files, and the parents their rows
#: need. Users and memory come from one memory file; messages bring their chat sessions
#: (a message row needs its session's); sessions alone are loaded without messages.
ENTITY_IMPORTS = {"users": ("users",), "memory": ("users",), "chats": ("chats",),
                  "messages": ("chats", "messages"), "logs": ("logs",)}
#: The entities whose rows an import of one entity writes (whose phase must allow it).
ENTITY_WRITES = {"users": ("users", "memory"), "memory": ("users", "memory"),
                 "chats": ("chats",), "messages": ("chats", "messages"), "logs": ("logs",)}


class Importer:
    """Streams a :class:`LegacyReader` into the database in committed batches.

    ``conn`` must be in autocommit mode (each batch opens its own transaction). With a
    ``sealer`` (CRYPTO_ENABLED), users and memory are written sealed
    (:mod:`donnadb.legacy.sealing`).
    """

    def __init__(self, conn: psycopg.Connection | None, *, batch_size: int,
                 progress: ProgressFn | None = None, dry_run: bool = False,
                 defer_indexes: bool | None = None, owner_role: str = "donna_owner",
                 workers: int | None = None, entity: str | None = None,
                 sealer: Sealer | None = None) -> None:
        """:raises UsageError: ``entity`` is not one of :data:`ENTITY_IMPORTS`."""
        if entity is not None and entity not in ENTITY_IMPORTS:
            raise UsageError(f"unknown entity {entity!r}; use one of "
                             f"{', '.join(ENTITY_IMPORTS)}")
        self.parts = ENTITY_IMPORTS[entity] if entity else ("users", "chats", "messages",
                                                            "logs")
        self.conn = conn
        self.sealer = sealer
        self.workers = workers
        self.defer_indexes = defer_indexes
        self.owner_role = owner_role
        self.batch_size = batch_size
        self.progress = progress or (lambda phase, n: None)
        self.summary = ImportSummary(dry_run=dry_run)
        self._batch = _Batch()
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._analyze_at = dict.fromkeys(ANALYZED_TABLES, ANALYZE_FIRST)
        self._phase: str | None = None
        self._report = Report()

    def run(self, reader: LegacyReader) -> ImportSummary:
        """Import everything ``reader`` yields.

        Parsing (this thread) overlaps with the database work of the previous batch (one
        writer thread, batches committed strictly in order, at most two waiting).

        A record PostgreSQL refuses is quarantined (``reader.report``) and the rest of
        its batch committed; stored rows the files may not replace are conflicts
        (``summary.conflicts``), never overwritten.

        :raises DatabaseError: the connection was lost (what was committed stays and a
            re-run resumes).
        :raises DataError: a batch failed for another reason than one record's values.
        :raises MigrationError: the schema's tables do not exist.
        """
        self._report = reader.report
        writing = self.conn is not None and not self.summary.dry_run
        deferred = None
        if writing:
            if self.conn.execute(SCHEMA_PRESENT).fetchone()[0] is None:
                raise MigrationError("the schema is not applied in this database: run "
                                     "`donnactl migrate apply` first")
            # None: defer when messages is empty (a first load), True: insist, False: keep.
            deferred = (indexes.pending(self.conn) if self.defer_indexes is False
                        else indexes.defer(self.conn, self.owner_role,
                                           required=bool(self.defer_indexes)))
            self.conn.execute(SESSION_SETTINGS)
            self._thread = threading.Thread(target=self._writer, name="legacy-import-writer",
                                            daemon=True)
            self._thread.start()
        try:
            self._read_all(reader)
        finally:
            if writing:
                self._queue.put(None)
                self._thread.join()
        self._raise_writer_error()
        if deferred is not None:
            started = time.monotonic()
            self.summary.indexes_rebuilt = indexes.rebuild(self.conn, deferred, self.owner_role)
            self.summary.index_build_seconds = round(time.monotonic() - started, 2)
        return self.summary

    def _read_all(self, reader: LegacyReader) -> None:
        if "users" in self.parts:
            self._read_users(reader)
        if "chats" in self.parts:
            self._read_chats(reader)
        if "logs" in self.parts:
            self._read_logs(reader)

    def _read_users(self, reader: LegacyReader) -> None:
        totals = reader.totals
        done = 0
        for user in reader.users():
            self._count("users")
            self._count("user_memory", len(user.memory))
            self._batch.users.append(user)
            self._grow(1 + len(user.memory), 0)
            self.progress("users", len(user.source_paths))
            done += len(user.source_paths)
        self._flush()
        self.progress("users", max(0, totals["users"] - done))  # quarantined files

    def _read_chats(self, reader: LegacyReader) -> None:
        totals = reader.totals
        done = 0
        messages = "messages" in self.parts
        workers = self.workers
        if workers is None:
            workers = 0 if self.summary.dry_run else default_workers(reader)
        for part in iter_parts(reader, workers):
            self._count("chat_sessions")
            n_messages = part.n_messages if messages else 0
            self._count("messages", n_messages)
            if self._batch.rows and self._batch.rows + 1 + n_messages > self.batch_size:
                # A chat is never split between batches: a batch's chats are either all
                # fresh or all stored (see BATCH_CHATS), even after a kill.
                self._flush()
            self._batch.chats[part.chat_id] = part.chat
            if messages:  # sessions alone: the rows without their messages
                self._batch.parts.append(part)
            self._grow(1 + n_messages, part.size if messages else 0)
            self.progress("chats", 1)
            done += 1
        self._flush()
        self.progress("chats", max(0, totals["chats"] - done))

    def _read_logs(self, reader: LegacyReader) -> None:
        for path in reader.inventory.logs:
            for row in iter_log_file(path, reader.inventory, reader.report):
                self._count("system_logs")
                self._batch.logs.append(row)
                self._grow(1, len(row.message))
            self.progress("logs", 1)
        self._flush()

    def _count(self, table: str, n: int = 1) -> None:
        self.summary.read[table] = self.summary.read.get(table, 0) + n

    def _grow(self, rows: int, size: int) -> None:
        self._batch.rows += rows
        self._batch.size += size
        if self._batch.rows >= self.batch_size or self._batch.size >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if not batch.rows:
            return
        self.summary.batches += 1
        if self.summary.dry_run or self.conn is None:
            return
        self._raise_writer_error()
        self._queue.put(batch)

    def _writer(self) -> None:
        """The only user of the connection once the import runs."""
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is not None:
                continue  # drain: the reader thread stops at its next flush
            try:
                self._stage_for(batch)
                self._write_batch(batch)
                self._analyze_grown_tables()
            except BaseException as exc:  # re-raised in the reader thread
                self._error = exc

    def _write_batch(self, batch: _Batch) -> None:
        """One transaction for the batch; when one of its records is refused, the batch
        again one record per transaction, quarantining the refused ones (the fast path
        of a batch that goes through stays one transaction)."""
        try:
            self._in_transaction(batch)
        except RECORD_ERRORS as exc:
            if self.conn.broken or self.conn.closed:
                raise
            log.info("a batch was refused (%s): writing it record by record",
                     _first_line(exc))
            for record in _records(batch):
                try:
                    self._in_transaction(record)
                except RECORD_ERRORS as record_exc:
                    if self.conn.broken or self.conn.closed:
                        raise
                    self.summary.rejected += 1
                    self._report.quarantine(_record_path(record), "rejected by the database",
                                            _first_line(record_exc))

    def _in_transaction(self, batch: _Batch) -> None:
        """Write ``batch`` in one transaction; on failure, the summary is as before it."""
        written, conflicts = dict(self.summary.written), len(self.summary.conflicts)
        try:
            with self.conn.transaction():
                self._write(batch)
        except BaseException:
            self.summary.written = written
            del self.summary.conflicts[conflicts:]
            raise

    def _stage_for(self, batch: _Batch) -> None:
        """Create the staging tables of ``batch``'s phase, dropping the previous phase's.

        A batch holds one phase only: the reader flushes between users, chats and logs.
        """
        phase = "users" if batch.users else "chats" if batch.chats else "logs"
        if phase == self._phase:
            return
        if self._phase is not None:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.SQL(", ").join(map(sql.Identifier, STAGE_TABLES[self._phase]))))
        self.conn.execute(STAGE_DDL[phase])
        self._phase = phase

    def _analyze_grown_tables(self) -> None:
        """ANALYZE the tables whose written rows passed their next threshold (see
        ANALYZE_FIRST); as the owner, the only role allowed to."""
        grown = [t for t in ANALYZED_TABLES
                 if self.summary.written.get(t, 0) >= self._analyze_at[t]]
        if not grown:
            return
        with self.conn.transaction():
            db.set_local_role(self.conn, self.owner_role)
            for table in grown:
                self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
                while self._analyze_at[table] <= self.summary.written[table]:
                    self._analyze_at[table] *= 4
        log.debug("analysed %s", ", ".join(grown))

    def _raise_writer_error(self) -> None:
        exc = self._error
        if exc is None:
            return
        if isinstance(exc, psycopg.OperationalError):
            raise DatabaseError(f"the import lost the database: {_first_line(exc)} (earlier "
                                "batches are committed; re-run to resume)") from exc
        if isinstance(exc, psycopg.Error):
            raise DataError(f"a batch failed and was rolled back: {_first_line(exc)} (earlier "
                            "batches are committed; re-run to resume)") from exc
        raise exc

    def _copy_rows(self, statement: str, chunks: list[bytes]) -> None:
        """COPY binary rows built by copybin (one chunk per chat)."""
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            copy.write(SIGNATURE)
            for chunk in chunks:
                copy.write(chunk)
            copy.write(TRAILER)

    def _copy(self, spec: tuple[str, list[str]], rows) -> None:
        statement, types = spec
        with self.conn.cursor() as cur:
            # Users, chats and logs carry JSON objects: orjson encodes them in a tenth of
            # json.dumps' time (messages are encoded by copybin, with the same dump_json).
            set_json_dumps(dump_json, cur)
            with cur.copy(statement) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)

    def _exec(self, statements: str | tuple[str, ...], table: str | None = None,
              params: tuple | None = None) -> None:
        for statement in (statements,) if isinstance(statements, str) else statements:
            cur = self.conn.execute(statement, params)
            if table is not None and cur.rowcount > 0:
                self.summary.written[table] = self.summary.written.get(table, 0) + cur.rowcount

    def _conflicts(self, query: str, table: str, describe) -> None:
        """Record the rows ``query`` finds (stored rows the batch may not replace)."""
        for row in self.conn.execute(query):
            self.summary.conflicts.append({"table": table, **describe(*row)})

    def _write(self, batch: _Batch) -> None:
        if batch.users:
            sealed = None if self.sealer is None else \
                seal_users(self.conn, self.sealer, batch.users)
            self._copy(COPY_USERS, (_staged_user(u, sealed) for u in batch.users))
            self._copy(COPY_MEMORY, (
                (m.id, u.id, u.clerk_id, m.memory_type, m.key,
                 Jsonb(m.value if sealed is None else
                       sealed[u.id].memory[(m.memory_type, m.key)]),
                 m.created_at, m.updated_at, m.expires_at, u.versioned)
                for u in batch.users for m in u.memory))
            users = {u.id: u for u in batch.users}
            self._conflicts(USER_CONFLICTS, "users", lambda uid, versioned, ours, theirs: _conflict(
                users[uid].clerk_id or users[uid].email or str(uid), versioned, ours, theirs,
                users[uid].source_paths[-1]))
            self._conflicts(MEMORY_CONFLICTS, "user_memory", lambda uid, mtype, key, versioned,
                            ours, theirs: _conflict(
                f"{users[uid].clerk_id or users[uid].email or uid}/{mtype}/{key}", versioned,
                ours, theirs, users[uid].source_paths[-1]))
            self._exec(UPSERT_USERS_BY_CLERK, "users")
            self._exec(UPSERT_USERS_BY_ID, "users")
            self._exec(UPSERT_MEMORY, "user_memory")
            if sealed is not None:
                save_new_keys(self.conn, self.sealer, sealed.values())
        if batch.chats:
            self._copy(COPY_CHATS, (
                (c.id, c.chat_id, c.clerk_id, _owner_uuid(c), c.title, c.profile, c.metadata,
                 c.created_at, c.updated_at, c.status, c.versioned)
                for c in batch.chats.values()))
            chats = batch.chats
            self._conflicts(CHAT_CONFLICTS, "chat_sessions", lambda chat_id, versioned, ours,
                            theirs: _conflict(chat_id, versioned, ours, theirs,
                                              chats[chat_id].source_path))
            self._exec(INSERT_ORPHAN_USERS, "users")
            self._exec(UPSERT_CHATS, "chat_sessions")
        if batch.parts:
            owned = self._write_messages(batch)
            # The message triggers touched the sessions: restore the files' updated_at.
            self._exec(FIX_CHATS_UPDATED_AT, params=(owned,))
        if batch.logs:
            self._copy(COPY_LOGS, (
                (r.id, r.level, r.message, r.context, r.trace_id, r.ip_address, r.user_agent,
                 r.request_uri, r.created_at) for r in batch.logs))
            self._exec(INSERT_LOGS, "system_logs")

    def _write_messages(self, batch: _Batch) -> list[str]:
        """Fresh chats (no message stored yet): COPY straight in; the others: upsert.
        Returns the chats whose row the files own (see BATCH_CHATS)."""
        stored = {chat_id: (cid, fresh, owned) for chat_id, cid, fresh, owned
                  in self.conn.execute(BATCH_CHATS).fetchall()}
        direct, staged, n_direct = [], [], 0
        by_uuid = {}
        for part in batch.parts:
            cid, fresh, _owned = stored[part.chat_id]
            rows = part.rows if cid == part.chat.id else with_chat_id(part.rows, part.offsets,
                                                                      cid)
            if fresh:
                direct.append(rows)
                n_direct += part.n_messages
            else:
                staged.append(rows)
                by_uuid[cid] = part
        if direct:
            self._copy_rows(COPY_MESSAGES_DIRECT, direct)
            self.summary.written["messages"] = self.summary.written.get("messages", 0) + n_direct
        if staged:
            self._copy_rows(COPY_STAGE_MESSAGES, staged)
            self._conflicts(MESSAGE_CONFLICTS, "messages", lambda cid, seq, ours, theirs: {
                "key": f"{by_uuid[cid].chat_id}#{seq}",
                "reason": "a different message is stored at this position",
                "file_version": iso(ours), "db_version": iso(theirs),
                "path": by_uuid[cid].chat.source_path})
            self._exec(UPSERT_MESSAGES, "messages")
        return [chat_id for chat_id, (_cid, _fresh, owned) in stored.items() if owned]


def _staged_user(u: UserRow, sealed: dict[uuid.UUID, SealedUser] | None) -> tuple:
    """The stage_users row of ``u``: as read, or its sealed columns."""
    if sealed is None:
        email, name, profile, preferences = u.email, u.name, u.profile, u.preferences
        email_sealed = name_sealed = email_hmac = None
    else:
        cols = sealed[u.id].columns
        email, name, profile, preferences = (cols["email"], cols["name"], cols["profile"],
                                             cols["preferences"])
        email_sealed, name_sealed, email_hmac = (cols["email_sealed"], cols["name_sealed"],
                                                 cols["email_hmac"])
    return (u.id, u.clerk_id, email, name, profile, preferences, u.created_at, u.updated_at,
            u.status, u.last_active_at, u.versioned, email_sealed, name_sealed, email_hmac)


def _conflict(key: str, versioned: bool, ours, theirs, path: str) -> dict[str, Any]:
    reason = ("the stored row is newer than the file" if versioned
              else "the file has no updated_at to compare with the stored row")
    return {"key": key, "reason": reason, "file_version": iso(ours) if versioned else None,
            "db_version": iso(theirs), "path": path}


def _records(batch: _Batch) -> list[_Batch]:
    """``batch`` cut into one batch per record: a user with their memory, a chat with its
    messages, a log line."""
    out = [_Batch(users=[u], rows=1) for u in batch.users]
    out += [_Batch(chats={p.chat_id: p.chat}, parts=[p], rows=1) for p in batch.parts]
    out += [_Batch(logs=[r], rows=1) for r in batch.logs]
    return out


def _record_path(record: _Batch) -> str:
    """Where the record came from, as the quarantine report names files."""
    if record.users:
        return record.users[0].source_paths[-1]
    if record.parts:
        return record.parts[0].chat.source_path
    return f"logs/{record.logs[0].source}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _owner_uuid(chat: ChatRow) -> uuid.UUID | None:
    return user_uuid(chat.clerk_id) if chat.clerk_id else None


def default_workers(reader: LegacyReader) -> int:
    """Parser processes for this directory: one per core (at most MAX_WORKERS) when there
    are cores to share and chats enough to repay starting them (~0.5 s), else 0."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2 or len(reader.inventory.chats) < PARALLEL_MIN_CHATS:
        return 0
    return min(cores, MAX_WORKERS)


def import_data_dir(reader: LegacyReader, conn: psycopg.Connection | None, *, batch_size: int,
                    dry_run: bool = False, progress: ProgressFn | None = None,
                    defer_indexes: bool | None = None, owner_role: str = "donna_owner",
                    workers: int | None = None, entity: str | None = None,
                    sealer: Sealer | None = None) -> ImportSummary:
    """Run one import (or a dry run when ``dry_run``: ``conn`` is not written); of one
    entity's files (:data:`ENTITY_IMPORTS`) when ``entity`` is given.

    ``defer_indexes``: None builds the secondary messages indexes once at the end when
    ``messages`` is empty (:mod:`donnadb.legacy.indexes`), True insists on it, False keeps
    them (an unfinished deferral of an earlier run is still completed).

    ``workers``: processes parsing the chat files (:mod:`donnadb.legacy.parallel`); None
    chooses (:func:`default_workers`), 0 parses in this process.

    ``sealer``: field encryption's keys (:func:`donnadb.legacy.sealing.sealer_for`): users
    and memory are then written sealed, never in clear.

    :raises DataError: a batch failed for another reason than one record's values.
    :raises UsageError: ``defer_indexes`` on a non-empty messages table; an unknown
        ``entity``.
    """
    return Importer(conn, batch_size=batch_size, progress=progress, dry_run=dry_run,
                    defer_indexes=defer_indexes, owner_role=owner_role,
                    workers=workers, entity=entity, sealer=sealer).run(reader)


def check_storage_type(phases: Mapping[str, str], postgresql_is_primary: bool, *,
                       entity: str | None = None) -> None:
    """Refuse an import into the store the app already writes to, unless the operator
    says they know (then no newer row is replaced anyway: conflicts are reported).

    ``phases`` is each entity's store (``donnadb.dal.entity_phases``): an entity in
    ``postgresql`` is written to PostgreSQL alone, so its files are older. With
    ``entity``, only the entities an import of it writes (:data:`ENTITY_WRITES`) count.

    :raises UsageError: an entity the import writes is in ``postgresql`` and not
        ``postgresql_is_primary``.
    """
    written = phases if entity is None else ENTITY_WRITES.get(entity, ())
    alone = [e for e in phases if e in written and phases[e] == "postgresql"]
    if alone and not postgresql_is_primary:
        everything = all(phase == "postgresql" for phase in phases.values())
        what = ("DATA_STORAGE_TYPE is postgresql" if everything else
                f"{', '.join(alone)} in postgresql (DATA_STORAGE_<ENTITY>)")
        raise UsageError(f"{what}: the app writes to PostgreSQL, so the files are older; "
                         "pass --i-know-postgresql-is-primary to import anyway (newer rows "
                         "are kept, differences reported as conflicts)")

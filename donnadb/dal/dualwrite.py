"""DualWriteDataAccess: the plan's pilot phase. Files first (the source of truth), then
PostgreSQL; a PostgreSQL failure never fails the call, it is logged and queued.

In this mode every id is the file store's: a user's ``id`` is its Clerk id and a chat
session's ``id`` its ``chat_id``, whichever store the reads come from. Message ids are
the same in both stores (the file's id is copied).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from donnadb.dal.errors import NotFoundError, TransactionError
from donnadb.dal.files import FileDataAccess
from donnadb.dal.logwriter import LogWriterMixin
from donnadb.dal.mirrorstats import MirrorStats
from donnadb.dal.pending import ReconcileQueue, default_path
from donnadb.dal.phases import ENTITIES
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.protocol import ChatSession, MemoryEntry, Message, TransactionMixin, User
from donnadb.dal.values import (
    LEGACY_KEY,
    check_reserved_keys,
    is_valid_name,
    legacy_log_id,
    parse_timestamp,
)
from donnadb.errors import DatabaseError, DonnaError

log = logging.getLogger(__name__)

PRIMARY_STORES = ("file", "postgresql")


@dataclass
class _Tx:
    entries: list[dict[str, Any]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    pg_ok: bool = True
    error: str = ""
    #: A write went to PostgreSQL alone (a mixed store): losing PostgreSQL's part of the
    #: transaction would lose it, so the transaction fails instead.
    pg_only: bool = False


class DualWriteDataAccess(TransactionMixin, LogWriterMixin):
    """Writes go to ``files`` then ``pg``; reads to ``primary`` ("file" or "postgresql").

    ``retry_after`` seconds after a connection failure, writes skip PostgreSQL and are
    queued at once, so a down database costs one pool timeout, not one per call.
    Reads from PostgreSQL fall back to the files when the database is unreachable.
    """

    store = "dual"
    #: Each entity's phase (see phases.py); MixedDataAccess sets other values.
    phases: Mapping[str, str] = dict.fromkeys(ENTITIES, "dual")
    #: Whether some entity lives in PostgreSQL alone: then a transaction always tries
    #: to open PostgreSQL's part, even while copies are being queued.
    _needs_pg = False

    def __init__(
        self,
        files: FileDataAccess,
        pg: PostgresDataAccess,
        *,
        primary: str = "file",
        queue_path: Path | None = None,
        retry_after: float = 30.0,
        stats_dir: Path | None = None,
    ) -> None:
        """``stats_dir``: where the copy figures go for `donnactl metrics` (None: kept
        in this process only; mirrorstats.py).

        :raises ValueError: ``primary`` is not file or postgresql."""
        if primary not in PRIMARY_STORES:
            raise ValueError(f"primary must be one of {PRIMARY_STORES}, not {primary!r}")
        self.files = files
        self.pg = pg
        self.primary = primary
        self.queue = ReconcileQueue(queue_path or default_path(files.data_dir))
        self.retry_after = retry_after
        self._down_until = 0.0
        self._local = threading.local()
        self.mirror_stats = MirrorStats(stats_dir)

    # ------------------------------------------------------------------ replication
    def chat_lock(self, chat_id: object) -> AbstractContextManager[None]:
        """The chat file's lock: held from the file write to the end of its copy, so
        PostgreSQL receives one entity's copies in file order (across processes too)."""
        if not is_valid_name(chat_id):
            return nullcontext()  # the file store rejects the name itself
        return self.files.locked(self.files.chat_path(chat_id))

    def user_lock(self, clerk_id: object) -> AbstractContextManager[None]:
        if not is_valid_name(clerk_id):
            return nullcontext()
        return self.files.locked(self.files.user_path(clerk_id))

    def _mirror(self, op: str, entries: list[dict[str, Any]], copy: Callable[[], Any], *,
                outside_tx: bool = False) -> None:
        """Run ``copy`` against PostgreSQL; on failure log and queue ``entries``.

        Inside a transaction the copy joins it, unless ``outside_tx`` (a log entry).
        """
        if not self._mirrors(entries[0]["kind"]):
            return
        tx: _Tx | None = None if outside_tx else getattr(self._local, "tx", None)
        if tx is not None:
            tx.entries.extend(entries)
            tx.ops.append(op)
            if not tx.pg_ok:
                return
        elif time.monotonic() < self._down_until:
            self._queue(entries, [op], "PostgreSQL unavailable (retrying later)")
            return
        started = time.perf_counter()
        try:
            copy()
        except Exception as exc:  # any failure: the file write stands, reconcile repairs
            self.mirror_stats.copied(op, time.perf_counter() - started)
            self._failed(op, exc)
            if tx is not None and tx.pg_only:
                # Dropping PostgreSQL's part would drop writes only it holds: fail the
                # call (its statement ran in a savepoint) and let the caller roll back.
                raise
            if tx is None:
                self._queue(entries, [op], str(exc))
            else:
                tx.pg_ok, tx.error = False, str(exc)
                self._pg_rollback()
        else:
            self.mirror_stats.copied(op, time.perf_counter() - started)

    def _mirrors(self, kind: str) -> bool:
        """Whether a file write of this kind of entity ("user", "chat", "message", "log")
        is copied to PostgreSQL: always, in dual-write."""
        return True

    def _failed(self, op: str, exc: Exception) -> None:
        if isinstance(exc, DatabaseError):
            self._down_until = time.monotonic() + self.retry_after
        log.warning("dual-write: %s not written to PostgreSQL, queued for reconcile: %s",
                    op, exc, exc_info=not isinstance(exc, DonnaError))

    def _queue(self, entries: list[dict[str, Any]], ops: list[str], error: str) -> None:
        """Queue for reconcile the entities the writes ``ops`` (one per call) touched. A
        queue that cannot be written (disk full) must not fail a call whose file write
        succeeded: a retry would store the message twice."""
        self.mirror_stats.queued(ops)
        op = "+".join(dict.fromkeys(ops))
        try:
            self.queue.append(entries, op=op, error=error)
        except OSError as exc:
            log.error("dual-write: cannot queue %s for reconcile (%s): PostgreSQL misses %s; "
                      "run `donnactl migrate-data import` then `verify`", op, exc, entries)

    def _pg_rollback(self) -> None:
        try:
            self.pg.rollback()
        except DonnaError as exc:
            log.warning("dual-write: PostgreSQL rollback failed: %s", exc)

    def sync_user(self, clerk_id: str) -> str | None:
        """Copy the user and all its memory from the files; return the PostgreSQL id."""
        user = self.files.get_user_by_id(clerk_id)
        if user is None:
            return None
        return self.pg.upsert_user(user, self._memory_to_copy(clerk_id))

    def _memory_to_copy(self, clerk_id: str) -> list[MemoryEntry]:
        """The memory entries a copy of the user carries: all of them in dual-write."""
        return self.files.memory_entries(clerk_id)

    def pg_user_id(self, clerk_id: str) -> str:
        """The PostgreSQL id of a Clerk id, copying the user over when missing (a chat of a
        user without a memory file creates a bare user, as the legacy import does)."""
        row = self.pg.get_user_by_clerk_id(clerk_id)
        if row is not None:
            return row["id"]
        return self.sync_user(clerk_id) or self.pg.ensure_user(clerk_id)

    def sync_chat(self, chat_id: str) -> bool:
        """Copy the chat session (not its messages) from the files."""
        session = self.files.get_chat_session(chat_id)
        if session is None:
            return False
        user_id = self.pg_user_id(session["user_id"]) if session["user_id"] else None
        self.pg.upsert_chat_session(session, user_id)
        return True

    def sync_messages(self, chat_id: str, messages: list[Message]) -> int:
        """Copy ``messages`` (from the files) keeping ids and positions; idempotent."""
        try:
            return self.pg.insert_messages(chat_id, messages)
        except NotFoundError:
            if not self.sync_chat(chat_id):
                raise
            return self.pg.insert_messages(chat_id, messages)

    # ------------------------------------------------------------------ reads
    def _read(self, entity: str, from_pg: Callable[[], Any], from_files: Callable[[], Any]
              ) -> Any:
        """Read ``entity`` from where its phase says: files, PostgreSQL, or the primary."""
        tx: _Tx | None = getattr(self._local, "tx", None)
        phase = self.phases[entity]
        if phase == "file":
            return from_files()
        if phase == "postgresql":
            # Only PostgreSQL holds it: no falling back to the files.
            if tx is not None and not tx.pg_ok:
                raise DatabaseError(f"PostgreSQL left this transaction: {tx.error}")
            return from_pg()
        if self.primary == "file" or (tx is not None and not tx.pg_ok):
            # In a transaction PostgreSQL dropped, only the files hold its writes.
            return from_files()
        try:
            return from_pg()
        except DatabaseError as exc:
            log.warning("dual-write: PostgreSQL read failed, reading the files: %s", exc)
            return from_files()

    def _pg_user(self, row: User | None) -> User | None:
        if row is None or row.get("clerk_id") is None:
            return None
        return {**row, "id": row["clerk_id"]}

    def get_user_by_id(self, user_id: str) -> User | None:
        return self._read("users",
                          lambda: self._pg_user(self.pg.get_user_by_clerk_id(user_id)),
                          lambda: self.files.get_user_by_id(user_id))

    def get_user_by_clerk_id(self, clerk_id: str) -> User | None:
        return self.get_user_by_id(clerk_id)

    def get_chat_session(self, chat_id: str) -> ChatSession | None:
        def from_pg() -> ChatSession | None:
            row = self.pg.get_chat_session(chat_id)
            if row is None:
                return None
            if row["user_id"] is not None:
                owner = self.pg.get_user_by_id(row["user_id"])
                row["user_id"] = owner["clerk_id"] if owner else None
            return {**row, "id": row["chat_id"]}
        return self._read("chats", from_pg, lambda: self.files.get_chat_session(chat_id))

    def get_chat_history(self, chat_id: str, limit: int = 20, offset: int = 0) -> list[Message]:
        return self._read("messages", lambda: self.pg.get_chat_history(chat_id, limit, offset),
                          lambda: self.files.get_chat_history(chat_id, limit, offset))

    def get_message_count(self, chat_id: str) -> int:
        return self._read("messages", lambda: self.pg.get_message_count(chat_id),
                          lambda: self.files.get_message_count(chat_id))

    def list_chat_sessions(self, user_id: str, limit: int = 20) -> list[ChatSession]:
        def from_pg() -> list[ChatSession]:
            row = self.pg.get_user_by_clerk_id(user_id)
            if row is None:
                return []
            return [{**s, "id": s["chat_id"], "user_id": user_id}
                    for s in self.pg.list_chat_sessions(row["id"], limit)]
        return self._read("chats", from_pg,
                          lambda: self.files.list_chat_sessions(user_id, limit))

    def search_messages(
        self, user_id: str, query: str, *, limit: int = 20, recent_chats: int | None = None
    ) -> list[Message]:
        def from_pg() -> list[Message]:
            row = self.pg.get_user_by_clerk_id(user_id)
            if row is None:
                return []
            return self.pg.search_messages(row["id"], query, limit=limit,
                                           recent_chats=recent_chats)
        return self._read("messages", from_pg, lambda: self.files.search_messages(
            user_id, query, limit=limit, recent_chats=recent_chats))

    def get_user_memory(
        self, user_id: str, memory_type: str, key: str | None = None
    ) -> dict[str, Any]:
        def from_pg() -> dict[str, Any]:
            row = self.pg.get_user_by_clerk_id(user_id)
            return {} if row is None else self.pg.get_user_memory(row["id"], memory_type, key)
        return self._read("memory", from_pg,
                          lambda: self.files.get_user_memory(user_id, memory_type, key))

    # ------------------------------------------------------------------ writes
    def create_user(self, user_data: Mapping[str, Any]) -> str:
        with self.user_lock(user_data.get("clerk_id")):
            clerk_id = self.files.create_user(user_data)
            self._mirror("create_user", [_user(clerk_id)], lambda: self.sync_user(clerk_id))
        return clerk_id

    def update_user(self, user_id: str, updates: Mapping[str, Any]) -> bool:
        with self.user_lock(user_id):
            if not self.files.update_user(user_id, updates):
                return False
            self._mirror("update_user", [_user(user_id)], lambda: self.sync_user(user_id))
        return True

    def create_chat_session(
        self,
        chat_id: str,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        profile: str = "general",
    ) -> str:
        with self.chat_lock(chat_id):
            self.files.create_chat_session(chat_id, user_id, metadata, title=title,
                                           profile=profile)
            self._mirror("create_chat_session", [_chat(chat_id)],
                         lambda: self.sync_chat(chat_id))
        return chat_id

    def update_chat_session(self, chat_id: str, updates: Mapping[str, Any]) -> bool:
        with self.chat_lock(chat_id):
            if not self.files.update_chat_session(chat_id, updates):
                return False
            self._mirror("update_chat_session", [_chat(chat_id)],
                         lambda: self.sync_chat(chat_id))
        return True

    def add_message(
        self,
        chat_id: str,
        role: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        token_count: int | None = None,
        abuse_flagged: bool = False,
    ) -> str:
        with self.chat_lock(chat_id):
            message = self.files.append_message(chat_id, role, content, metadata,
                                                token_count=token_count,
                                                abuse_flagged=abuse_flagged)
            self._mirror("add_message", [_message(chat_id, message["id"])],
                         lambda: self.sync_messages(chat_id, [message]))
        return message["id"]

    def set_user_memory(
        self,
        user_id: str,
        memory_type: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> bool:
        with self.user_lock(user_id):
            self.files.set_user_memory(user_id, memory_type, key, value, expires_at)
            self._mirror("set_user_memory", [_user(user_id)], lambda: self.sync_user(user_id))
        return True

    def delete_user_memory(self, user_id: str, memory_type: str, key: str | None = None) -> bool:
        with self.user_lock(user_id):
            if not self.files.delete_user_memory(user_id, memory_type, key):
                return False
            self._mirror("delete_user_memory", [_user(user_id)],
                         lambda: self.sync_user(user_id))
        return True

    def _store_log(self, line: dict[str, Any]) -> str:
        source = self.files.append_log(line)
        self._mirror("write_log", [_log(source)], lambda: self.copy_log(source, line),
                     outside_tx=True)
        return legacy_log_id(source)

    def sync_log(self, source: str) -> bool:
        """Copy the log line ``source`` from the files (reconcile); False when it is gone."""
        line = self.files.read_log(source)
        if line is None:
            return False
        self.copy_log(source, line)
        return True

    def copy_log(self, source: str, line: Mapping[str, Any]) -> None:
        """The row the import makes of this line (same id, ``source`` in the context), so a
        later import or a replay adds nothing and ``verify`` compares it like any other."""
        check_reserved_keys(line["context"], "log context")  # the file may have been edited
        context = {**line["context"], LEGACY_KEY: {"source": source}}
        self.pg.insert_log({**line, "context": context}, log_id=legacy_log_id(source),
                           at=parse_timestamp(line["ts"]))

    # ------------------------------------------------------------------ transactions
    def begin_transaction(self) -> bool:
        """Open a file transaction and, when reachable, a PostgreSQL one.

        :raises TransactionError: one is already open on this thread.
        """
        if getattr(self._local, "tx", None) is not None:
            raise TransactionError("a transaction is already open on this thread")
        self.files.begin_transaction()
        tx = _Tx()
        if time.monotonic() < self._down_until and not self._needs_pg:
            tx.pg_ok, tx.error = False, "PostgreSQL unavailable (retrying later)"
        else:
            try:
                self.pg.begin_transaction()
            except DonnaError as exc:
                self._failed("begin_transaction", exc)
                tx.pg_ok, tx.error = False, str(exc)
        self._local.tx = tx
        return True

    def commit(self) -> bool:
        """Commit the files, then PostgreSQL; if PostgreSQL failed at any point of the
        transaction, every entity it touched is queued for reconcile.

        :raises DatabaseError: PostgreSQL's commit failed in a transaction that wrote to
            PostgreSQL alone (a mixed store): the file writes are rolled back too.
        """
        tx = self._end()
        undo = False
        try:
            # PostgreSQL first, while the transaction still holds the file locks: no
            # other writer's copy of these entities can overtake this one.
            if tx.pg_ok:
                try:
                    self.pg.commit()
                except DonnaError as exc:
                    self._failed("commit", exc)
                    # PostgreSQL alone held some writes: all or nothing, so nothing.
                    undo = tx.pg_only
                    if undo:
                        raise
                    tx.pg_ok, tx.error = False, str(exc)
            if not tx.pg_ok and tx.entries:
                self._queue(tx.entries, tx.ops, tx.error)
        finally:
            if undo:
                self.files.rollback()
            else:
                self.files.commit()  # the file writes are already durable; frees the locks
        return True

    def rollback(self) -> bool:
        tx = self._end()
        try:
            self.files.rollback()
        finally:
            if tx.pg_ok:
                self._pg_rollback()
        return True

    def _end(self) -> _Tx:
        tx = getattr(self._local, "tx", None)
        if tx is None:
            raise TransactionError("no transaction is open on this thread")
        self._local.tx = None
        return tx

    # ------------------------------------------------------------------ health
    def health_check(self) -> dict[str, Any]:
        files = self.files.health_check()
        pg = self.pg.health_check()
        try:
            pending: int | None = self.queue.count()
        except OSError:
            pending = None
        if files["status"] == "error":
            status = "error"
        elif pg["status"] != "ok" or files["status"] != "ok" or pending:
            status = "warning"  # the files still take every write
        else:
            status = "ok"
        return {"status": status, "store": self.store, "primary": self.primary,
                "phases": dict(self.phases),
                "file": files, "postgresql": pg, "reconcile_pending": pending,
                "reconcile_queue": str(self.queue.path),
                "mirror": self.mirror_stats.snapshot()}

    def close(self) -> None:
        self.mirror_stats.close()
        self.files.close()
        self.pg.close()

    def __enter__(self) -> DualWriteDataAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _user(clerk_id: str) -> dict[str, Any]:
    return {"kind": "user", "clerk_id": clerk_id}


def _chat(chat_id: str) -> dict[str, Any]:
    return {"kind": "chat", "chat_id": chat_id}


def _message(chat_id: str, message_id: str) -> dict[str, Any]:
    return {"kind": "message", "chat_id": chat_id, "message_id": message_id}


def _log(source: str) -> dict[str, Any]:
    return {"kind": "log", "source": source}

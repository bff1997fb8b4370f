"""MixedDataAccess: a store per entity (DATA_STORAGE_USERS ... DATA_STORAGE_LOGS), for
the plan's pilot (user memory in dual-write first) and a cut-over one entity at a time.

It is dual-write with a phase per entity (phases.py): ``file`` entities are written to
the files alone, ``dual`` ones to the files and then PostgreSQL (a failed copy is
queued for reconcile), ``postgresql`` ones to PostgreSQL alone (a failure fails the
call). Reads come from the files, MIGRATION_PRIMARY_STORE, or PostgreSQL.

Ids are dual-write's whatever store serves an entity, so they never change during a
cut-over: a user's ``id`` is its Clerk id, a chat session's its ``chat_id``.

What the legacy files keep together moves together:

- a user's memory file holds its profile, preferences and memory, so a write to either
  half is copied as a whole (``sync_user``) when users or memory are in dual-write;
- a chat file holds a session and its messages, so a session written to PostgreSQL
  keeps a copy of its metadata in its file (the messages' container).

And what PostgreSQL alone holds is also written to the legacy files after it (the
same call on the file store, under the file's lock; a failure is logged, PostgreSQL
holds the write). During a rolling restart a process still in dual-write writes the
same entity to the files first and copies what the file then holds to PostgreSQL: a
whole memory file, a message numbered from its chat file. Kept this way, those files
are PostgreSQL's state, so such a copy loses nothing; and a rollback to dual-write
finds them complete. The store of every entity in PostgreSQL (PostgresDataAccess)
no longer writes them: the files are retired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from donnadb.dal.dualwrite import DualWriteDataAccess
from donnadb.dal.errors import NotFoundError
from donnadb.dal.files import FileDataAccess
from donnadb.dal.phases import check_phases
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.protocol import USER_FIELDS, MemoryEntry
from donnadb.dal.values import (
    LEGACY_KEY,
    check_fields,
    check_memory_type,
    check_name,
    is_valid_name,
)
from donnadb.errors import DatabaseError, DataError, DonnaError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The entity whose phase decides whether a file write of this queue kind is copied.
KIND_ENTITY = {"chat": "chats", "message": "messages", "log": "logs"}


class MixedDataAccess(DualWriteDataAccess):
    """Dual-write with a phase per entity; see the module docstring."""

    store = "mixed"

    def __init__(
        self,
        files: FileDataAccess,
        pg: PostgresDataAccess,
        *,
        phases: Mapping[str, str],
        primary: str = "file",
        queue_path: Path | None = None,
        retry_after: float = 30.0,
        stats_dir: Path | None = None,
    ) -> None:
        """:raises ConfigError: ``phases`` cannot stay consistent (phases.py).
        :raises ValueError: ``primary`` is not file or postgresql."""
        check_phases(phases, primary)
        super().__init__(files, pg, primary=primary, queue_path=queue_path,
                         retry_after=retry_after, stats_dir=stats_dir)
        self.phases = dict(phases)
        self._needs_pg = "postgresql" in self.phases.values()

    # ------------------------------------------------------------------ routing
    def _mirrors(self, kind: str) -> bool:
        if kind == "user":
            # One memory file: copied whole when either of its halves is in dual-write.
            return "dual" in (self.phases["users"], self.phases["memory"])
        return self.phases[KIND_ENTITY[kind]] == "dual"

    def _memory_to_copy(self, clerk_id: str) -> list[MemoryEntry]:
        # Memory kept in files alone stays there: the user's row is then only the parent
        # of its chats (users in dual-write, or a chat copied over), and an upsert with
        # no entries leaves no memory row behind.
        if self.phases["memory"] == "file":
            return []
        return super()._memory_to_copy(clerk_id)

    def _in_pg(self, entity: str) -> bool:
        return self.phases[entity] == "postgresql"

    def _pg_write(self, work: Callable[[], T]) -> T:
        """Run a write PostgreSQL alone will hold. Inside a transaction it joins
        PostgreSQL's part, which must then commit for the transaction to commit.

        :raises DatabaseError: PostgreSQL left this transaction earlier.
        """
        tx = getattr(self._local, "tx", None)
        if tx is None:
            return work()
        if not tx.pg_ok:
            raise DatabaseError(f"PostgreSQL left this transaction ({tx.error}): roll it "
                                "back and retry")
        result = work()
        tx.pg_only = True
        return result

    def _keep_file(self, op: str, work: Callable[[], object]) -> None:
        """Make in the legacy files a write PostgreSQL alone took (module docstring).
        Call with the file's lock held since before PostgreSQL's write."""
        try:
            work()
        except (DonnaError, OSError) as exc:
            log.warning("per-entity store: %s not kept in the legacy files: %s", op, exc)

    def _pg_id(self, clerk_id: object) -> str | None:
        """PostgreSQL's id of the user with this Clerk id (None: no such user there)."""
        if not is_valid_name(clerk_id):
            return None
        row = self.pg.get_user_by_clerk_id(clerk_id)
        return None if row is None else row["id"]

    def _owner(self, clerk_id: str | None) -> str | None:
        """PostgreSQL's id of a chat's owner, copying a dual-write user over if its copy
        is missing. :raises NotFoundError: the user exists in none of its stores."""
        if clerk_id is None:
            return None
        if self._in_pg("users"):
            found = self._pg_id(clerk_id)
        else:
            # Users in dual-write (phases.py refuses file): the files are the truth.
            found = self.pg_user_id(clerk_id) if self.files.get_user_by_id(clerk_id) else None
        if found is None:
            raise NotFoundError(f"no user {clerk_id!r}: create it first")
        return found

    # ------------------------------------------------------------------ users, memory
    # Users and memory are in PostgreSQL together or not at all (phases.py).
    def create_user(self, user_data: Mapping[str, Any]) -> str:
        if not self._in_pg("users"):
            return super().create_user(user_data)
        check_fields(user_data, USER_FIELDS, "user")
        clerk_id = check_name(user_data.get("clerk_id"), "clerk_id")  # the user's id here
        with self.user_lock(clerk_id):
            self._pg_write(lambda: self.pg.create_user(user_data))
            self._keep_file("create_user", lambda: self.files.create_user(user_data))
        return clerk_id

    def update_user(self, user_id: str, updates: Mapping[str, Any]) -> bool:
        if not self._in_pg("users"):
            return super().update_user(user_id, updates)
        check_fields(updates, USER_FIELDS, "user")
        if "clerk_id" in updates and updates["clerk_id"] != user_id:
            raise DataError("a user's clerk_id is its id while the files may serve it again: "
                            "it cannot change")

        def work() -> bool:
            found = self._pg_id(user_id)
            return found is not None and self.pg.update_user(found, updates)
        with self.user_lock(user_id):
            found = self._pg_write(work)
            if found:
                self._keep_file("update_user", lambda: self.files.update_user(user_id, updates))
        return found

    def set_user_memory(
        self,
        user_id: str,
        memory_type: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> bool:
        if not self._in_pg("memory"):
            return super().set_user_memory(user_id, memory_type, key, value, expires_at)
        check_memory_type(memory_type)

        def work() -> bool:
            found = self._pg_id(user_id)
            if found is None:
                raise NotFoundError(f"no user {user_id!r}: create it first")
            return self.pg.set_user_memory(found, memory_type, key, value, expires_at)
        with self.user_lock(user_id):
            done = self._pg_write(work)
            self._keep_file("set_user_memory", lambda: self.files.set_user_memory(
                user_id, memory_type, key, value, expires_at))
        return done

    def delete_user_memory(self, user_id: str, memory_type: str, key: str | None = None) -> bool:
        if not self._in_pg("memory"):
            return super().delete_user_memory(user_id, memory_type, key)
        check_memory_type(memory_type)

        def work() -> bool:
            found = self._pg_id(user_id)
            return found is not None and self.pg.delete_user_memory(found, memory_type, key)
        with self.user_lock(user_id):
            deleted = self._pg_write(work)
            if deleted:
                self._keep_file("delete_user_memory", lambda: self.files.delete_user_memory(
                    user_id, memory_type, key))
        return deleted

    # ------------------------------------------------------------------ chat sessions
    def _contain(self, chat_id: str) -> None:
        """Keep the chat file (the messages' container) in step with the session
        PostgreSQL alone holds. Call with the chat's lock held."""
        session = self.get_chat_session(chat_id)
        if session is None:
            raise NotFoundError(f"no chat {chat_id!r}: create the session first")
        # The legacy import's record of how the chat's file spelled it (where the chat
        # was, raw values) is PostgreSQL's alone: the file is that spelling, and the file
        # store refuses the reserved key.
        metadata = {k: v for k, v in session["metadata"].items() if k != LEGACY_KEY}
        self.files.put_chat_session({**session, "metadata": metadata})

    def create_chat_session(
        self,
        chat_id: str,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        profile: str = "general",
    ) -> str:
        if not self._in_pg("chats"):
            return super().create_chat_session(chat_id, user_id, metadata, title=title,
                                               profile=profile)
        with self.chat_lock(chat_id):
            self._pg_write(lambda: self.pg.create_chat_session(
                chat_id, self._owner(user_id), metadata, title=title, profile=profile))
            self._contain(chat_id)
        return chat_id

    def update_chat_session(self, chat_id: str, updates: Mapping[str, Any]) -> bool:
        if not self._in_pg("chats"):
            return super().update_chat_session(chat_id, updates)

        def work() -> bool:
            ours = dict(updates)
            if ours.get("user_id") is not None:
                ours["user_id"] = self._owner(ours["user_id"])
            return self.pg.update_chat_session(chat_id, ours)
        with self.chat_lock(chat_id):
            found = self._pg_write(work)
            if found:
                self._contain(chat_id)
        return found

    # ------------------------------------------------------------------ messages
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
        if self._in_pg("messages"):
            with self.chat_lock(chat_id):
                message_id = self._pg_write(lambda: self.pg.add_message(
                    chat_id, role, content, metadata, token_count=token_count,
                    abuse_flagged=abuse_flagged))
                self._keep_file("add_message", lambda: self._keep_message(chat_id, message_id))
            return message_id
        with self.chat_lock(chat_id):
            if self._in_pg("chats") and is_valid_name(chat_id) and \
                    self.files.get_chat_session(chat_id) is None:
                # A session created before this configuration: its container now.
                self._contain(chat_id)
            return super().add_message(chat_id, role, content, metadata,
                                       token_count=token_count, abuse_flagged=abuse_flagged)

    def _keep_message(self, chat_id: str, message_id: str) -> None:
        """Append to the chat file the message PostgreSQL just stored (same id, time and
        position). Call with the chat's lock held."""
        if self.files.get_chat_session(chat_id) is None:
            self._contain(chat_id)
        last = self.pg.get_chat_history(chat_id, limit=1)
        if not last or last[0]["id"] != message_id:
            raise DataError(f"message {message_id} is not the last of chat {chat_id!r}")
        self.files.put_message(last[0])

    # ------------------------------------------------------------------ system logs
    def _store_log(self, line: dict[str, Any]) -> str:
        if self._in_pg("logs"):
            # Outside any transaction, as in every store: no _pg_write.
            return self.pg.insert_log(line, log_id=None, at=None)
        return super()._store_log(line)

    # ------------------------------------------------------------------ health
    def health_check(self) -> dict[str, Any]:
        """Dual-write's report with each entity's phase; an error when PostgreSQL,
        which alone holds some entity, is down."""
        health = super().health_check()
        if self._needs_pg and health["postgresql"]["status"] == "error":
            health["status"] = "error"
        return health

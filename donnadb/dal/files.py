"""FileDataAccess: the legacy JSON layout (docs/dal.md, docs/plan/legacy-format.md),
made safe: per-file flock, atomic writes, files 0600, folders 0700.

Layout under ``DATA_DIR``::

    chat_sessions/<chat_id>.json   one chat with its messages (the legacy format)
    memory/<clerk_id>.json         one user: profile, preferences, context, expires
    logs/donnadb-<day>-<token>.jsonl  system logs, one JSON object a line (filelog.py)
    .locks/<area>/<name>.lock      empty lock files (flock), one per data file

A user's ``id`` in this store is its Clerk id (the memory file's name); a chat
session's ``id`` is its ``chat_id``; a message's ``id`` is
:func:`~donnadb.dal.values.legacy_message_id` of its chat and position (messages are only
ever appended, so it is stable, and the legacy import gives the row the same id), unless
the message carries an ``id`` of its own. Fields the legacy format lacks are added
(``status``, ``created_at``, ``last_active_at`` in memory files, ``status`` in chats).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from donnadb.dal import fileio, ranking
from donnadb.dal.errors import ConflictError, NotFoundError, TransactionError
from donnadb.dal.fileio import check_file_name
from donnadb.dal.filelog import LogFile, read_line
from donnadb.dal.filerecords import (
    check_key,
    drop_stale_expiry,
    message_record,
    newest_first,
    recent_first,
    session_record,
    user_record,
)
from donnadb.dal.logwriter import LogWriterMixin
from donnadb.dal.protocol import (
    MEMORY_TYPES,
    SESSION_FIELDS,
    USER_FIELDS,
    ChatSession,
    MemoryEntry,
    Message,
    SearchHit,
    TransactionMixin,
    User,
)
from donnadb.dal.values import (
    check_fields,
    check_json_object,
    check_limit,
    check_memory_type,
    check_name,
    check_role,
    check_search,
    check_timestamp,
    check_user_names,
    check_window,
    format_timestamp,
    is_valid_name,
    legacy_log_id,
    now_utc,
    parse_timestamp,
)
from donnadb.errors import DataError

CHATS = "chat_sessions"
MEMORY = "memory"
LOGS = "logs"


class _Held:
    """A lock kept until the end of a transaction, and the file as it was before."""

    __slots__ = ("fd", "original")

    def __init__(self, fd: int, original: bytes | None) -> None:
        self.fd = fd
        self.original = original


class FileDataAccess(TransactionMixin, LogWriterMixin):
    """The file store. Thread- and process-safe; see the module docstring for the layout.

    Transactions hold every touched file's lock until commit/rollback; rollback puts
    the files back as they were. Readers take no lock (writes are atomic renames), so
    they may see another thread's uncommitted writes; a crash inside a transaction
    leaves the writes made so far.
    """

    store = "file"

    def __init__(self, data_dir: Path | str, *, lock_timeout: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.lock_timeout = lock_timeout
        self._local = threading.local()
        self._log = LogFile(self.data_dir / LOGS)
        for area in (CHATS, MEMORY):
            fileio.ensure_dir(self.data_dir / area)
            fileio.ensure_dir(self.data_dir / ".locks" / area)

    # ------------------------------------------------------------------ paths, locks
    def chat_path(self, chat_id: str) -> Path:
        """:raises UnsafeNameError: ``chat_id`` cannot be a file name."""
        return self.data_dir / CHATS / f"{check_file_name(chat_id, 'chat_id', '.json')}.json"

    def user_path(self, clerk_id: str) -> Path:
        """:raises UnsafeNameError: ``clerk_id`` cannot be a file name."""
        return self.data_dir / MEMORY / f"{check_file_name(clerk_id, 'clerk_id', '.json')}.json"

    def _lock_path(self, path: Path) -> Path:
        return self.data_dir / ".locks" / path.parent.name / f"{path.stem}.lock"

    @property
    def _tx(self) -> dict[Path, _Held] | None:
        return getattr(self._local, "tx", None)

    @property
    def _held(self) -> set[Path]:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = set()
        return held

    @contextmanager
    def locked(self, path: Path) -> Iterator[None]:
        """Exclusive access to the data file ``path`` (from :meth:`chat_path` or
        :meth:`user_path`) for the block, across threads and processes; re-entrant in
        one thread. Inside a transaction the lock is kept until commit/rollback.

        Dual-write holds it while copying the entity to PostgreSQL, so the copies of
        one entity reach the database in the order the files were written.
        """
        tx = self._tx
        if tx is None:
            held = self._held
            if path in held:
                yield
                return
            fd = fileio.acquire(self._lock_path(path))
            held.add(path)
            try:
                yield
            finally:
                held.discard(path)
                fileio.release(fd)
            return
        if path not in tx:
            # Timed: two transactions locking files in opposite order would deadlock.
            fd = fileio.acquire(self._lock_path(path), timeout=self.lock_timeout)
            tx[path] = _Held(fd, fileio.read_bytes(path))
        yield

    def _write(self, path: Path, document: Any) -> None:
        fileio.write_atomic(path, fileio.dump_json(document))

    def _create(self, path: Path, document: Any, what: str) -> None:
        """Write a new data file. :raises ConflictError: it exists already."""
        with self.locked(path):
            if path.exists():
                raise ConflictError(f"{what} already exists")
            self._write(path, document)

    def _read_user(self, user_id: str) -> dict[str, Any] | None:
        if not is_valid_name(user_id):
            return None
        raw = fileio.read_json(self.user_path(user_id))
        if raw is not None and not isinstance(raw, dict):
            raise DataError(f"{self.user_path(user_id)} does not hold a JSON object")
        return raw

    def _read_chat(self, chat_id: str) -> dict[str, Any] | None:
        if not is_valid_name(chat_id):
            return None
        raw = fileio.read_json(self.chat_path(chat_id))
        if raw is not None and not isinstance(raw, dict):
            raise DataError(f"{self.chat_path(chat_id)} does not hold a JSON object")
        return raw

    def _require_user(self, user_id: str | None) -> None:
        if user_id is not None and self._read_user(user_id) is None:
            raise NotFoundError(f"no user {user_id!r}: create it first")

    # ------------------------------------------------------------------ users
    def create_user(self, user_data: Mapping[str, Any]) -> str:
        """:raises DataError: no usable ``clerk_id`` (it names the file).
        :raises ConflictError: a user with that clerk id exists."""
        check_fields(user_data, USER_FIELDS, "user")
        clerk_id = check_name(user_data.get("clerk_id"), "clerk_id")
        check_user_names(user_data)
        now = format_timestamp(now_utc())
        document = {
            "user_id": clerk_id,
            "email": user_data.get("email"),
            "name": user_data.get("name"),
            "profile": check_json_object(user_data.get("profile"), "profile"),
            "preferences": check_json_object(user_data.get("preferences"), "preferences"),
            "context": {},
            "expires": {},
            "status": user_data.get("status") or "active",
            "created_at": now,
            "updated_at": now,
            "last_active_at": format_timestamp(
                check_timestamp(user_data.get("last_active_at"), "last_active_at")),
        }
        self._create(self.user_path(clerk_id), document, f"user {clerk_id!r}")
        return clerk_id

    def get_user_by_id(self, user_id: str) -> User | None:
        raw = self._read_user(user_id)
        return None if raw is None else user_record(user_id, raw)

    def get_user_by_clerk_id(self, clerk_id: str) -> User | None:
        return self.get_user_by_id(clerk_id)

    def update_user(self, user_id: str, updates: Mapping[str, Any]) -> bool:
        """:raises DataError: an unknown field, or a new clerk_id (it names the file)."""
        check_fields(updates, USER_FIELDS, "user")
        check_user_names(updates)
        if "clerk_id" in updates and updates["clerk_id"] != user_id:
            raise DataError("the file store cannot change a user's clerk_id (it names the file)")
        last_active = check_timestamp(updates.get("last_active_at"), "last_active_at")
        if not is_valid_name(user_id):
            return False
        path = self.user_path(user_id)
        with self.locked(path):
            raw = self._read_user(user_id)
            if raw is None:
                return False
            for field in ("email", "name", "status"):
                if field in updates:
                    raw[field] = updates[field]
            for section in ("profile", "preferences"):
                if section in updates:
                    raw[section] = check_json_object(updates[section], section)
                    drop_stale_expiry(raw, section)
            if "last_active_at" in updates:
                raw["last_active_at"] = format_timestamp(last_active)
            raw["updated_at"] = format_timestamp(now_utc())
            self._write(path, raw)
        return True

    # ------------------------------------------------------------------ chat sessions
    def create_chat_session(
        self,
        chat_id: str,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        profile: str = "general",
    ) -> str:
        check_name(chat_id, "chat_id")
        self._require_user(user_id)
        now = format_timestamp(now_utc())
        document = {
            "chat_id": chat_id,
            "user_id": user_id,
            "title": title,
            "profile": profile or "general",
            "status": "active",
            "created_at": now,
            "updated_at": now,
            "metadata": check_json_object(metadata, "metadata"),
            "messages": [],
        }
        self._create(self.chat_path(chat_id), document, f"chat {chat_id!r}")
        return chat_id

    def get_chat_session(self, chat_id: str) -> ChatSession | None:
        raw = self._read_chat(chat_id)
        return None if raw is None else session_record(chat_id, raw)

    def update_chat_session(self, chat_id: str, updates: Mapping[str, Any]) -> bool:
        check_fields(updates, SESSION_FIELDS, "chat session")
        if "user_id" in updates:
            self._require_user(updates["user_id"])
        if not is_valid_name(chat_id):
            return False
        path = self.chat_path(chat_id)
        with self.locked(path):
            raw = self._read_chat(chat_id)
            if raw is None:
                return False
            for field in ("user_id", "title", "status"):
                if field in updates:
                    raw[field] = updates[field]
            if "profile" in updates:
                raw["profile"] = updates["profile"] or "general"
            if "metadata" in updates:
                raw["metadata"] = check_json_object(updates["metadata"], "metadata")
            raw["updated_at"] = format_timestamp(now_utc())
            self._write(path, raw)
        return True

    def put_chat_session(self, session: Mapping[str, Any]) -> None:
        """Create or overwrite a chat's metadata from another store's copy (``user_id``
        a Clerk id), keeping its messages. A store with chat sessions in PostgreSQL and
        their messages still in files keeps the file as the messages' container; the
        owner need not have a memory file (the legacy format allows that too).

        :raises DataError: the chat id cannot be a file name.
        """
        chat_id = check_name(session["chat_id"], "chat_id")
        path = self.chat_path(chat_id)
        with self.locked(path):
            raw = self._read_chat(chat_id) or {"chat_id": chat_id, "messages": []}
            for field in ("user_id", "title", "profile", "status"):
                raw[field] = session.get(field)
            raw["metadata"] = check_json_object(session.get("metadata"), "metadata")
            for field in ("created_at", "updated_at"):
                raw[field] = format_timestamp(session.get(field))
            self._write(path, raw)

    def put_message(self, message: Message) -> None:
        """Append another store's copy of a message (its id and time kept) as the chat
        file's next one. :raises NotFoundError: no such chat file.
        :raises DataError: the file does not hold the messages before it."""
        chat_id = message["chat_id"]
        path = self.chat_path(chat_id)
        with self.locked(path):
            raw = self._read_chat(chat_id)
            if raw is None:
                raise NotFoundError(f"no chat file {chat_id!r}")
            messages = raw.setdefault("messages", [])
            if message["sequence_number"] != len(messages) + 1:
                raise DataError(f"chat file {chat_id!r} holds {len(messages)} messages, not "
                                f"the {message['sequence_number'] - 1} before this one")
            stamp = format_timestamp(message["created_at"])
            messages.append({"id": message["id"], "role": message["role"],
                             "content": message["content"], "timestamp": stamp,
                             "metadata": message["metadata"], "tokens": message["token_count"],
                             "flagged": message["abuse_flagged"]})
            raw["updated_at"] = stamp
            self._write(path, raw)

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
        return self.append_message(
            chat_id, role, content, metadata, token_count=token_count, abuse_flagged=abuse_flagged
        )["id"]

    def append_message(
        self,
        chat_id: str,
        role: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        token_count: int | None = None,
        abuse_flagged: bool = False,
    ) -> Message:
        """add_message returning the whole stored message (dual-write copies it).

        :raises NotFoundError: no such chat.
        """
        check_role(role)
        if not isinstance(content, str):
            raise DataError(f"message content must be text, not {type(content).__name__}")
        if token_count is not None and (not isinstance(token_count, int) or token_count < 0):
            raise DataError(f"token_count must be a non-negative integer, not {token_count!r}")
        entry = {
            "role": role,
            "content": content,
            "timestamp": format_timestamp(now_utc()),
            "metadata": check_json_object(metadata, "metadata"),
            "tokens": token_count,
            "flagged": bool(abuse_flagged),
        }
        path = self.chat_path(chat_id) if is_valid_name(chat_id) else None
        if path is None:
            raise NotFoundError(f"no chat {chat_id!r}: create the session first")
        with self.locked(path):
            raw = self._read_chat(chat_id)
            if raw is None:
                raise NotFoundError(f"no chat {chat_id!r}: create the session first")
            messages = raw.setdefault("messages", [])
            messages.append(entry)
            raw["updated_at"] = entry["timestamp"]
            self._write(path, raw)
            return message_record(chat_id, len(messages), entry)

    def get_chat_history(self, chat_id: str, limit: int = 20, offset: int = 0) -> list[Message]:
        check_window(limit, offset)
        raw = self._read_chat(chat_id)
        if raw is None:
            return []
        messages = raw.get("messages") or []
        end = max(len(messages) - offset, 0)
        start = max(end - limit, 0)
        return [message_record(chat_id, i + 1, messages[i]) for i in range(start, end)]

    def get_all_messages(self, chat_id: str) -> list[Message]:
        """Every message of the chat in order (``[]`` for an unknown chat)."""
        raw = self._read_chat(chat_id)
        messages = (raw or {}).get("messages") or []
        return [message_record(chat_id, i + 1, m) for i, m in enumerate(messages)]

    def get_message_count(self, chat_id: str) -> int:
        raw = self._read_chat(chat_id)
        return 0 if raw is None else len(raw.get("messages") or [])

    def list_chat_sessions(self, user_id: str, limit: int = 20) -> list[ChatSession]:
        """Reads every chat file: the legacy layout has no index of a user's chats."""
        check_limit(limit)
        return [s for s, _ in self._user_chats(user_id)][:limit]

    def search_messages(
        self, user_id: str, query: str, *, limit: int = 20, recent_chats: int | None = None
    ) -> list[SearchHit]:
        """Messages holding every word of ``query`` as a whole word, case-insensitively,
        by cover density then newest first (:mod:`~donnadb.dal.ranking`)."""
        terms = ranking.words(check_search(query, limit, recent_chats))
        if not terms:
            return []
        chats = [(s, raw) for s, raw in self._user_chats(user_id) if s["message_count"]]
        if recent_chats is not None:
            chats = chats[:recent_chats]
        hits = []
        for session, raw in chats:
            for i, entry in enumerate(raw.get("messages") or []):
                message = message_record(session["chat_id"], i + 1, entry)
                if terms <= ranking.words(message["content"]):
                    hits.append(message)
        ranks = {id(m): ranking.cover_density(m["content"], terms) for m in hits}
        page = sorted(newest_first(hits), key=lambda m: ranks[id(m)], reverse=True)[:limit]
        return [{**m, "snippet": ranking.snippet(m["content"], terms)} for m in page]

    def _user_chats(self, user_id: str) -> list[tuple[ChatSession, dict[str, Any]]]:
        """The user's chats (records and documents) in list_chat_sessions' order; a chat
        file that cannot be read is skipped (the import quarantines it)."""
        found = {}
        if is_valid_name(user_id):
            for path in (self.data_dir / CHATS).glob("*.json"):
                try:
                    raw = self._read_chat(path.stem)
                except DataError:
                    continue
                if raw is not None and raw.get("user_id") == user_id:
                    found[path.stem] = raw
        sessions = recent_first([session_record(c, raw) for c, raw in found.items()])
        return [(s, found[s["chat_id"]]) for s in sessions]

    # ------------------------------------------------------------------ system logs
    def _store_log(self, line: dict[str, Any]) -> str:
        return legacy_log_id(self.append_log(line))

    def append_log(self, line: dict[str, Any]) -> str:
        """Append a :func:`~donnadb.dal.values.log_line` object; return its source
        (``FILE:LINE``, dual-write queues it)."""
        return self._log.append(line)

    def read_log(self, source: str) -> dict[str, Any] | None:
        """The log line ``source`` names (None when it is gone)."""
        return read_line(self.data_dir / LOGS, source)

    # ------------------------------------------------------------------ user memory
    def set_user_memory(
        self,
        user_id: str,
        memory_type: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> bool:
        """:raises NotFoundError: no such user.
        :raises DataError: an invalid type, key or ``expires_at``."""
        check_memory_type(memory_type)
        check_key(key)
        expires_at = check_timestamp(expires_at, "expires_at")
        if not is_valid_name(user_id):
            raise NotFoundError(f"no user {user_id!r}: create it first")
        path = self.user_path(user_id)
        with self.locked(path):
            raw = self._read_user(user_id)
            if raw is None:
                raise NotFoundError(f"no user {user_id!r}: create it first")
            section = raw.get(memory_type)
            if not isinstance(section, dict):
                section = raw[memory_type] = {}
            section[key] = value
            expires = raw.get("expires")
            if not isinstance(expires, dict):
                expires = raw["expires"] = {}
            if expires_at is None:
                expires.pop(f"{memory_type}.{key}", None)
            else:
                expires[f"{memory_type}.{key}"] = format_timestamp(expires_at)
            raw["updated_at"] = format_timestamp(now_utc())
            self._write(path, raw)
        return True

    def get_user_memory(
        self, user_id: str, memory_type: str, key: str | None = None
    ) -> dict[str, Any]:
        check_memory_type(memory_type)
        now = now_utc()
        return {
            e["key"]: e["value"]
            for e in self.memory_entries(user_id, memory_type)
            if (key is None or e["key"] == key)
            and (e["expires_at"] is None or e["expires_at"] > now)
        }

    def memory_entries(self, user_id: str, memory_type: str | None = None) -> list[MemoryEntry]:
        """Every stored entry of the user (of one type when given), expired ones included."""
        raw = self._read_user(user_id)
        if raw is None:
            return []
        expires = raw.get("expires") if isinstance(raw.get("expires"), dict) else {}
        types = (memory_type,) if memory_type else MEMORY_TYPES
        entries: list[MemoryEntry] = []
        for mtype in types:
            section = raw.get(mtype)
            if not isinstance(section, dict):
                continue
            for k, v in section.items():
                entries.append(
                    {"memory_type": mtype, "key": k, "value": v,
                     "expires_at": parse_timestamp(expires.get(f"{mtype}.{k}"))}
                )
        return entries

    def delete_user_memory(self, user_id: str, memory_type: str, key: str | None = None) -> bool:
        check_memory_type(memory_type)
        if not is_valid_name(user_id):
            return False
        path = self.user_path(user_id)
        with self.locked(path):
            raw = self._read_user(user_id)
            if raw is None:
                return False
            section = raw.get(memory_type)
            if not isinstance(section, dict) or not section:
                return False
            removed = [key] if key is not None else list(section)
            removed = [k for k in removed if k in section]
            if not removed:
                return False
            expires = raw.get("expires") if isinstance(raw.get("expires"), dict) else {}
            for k in removed:
                del section[k]
                expires.pop(f"{memory_type}.{k}", None)
            raw["updated_at"] = format_timestamp(now_utc())
            self._write(path, raw)
        return True

    # ------------------------------------------------------------------ transactions
    def begin_transaction(self) -> bool:
        """:raises TransactionError: a transaction is already open on this thread."""
        if self._tx is not None:
            raise TransactionError("a transaction is already open on this thread")
        if self._held:
            raise TransactionError("cannot begin a transaction inside a locked() block")
        self._local.tx = {}
        return True

    def commit(self) -> bool:
        """:raises TransactionError: no transaction is open on this thread."""
        tx = self._end()
        for held in tx.values():
            fileio.release(held.fd)
        return True

    def rollback(self) -> bool:
        """Put every touched file back as it was, then release the locks.

        :raises TransactionError: no transaction is open on this thread.
        """
        tx = self._end()
        try:
            for path, held in tx.items():
                if held.original is None:
                    fileio.remove(path)
                else:
                    fileio.write_atomic(path, held.original)
        finally:
            for held in tx.values():
                fileio.release(held.fd)
        return True

    def _end(self) -> dict[Path, _Held]:
        tx = self._tx
        if tx is None:
            raise TransactionError("no transaction is open on this thread")
        self._local.tx = None
        return tx

    # ------------------------------------------------------------------ health
    def health_check(self) -> dict[str, Any]:
        result: dict[str, Any] = {"store": self.store, "data_dir": str(self.data_dir)}
        try:
            insecure = []
            for path in (self.data_dir, self.data_dir / CHATS, self.data_dir / MEMORY):
                if os.stat(path).st_mode & 0o077:
                    insecure.append(str(path))
            writable = all(
                os.access(self.data_dir / area, os.W_OK | os.X_OK) for area in (CHATS, MEMORY)
            )
        except OSError as exc:
            return {**result, "status": "error", "error": str(exc)}
        result["writable"] = writable
        result["insecure_paths"] = insecure
        if not writable:
            result["status"] = "error"
            result["error"] = f"{self.data_dir} is not writable"
        else:
            result["status"] = "warning" if insecure else "ok"
        return result

    def close(self) -> None:
        """Close the log file (locks are held only inside calls and transactions)."""
        self._log.close()

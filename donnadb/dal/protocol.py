"""The data-access interface: the plan's DataAccessInterface in Python naming.

Every implementation (:class:`~donnadb.dal.files.FileDataAccess`,
:class:`~donnadb.dal.postgres.PostgresDataAccess`,
:class:`~donnadb.dal.dualwrite.DualWriteDataAccess`) returns the same plain shapes,
documented by the ``TypedDict`` classes below; timestamps are timezone-aware
``datetime`` objects in UTC (``None`` where unknown). The contract suite
(``tests/dal/test_contract.py``) runs unchanged against all three.

Identifiers differ by store and are opaque to callers: a user's ``id`` is a UUID
string in PostgreSQL and the Clerk id in the file store and in dual-write mode; a chat
session's ``id`` is a UUID in PostgreSQL and the ``chat_id`` in the file store.
Chats are always addressed by ``chat_id``, users by the ``id`` the store returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, TypedDict, runtime_checkable

#: Message roles the schema accepts (messages_role_check).
ROLES = ("user", "assistant", "system")
#: Memory types: the legacy memory file's three sections.
MEMORY_TYPES = ("profile", "preferences", "context")
#: Keys create_user/update_user accept.
USER_FIELDS = ("clerk_id", "email", "name", "profile", "preferences", "status", "last_active_at")
#: Keys update_chat_session accepts.
SESSION_FIELDS = ("user_id", "title", "profile", "metadata", "status")


class User(TypedDict):
    id: str
    clerk_id: str | None
    email: str | None
    name: str | None
    profile: dict[str, Any]
    preferences: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    last_active_at: datetime | None
    status: str


class ChatSession(TypedDict):
    id: str
    chat_id: str
    user_id: str | None
    title: str | None
    profile: str
    metadata: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    last_message_at: datetime | None
    message_count: int
    status: str


class Message(TypedDict):
    id: str
    chat_id: str
    role: str
    content: str
    metadata: dict[str, Any]
    created_at: datetime | None
    sequence_number: int
    token_count: int | None
    abuse_flagged: bool


class SearchHit(Message):
    """A message found by search_messages, with the words of the query marked in a
    short piece of it (``**word**``; the whole message when it is short)."""

    snippet: str


class MemoryEntry(TypedDict):
    """One user_memory row, expired or not (used to copy memory between stores)."""

    memory_type: str
    key: str
    value: Any
    expires_at: datetime | None


@runtime_checkable
class DataAccess(Protocol):
    """What every store offers. Implementations are safe to share between threads.

    Writes raise :class:`~donnadb.dal.errors.NotFoundError` for an unknown user or
    chat, :class:`~donnadb.dal.errors.ConflictError` on a duplicate create and
    :class:`~donnadb.errors.DataError` for invalid input; PostgreSQL failures are
    :class:`~donnadb.errors.DatabaseError`.
    """

    # Users
    def create_user(self, user_data: Mapping[str, Any]) -> str:
        """Create a user from :data:`USER_FIELDS` keys; return its id."""

    def get_user_by_id(self, user_id: str) -> User | None: ...

    def get_user_by_clerk_id(self, clerk_id: str) -> User | None: ...

    def update_user(self, user_id: str, updates: Mapping[str, Any]) -> bool:
        """Replace the given fields; False when the user does not exist."""

    # Chat sessions
    def create_chat_session(
        self,
        chat_id: str,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        profile: str = "general",
    ) -> str:
        """Create an empty chat; return the session id."""

    def get_chat_session(self, chat_id: str) -> ChatSession | None: ...

    def update_chat_session(self, chat_id: str, updates: Mapping[str, Any]) -> bool:
        """Replace the given :data:`SESSION_FIELDS`; False when the chat does not exist."""

    # Messages
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
        """Append a message (next sequence_number, 1-based); return its id."""

    def get_chat_history(self, chat_id: str, limit: int = 20, offset: int = 0) -> list[Message]:
        """The ``limit`` messages before the newest ``offset`` ones, oldest first.

        ``offset=0`` gives the latest ``limit`` messages; ``[]`` for an unknown chat.
        """

    def get_message_count(self, chat_id: str) -> int: ...

    def list_chat_sessions(self, user_id: str, limit: int = 20) -> list[ChatSession]:
        """The user's ``limit`` most recently active chats: chats without a message
        first, then by last message, newest first (ties: newest created_at, then
        chat_id). ``[]`` for an unknown user."""

    def search_messages(
        self, user_id: str, query: str, *, limit: int = 20, recent_chats: int | None = None
    ) -> list[SearchHit]:
        """The user's messages holding every word of ``query``, most relevant first:
        by cover density (the query's words appearing often and close together,
        PostgreSQL's ``ts_rank_cd``), then newest first (ties: chat_id, then position
        from the end); at most ``limit``; only in the user's ``recent_chats`` most
        recently active chats (:meth:`list_chat_sessions`' order, chats without a
        message left out) when given. Each hit's ``snippet`` marks the query's words
        (:mod:`donnadb.dal.ranking`), computed for the returned page only.

        Every store finds a message that holds each word as a whole word in any case.
        PostgreSQL (english full-text search) also finds other forms of a word
        ("meetings" for "meeting") and ignores stop words ("the"); the file store does
        neither. A query with no words finds nothing.
        """

    # System logs
    def write_log(
        self,
        level: str,
        message: str,
        context: Mapping[str, Any] | None = None,
        *,
        trace_id: str | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        request_uri: str | None = None,
    ) -> str:
        """Append a system_logs entry (a ``logs/*.jsonl`` line in the file store); return
        its id. ``level`` is stored lower-cased (1-20 characters).

        The entry is written at once, outside any open transaction: a rollback keeps it
        (the log of a failure is most needed when the work it records is rolled back).

        :raises DataError: invalid IP address, oversized level or trace_id, a context
            that is not a JSON object, or text PostgreSQL cannot store (NUL).
        """

    # User memory
    def set_user_memory(
        self,
        user_id: str,
        memory_type: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> bool:
        """Insert or replace one entry; True on success.

        :raises DataError: an unreadable or out-of-range ``expires_at`` (docs/dal.md,
            "Timestamps"; ``last_active_at`` of a user likewise).
        """

    def get_user_memory(
        self, user_id: str, memory_type: str, key: str | None = None
    ) -> dict[str, Any]:
        """``{key: value}`` of the unexpired entries (only ``key`` when given)."""

    def delete_user_memory(self, user_id: str, memory_type: str, key: str | None = None) -> bool:
        """Delete one entry or the whole type; True when something was deleted."""

    # Transactions and health
    def begin_transaction(self) -> bool: ...

    def commit(self) -> bool: ...

    def rollback(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[None]:
        """``with dal.transaction():`` commits on success, rolls back on an exception."""

    def health_check(self) -> dict[str, Any]:
        """``{"status": "ok"|"error", "store": ..., ...}``; never raises."""

    def close(self) -> None: ...


class TransactionMixin:
    """``transaction()`` built on begin_transaction/commit/rollback."""

    def transaction(self) -> AbstractContextManager[None]:
        return _Transaction(self)


class _Transaction(AbstractContextManager[None]):
    def __init__(self, dal: Any) -> None:
        self._dal = dal

    def __enter__(self) -> None:
        self._dal.begin_transaction()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._dal.commit()
        else:
            self._dal.rollback()
        return False

"""Errors the data-access layer raises on purpose (all are :class:`DonnaError`)."""

from __future__ import annotations

from donnadb.errors import DatabaseError, DataError, UsageError


class NotFoundError(DataError):
    """A write names a user or chat that does not exist."""


class ConflictError(DataError):
    """A create names a user (clerk id) or chat (chat id) that already exists."""


class TransactionError(UsageError):
    """begin/commit/rollback called out of order on this thread."""


class LockTimeout(DataError):
    """A file lock could not be taken in time (another transaction holds it)."""


class FailoverError(DatabaseError):
    """A write reached a server that is no longer the leader (read-only), or lost its
    connection: a failover or switchover is under way. The connection was discarded;
    the caller may retry (see docs/dal.md, "During a failover")."""

"""The data-access layer: one interface, three stores (files, PostgreSQL, dual-write),
and a store per entity (mixed) built on dual-write.

See docs/dal.md. Applications call :func:`create_data_access`.
"""

from donnadb.dal.dualwrite import DualWriteDataAccess
from donnadb.dal.errors import (
    ConflictError,
    FailoverError,
    LockTimeout,
    NotFoundError,
    TransactionError,
)
from donnadb.dal.factory import (
    STORAGE_TYPES,
    create_data_access,
    create_dual_write,
    create_mixed,
    entity_phases,
)
from donnadb.dal.files import FileDataAccess
from donnadb.dal.mixed import MixedDataAccess
from donnadb.dal.pending import ReconcileQueue
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.protocol import (
    MEMORY_TYPES,
    ROLES,
    ChatSession,
    DataAccess,
    MemoryEntry,
    Message,
    SearchHit,
    User,
)
from donnadb.dal.reconcile import ReconcileResult, reconcile

__all__ = [
    "MEMORY_TYPES",
    "ROLES",
    "STORAGE_TYPES",
    "ChatSession",
    "ConflictError",
    "DataAccess",
    "DualWriteDataAccess",
    "FailoverError",
    "FileDataAccess",
    "LockTimeout",
    "MemoryEntry",
    "MixedDataAccess",
    "Message",
    "NotFoundError",
    "PostgresDataAccess",
    "ReconcileQueue",
    "ReconcileResult",
    "SearchHit",
    "TransactionError",
    "User",
    "create_data_access",
    "create_dual_write",
    "create_mixed",
    "entity_phases",
    "reconcile",
]

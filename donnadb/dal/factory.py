"""create_data_access(): the store DATA_STORAGE_TYPE and MIGRATION_* select.

=====================  ==============================  =============================
DATA_STORAGE_TYPE      MIGRATION_ENABLE_DUAL_WRITE     result
=====================  ==============================  =============================
file                   false                           FileDataAccess(DATA_DIR)
postgresql             false                           PostgresDataAccess
dual                   (any)                           DualWriteDataAccess
file or postgresql     true                            DualWriteDataAccess
=====================  ==============================  =============================

Dual-write reads come from MIGRATION_PRIMARY_STORE (file | postgresql, default file)
and queues failures in MIGRATION_RECONCILE_QUEUE (default
``DATA_DIR/.dualwrite/pending.jsonl``).
"""

from __future__ import annotations

from donnadb.config import Settings, get_settings
from donnadb.dal.dualwrite import PRIMARY_STORES, DualWriteDataAccess
from donnadb.dal.files import FileDataAccess
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.protocol import DataAccess
from donnadb.errors import ConfigError

STORAGE_TYPES = ("file", "postgresql", "dual")


def create_data_access(settings: Settings | None = None, *, dbname: str | None = None
                       ) -> DataAccess:
    """The configured store. ``dbname`` overrides DB_NAME (tests use scratch databases).

    :raises ConfigError: DATA_STORAGE_TYPE or MIGRATION_PRIMARY_STORE has an unknown value.
    :raises CredentialsError: PostgreSQL is selected and the app role has no password.
    """
    s = settings or get_settings()
    kind = s.data_storage_type
    if kind not in STORAGE_TYPES:
        raise ConfigError(
            f"invalid setting DATA_STORAGE_TYPE: {kind!r}; use one of {', '.join(STORAGE_TYPES)}"
        )
    if kind == "dual" or s.migration_enable_dual_write:
        return create_dual_write(s, dbname=dbname)
    if kind == "postgresql":
        return PostgresDataAccess(s, dbname=dbname)
    return FileDataAccess(s.data_dir)


def create_dual_write(settings: Settings | None = None, *, dbname: str | None = None
                      ) -> DualWriteDataAccess:
    """The dual-write store whatever DATA_STORAGE_TYPE says (reconcile needs it).

    :raises ConfigError: MIGRATION_PRIMARY_STORE has an unknown value.
    """
    s = settings or get_settings()
    primary = s.migration_primary_store
    if primary not in PRIMARY_STORES:
        raise ConfigError(
            f"invalid setting MIGRATION_PRIMARY_STORE: {primary!r}; use file or postgresql"
        )
    # A short pool timeout: a write must not wait long for a database that is only a copy.
    pg = PostgresDataAccess(s, dbname=dbname, pool_timeout=float(s.db_connect_timeout))
    return DualWriteDataAccess(
        FileDataAccess(s.data_dir), pg, primary=primary,
        queue_path=s.migration_reconcile_queue,
    )

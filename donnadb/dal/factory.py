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
``DATA_DIR/.dualwrite/pending.jsonl``); with MIGRATION_MIRROR_STATS_DIR its copy
figures go there for `donnactl metrics`.

DATA_STORAGE_USERS, _MEMORY, _CHATS, _MESSAGES and _LOGS override that choice for one
entity (unset: the choice above). When every entity ends up in the same phase the
result is the table's; otherwise a MixedDataAccess routes each call by entity, once
phases.py has accepted the combination.
"""

from __future__ import annotations

from pathlib import Path

from donnadb.config import Settings, get_settings
from donnadb.dal.dualwrite import PRIMARY_STORES, DualWriteDataAccess
from donnadb.dal.files import FileDataAccess
from donnadb.dal.mixed import MixedDataAccess
from donnadb.dal.pending import default_path
from donnadb.dal.phases import ENTITIES, check_phases, setting
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.protocol import DataAccess
from donnadb.errors import ConfigError

STORAGE_TYPES = ("file", "postgresql", "dual")


def create_data_access(settings: Settings | None = None, *, dbname: str | None = None
                       ) -> DataAccess:
    """The configured store. ``dbname`` overrides DB_NAME (tests use scratch databases).

    :raises ConfigError: DATA_STORAGE_TYPE, a DATA_STORAGE_<ENTITY> or
        MIGRATION_PRIMARY_STORE has an unknown value, or the entities' phases cannot
        stay consistent together.
    :raises CredentialsError: PostgreSQL is selected and the app role has no password.
    """
    s = settings or get_settings()
    phases = entity_phases(s)
    kinds = set(phases.values())
    if len(kinds) > 1:
        return create_mixed(s, phases, dbname=dbname)
    (kind,) = kinds
    if kind == "dual":
        return create_dual_write(s, dbname=dbname)
    if kind == "postgresql":
        return PostgresDataAccess(s, dbname=dbname)
    return FileDataAccess(s.data_dir)


def entity_phases(settings: Settings) -> dict[str, str]:
    """Each entity's phase: its DATA_STORAGE_<ENTITY>, else the global choice.

    :raises ConfigError: DATA_STORAGE_TYPE has an unknown value.
    """
    kind = settings.data_storage_type
    if kind not in STORAGE_TYPES:
        raise ConfigError(
            f"invalid setting DATA_STORAGE_TYPE: {kind!r}; use one of {', '.join(STORAGE_TYPES)}"
        )
    default = "dual" if settings.migration_enable_dual_write else kind
    phases = {e: getattr(settings, f"data_storage_{e}", None) or default for e in ENTITIES}
    for entity, phase in phases.items():
        if phase not in STORAGE_TYPES:  # settings built without validation
            raise ConfigError(f"invalid setting {setting(entity)}: {phase!r}; use one of "
                              f"{', '.join(STORAGE_TYPES)}")
    return phases


def reconcile_queue_path(settings: Settings) -> Path:
    """The reconcile queue dual-write uses with these settings."""
    return settings.migration_reconcile_queue or default_path(settings.data_dir)


def _primary(settings: Settings) -> str:
    primary = settings.migration_primary_store
    if primary not in PRIMARY_STORES:
        raise ConfigError(
            f"invalid setting MIGRATION_PRIMARY_STORE: {primary!r}; use file or postgresql"
        )
    return primary


def create_mixed(settings: Settings, phases: dict[str, str], *, dbname: str | None = None
                 ) -> MixedDataAccess:
    """The store routing each entity by its phase.

    :raises ConfigError: the phases cannot stay consistent, or MIGRATION_PRIMARY_STORE
        has an unknown value.
    """
    primary = _primary(settings)
    check_phases(phases, primary)  # before any connection is opened
    # Short pool timeout as in dual-write: most calls only copy to PostgreSQL.
    pg = PostgresDataAccess(settings, dbname=dbname,
                            pool_timeout=float(settings.db_connect_timeout))
    return MixedDataAccess(FileDataAccess(settings.data_dir), pg, phases=phases,
                           primary=primary, queue_path=settings.migration_reconcile_queue,
                           stats_dir=settings.migration_mirror_stats_dir)


def create_dual_write(settings: Settings | None = None, *, dbname: str | None = None
                      ) -> DualWriteDataAccess:
    """The dual-write store whatever DATA_STORAGE_TYPE says (reconcile needs it).

    :raises ConfigError: MIGRATION_PRIMARY_STORE has an unknown value.
    """
    s = settings or get_settings()
    primary = _primary(s)
    # A short pool timeout: a write must not wait long for a database that is only a copy.
    pg = PostgresDataAccess(s, dbname=dbname, pool_timeout=float(s.db_connect_timeout))
    return DualWriteDataAccess(
        FileDataAccess(s.data_dir), pg, primary=primary,
        queue_path=s.migration_reconcile_queue, stats_dir=s.migration_mirror_stats_dir,
    )

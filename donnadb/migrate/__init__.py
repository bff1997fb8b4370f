"""The schema migration runner: forward-only, checksummed SQL files under schema/migrations."""

from donnadb.migrate.files import MigrationFile, discover
from donnadb.migrate.runner import (
    AppliedMigration,
    MigrationStatus,
    apply_migrations,
    compare,
    get_status,
    plan,
)

__all__ = [
    "AppliedMigration",
    "MigrationFile",
    "MigrationStatus",
    "apply_migrations",
    "compare",
    "discover",
    "get_status",
    "plan",
]

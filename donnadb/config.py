"""The one settings object.

Precedence, highest first: command-line flag (passed as keyword arguments to
:func:`get_settings`), process environment, ``./.env``, the host file the deploy
writes from ``group_data`` (``/etc/donnadb/donnadb.env``), then the defaults below.
Variable names are the plan's (``DB_HOST``, ``DATA_STORAGE_TYPE`` ...).

Passwords are never settings: every role's password lives in the libpq password
file the deploy generates (``DB_PASSFILE``, mode 0600), which psycopg, psql,
pg_dump and pgcli all read without a password ever reaching argv or a log.
``DB_PASSWORD`` exists only for the plan's application user on hosts we did not
deploy ourselves.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from donnadb.errors import ConfigError

#: Written by the deploy from group_data; read by every donnactl command on the host.
HOST_ENV_FILE = Path(os.environ.get("DONNADB_HOST_ENV", "/etc/donnadb/donnadb.env"))
#: Where the deploy keeps generated role passwords (libpq passfile format, 0600).
DEFAULT_PASSFILE = Path("/etc/donnadb/pgpass")

# Role names: the deploy (group_data) and the runtime agree on these defaults.
ROLE_OWNER = "donna_owner"
ROLE_MIGRATOR = "donna_migrator"
ROLE_APP = "donna_app"
ROLE_READONLY = "donna_readonly"
ROLE_BACKUP = "donna_backup"


class Settings(BaseSettings):
    """Runtime configuration, validated at start-up."""

    model_config = SettingsConfigDict(
        env_file=(HOST_ENV_FILE, ".env"),  # later files win
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # Connection (the plan's names).
    db_host: str = "127.0.0.1"
    db_port: int = Field(5432, ge=1, le=65535)
    db_name: str = "donna"
    db_user: str = ROLE_APP
    db_password: SecretStr | None = None
    db_passfile: Path = DEFAULT_PASSFILE
    db_max_connections: int = Field(20, ge=1)
    db_idle_timeout: int = Field(300, ge=1)
    db_connect_timeout: int = Field(5, ge=1)
    #: PgBouncer port; when set, the application role connects through it.
    pgbouncer_port: int | None = Field(None, ge=1, le=65535)

    # Roles created by the deploy.
    db_role_owner: str = ROLE_OWNER
    db_role_migrator: str = ROLE_MIGRATOR
    db_role_app: str = ROLE_APP
    db_role_readonly: str = ROLE_READONLY
    db_role_backup: str = ROLE_BACKUP

    # Storage selection and migration of the legacy files.
    data_storage_type: Literal["file", "postgresql", "dual"] = "file"
    data_dir: Path = Path("./data")
    migration_batch_size: int = Field(1000, ge=1)
    migration_enable_dual_write: bool = False

    # Where the migration files live (the repository's schema/ by default).
    schema_dir: Path = Path(__file__).resolve().parent.parent / "schema" / "migrations"

    def role(self, kind: str) -> str:
        """Role name for ``kind`` in owner|migrator|app|readonly|backup."""
        try:
            return getattr(self, f"db_role_{kind}")
        except AttributeError:
            raise ConfigError(
                f"unknown role kind {kind!r}; use owner, migrator, app, readonly or backup"
            ) from None


def load_settings(**overrides: object) -> Settings:
    """Build settings; ``overrides`` are command-line flags (highest precedence).

    :raises ConfigError: a value is missing or invalid; the message names the variable.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (no flags applied)."""
    return load_settings()

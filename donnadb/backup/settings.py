"""Backup settings: where snapshots go, how they are made, kept and checked.

They live beside :class:`donnadb.config.Settings` (same files, same precedence:
environment, ``./.env``, the deploy's ``/etc/donnadb/donnadb.env``, then these
defaults) with names starting ``BACKUP_``/``PGBACKREST_`` so the deploy's
``group_data`` can set every one of them.

S3 credentials are never settings: boto3's usual chain (environment, profile,
instance role) supplies them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from donnadb.config import HOST_ENV_FILE
from donnadb.errors import ConfigError

#: Written by the deploy (donnadb/provision/backups.py) from group_data's backup_* keys.
BACKUP_ENV_FILE = Path(os.environ.get("DONNADB_BACKUP_ENV", "/etc/donnadb/backup.env"))

MIB = 1024 * 1024
#: S3's own limits for multipart uploads.
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000

#: Chosen by bench/backup_compression.py (see docs/backup.md): gzip level 1 keeps
#: most of level 6's size saving at a fraction of its CPU time.
DEFAULT_COMPRESS_LEVEL = 1


class BackupSettings(BaseSettings):
    """Backup configuration, validated at start-up."""

    model_config = SettingsConfigDict(
        env_file=(HOST_ENV_FILE, BACKUP_ENV_FILE, ".env"),  # later files win
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # Local repository and pg_dump.
    backup_repo_dir: Path = Path("/var/backups/donna")
    backup_jobs: int = Field(2, ge=1, le=64)
    backup_compress_level: int = Field(DEFAULT_COMPRESS_LEVEL, ge=0, le=9)
    backup_pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")

    # Retention (keep last N, then one per day / ISO week / month).
    backup_keep_last: int = Field(7, ge=1)
    backup_keep_daily: int = Field(7, ge=0)
    backup_keep_weekly: int = Field(4, ge=0)
    backup_keep_monthly: int = Field(6, ge=0)

    # Client-side encryption (AES-256-GCM): off unless a key file is set. The key file
    # (0600, one 64-hex key per line, the first encrypts) must be kept outside the
    # backups -- losing it loses every encrypted backup.
    backup_encryption_key_file: Path | None = None

    # Monitoring: `backup check` fails when the newest good backup is older.
    backup_max_age_hours: float = Field(26.0, gt=0)

    # S3 (off unless a bucket is set).
    backup_s3_bucket: str | None = None
    backup_s3_prefix: str = "donna/"
    backup_s3_region: str | None = None
    backup_s3_endpoint_url: str | None = None
    backup_s3_profile: str | None = None
    backup_s3_storage_class: str = "STANDARD_IA"
    #: "AES256", "aws:kms" or "" for none.
    backup_s3_sse: str = "AES256"
    backup_s3_kms_key_id: str | None = None
    #: Smallest multipart part; parts grow with the file so no upload needs > 10,000.
    backup_s3_min_part_size: int = Field(64 * MIB, ge=S3_MIN_PART, le=S3_MAX_PART)
    backup_s3_max_attempts: int = Field(10, ge=1)

    # pgBackRest (physical backups and point-in-time recovery); off until the deploy
    # has configured WAL archiving (group_data pgbackrest_enabled).
    pgbackrest_enabled: bool = False
    pgbackrest_stanza: str = "donna"
    pgbackrest_config: Path = Path("/etc/pgbackrest/pgbackrest.conf")
    pg_version: int = 15
    pg_cluster: str = "main"
    pg_data_dir: Path | None = None  # None: /var/lib/postgresql/<version>/<cluster>

    @property
    def s3_enabled(self) -> bool:
        return bool(self.backup_s3_bucket)


def load_backup_settings(**overrides: object) -> BackupSettings:
    """Build backup settings; ``overrides`` are command-line flags (highest precedence).

    :raises ConfigError: a value is invalid; the message names the variable.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return BackupSettings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_backup_settings() -> BackupSettings:
    """The process-wide backup settings (no flags applied)."""
    return load_backup_settings()

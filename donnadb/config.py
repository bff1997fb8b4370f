"""The one settings object.

Precedence, highest first: command-line flag (passed as keyword arguments to
:func:`get_settings`), process environment, ``./.env``, the host file the deploy
writes from ``group_data`` (``/etc/donnadb/donnadb.env``), then the defaults below.
Variable names are the plan's (``DB_HOST``, ``DATA_STORAGE_TYPE`` ...).

Backups (``BACKUP_*``, ``PGBACKREST_*``) are settings here too; the deploy writes them
to their own file, ``/etc/donnadb/backup.env``, read after ``donnadb.env``. S3
credentials are never settings: boto3's usual chain (environment, profile, instance
role) supplies them.

Passwords are never settings: every role's password lives in the libpq password
file the deploy generates (``DB_PASSFILE``, mode 0600), which psycopg, psql,
pg_dump and pgcli all read without a password ever reaching argv or a log.
``DB_PASSWORD`` exists only for the plan's application user on hosts we did not
deploy ourselves.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from donnadb.errors import ConfigError

log = logging.getLogger(__name__)

#: Written by the deploy from group_data; read by every donnactl command on the host.
HOST_ENV_FILE = Path(os.environ.get("DONNADB_HOST_ENV", "/etc/donnadb/donnadb.env"))
#: Written by the deploy (donnadb/provision/backups.py) from group_data's backup_* keys.
BACKUP_ENV_FILE = Path(os.environ.get("DONNADB_BACKUP_ENV", "/etc/donnadb/backup.env"))
#: Where the deploy keeps generated role passwords (libpq passfile format, 0600).
DEFAULT_PASSFILE = Path("/etc/donnadb/pgpass")
#: TLS files the deploy writes (donnadb/provision/tls.py): the CA certificate on every
#: host, the server certificate on database hosts.
DEFAULT_TLS_DIR = Path("/etc/donnadb/tls")
DEFAULT_SSLROOTCERT = DEFAULT_TLS_DIR / "ca.crt"
DEFAULT_TLS_SERVER_CERT_FILE = DEFAULT_TLS_DIR / "server.crt"
#: The folder beside DB_PASSFILE holding each consumer's own passfile (pgpass.d/<user>).
CONSUMER_PASSFILE_DIR = "pgpass.d"
#: The folder beside DB_PASSFILE holding the cache's password, one copy per user
#: (cache.d/<user>, 0600; root's for donnactl): donnadb/provision/cacheserver.py.
CACHE_PASSWORD_DIR = "cache.d"  # noqa: S105 - a folder name, not a password
#: The Redis ACL of the DAL's cache user: its own keys, the few commands it sends
#: (scripts run with the caller's rights, so GET/SET/PEXPIRE for them too), no pub/sub.
#: The deploy writes it (provision/cacheserver.py); docs/dal.md, "Cache".
CACHE_REDIS_ACL = ("~donnadb:* resetchannels -@all +get +set +pexpire +evalsha "
                   "+script|load +ping +select")
#: Where the deploy generates the backup manifests' HMAC key (0600).
DEFAULT_SIGNING_KEY_FILE = Path("/etc/donnadb/backup-signing.key")

# Role names: the deploy (group_data) and the runtime agree on these defaults.
ROLE_OWNER = "donna_owner"
ROLE_MIGRATOR = "donna_migrator"
ROLE_APP = "donna_app"
ROLE_READONLY = "donna_readonly"
ROLE_BACKUP = "donna_backup"
ROLE_MONITOR = "donna_monitor"

#: A role name the SQL templates may use unquoted: lower-case, like PostgreSQL folds it.
ROLE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Where the legacy file store is when DATA_DIR is not set.
DEFAULT_DATA_DIR = Path("/var/lib/donna/data")

#: A Debian cluster name (pg_createcluster), also a path component: keep it boring.
CLUSTER_NAME_RE = r"^[a-z_][a-z0-9_]{0,62}$"

MIB = 1024 * 1024
#: Chosen by bench/backup_compression.py (see docs/backup.md): gzip level 1 keeps
#: most of level 6's size saving at a fraction of its CPU time.
DEFAULT_COMPRESS_LEVEL = 1


class Tier(NamedTuple):
    """An alert's two thresholds (ALERT_*): the `warning` rule's, then the `critical`
    rule's. In the environment a JSON pair: ``ALERT_DEADLOCKS='[1, 5]'``."""

    warn: float
    crit: float


class Settings(BaseSettings):
    """Runtime configuration, validated at start-up."""

    model_config = SettingsConfigDict(
        # ./.env is added by load_settings() only when it is safe to read (below).
        env_file=(HOST_ENV_FILE, BACKUP_ENV_FILE),  # later files win
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
    #: Where the DAL reads (docs/dal.md, "Reads on a replicated cluster"): "primary"
    #: (one pool, the leader) or "replicas" (a second pool: DB_READ_PORT on DB_HOST, or
    #: libpq's choice among a comma-separated DB_HOST).
    db_read_from: Literal["primary", "replicas"] = "primary"
    #: The routing layer's replica port (HAProxy's 5001 on the HA fleet).
    db_read_port: int | None = Field(None, ge=1, le=65535)
    #: After this DAL writes a chat or user, its reads go to the leader this long.
    db_read_your_writes_seconds: float = Field(5.0, ge=0)
    #: Reads leave a replica whose replay is further behind than this.
    db_read_max_lag_seconds: float = Field(10.0, ge=0)
    #: How often (at most) the DAL measures that lag.
    db_read_lag_check_seconds: float = Field(1.0, gt=0)
    #: libpq sslmode of every TCP connection (a Unix-socket DB_HOST uses none); the
    #: server is verified against DB_SSLROOTCERT, the CA the deploy writes.
    db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                        "verify-full"] = "verify-full"
    db_sslrootcert: Path = DEFAULT_SSLROOTCERT
    #: The database host's server certificate: `status` shows its expiry, `health`
    #: grades it (absent on a host without a server: "not configured").
    tls_server_cert_file: Path = DEFAULT_TLS_SERVER_CERT_FILE
    health_tls_expiry_warn_days: float = Field(30.0, ge=0)
    health_tls_expiry_crit_days: float = Field(0.0, ge=0)

    # The DAL's read-through cache in Redis (donnadb/dal/cache.py; docs/dal.md, "Cache").
    cache_enabled: bool = False
    #: redis://host:port/db, or rediss:// for TLS; never credentials (CACHE_USERNAME and
    #: CACHE_PASSWORD_FILE hold them, so no password reaches a URL, argv or a log).
    cache_url: str = Field("redis://127.0.0.1:6379/0",
                           pattern=r"^rediss?://[^\s/?#@]+(/\d{1,2})?$")
    #: The Redis ACL user (unset: the default user).
    cache_username: str | None = None
    #: A file holding the Redis password alone (mode 0600; unset: no AUTH).
    cache_password_file: Path | None = None
    #: How long a cached value lives, and so the staleness bound when a write could not
    #: reach Redis (docs/dal.md, "Cache").
    cache_ttl_seconds: float = Field(60.0, gt=0)
    #: Each Redis call's socket timeout (connect and reply): a slow Redis costs a request
    #: this much at most, once per CACHE_RETRY_SECONDS.
    cache_timeout_seconds: float = Field(0.1, gt=0)
    #: After a Redis failure the DAL leaves it alone this long, then tries again.
    cache_retry_seconds: float = Field(1.0, gt=0)
    #: get_chat_history is cached for offset 0 and a limit up to this.
    cache_history_max_limit: int = Field(100, ge=1)
    #: CA of a rediss:// server (unset: the system's trust store).
    cache_sslrootcert: Path | None = None

    # Field-level encryption of personal data in the PostgreSQL store (donnadb/crypto/;
    # docs/security.md, "Field encryption"). Off by default until the deploy makes a key
    # file; once on, every store of the deployment must have it on.
    crypto_enabled: bool = False
    #: The key file (0600, the application's user): KEKs and the e-mail lookup key.
    crypto_kek_file: Path | None = None
    #: A KMS key (id, ARN or alias) that seals the key file: on disk it is then KMS
    #: ciphertext, opened once by each process that reads it (donnadb/crypto/kms.py).
    crypto_kms_key_id: str | None = None
    #: The KMS region, and an endpoint other than AWS's (a KMS-compatible server).
    crypto_kms_region: str | None = None
    crypto_kms_endpoint_url: str | None = None

    # Roles created by the deploy.
    db_role_owner: str = ROLE_OWNER
    db_role_migrator: str = ROLE_MIGRATOR
    db_role_app: str = ROLE_APP
    db_role_readonly: str = ROLE_READONLY
    db_role_backup: str = ROLE_BACKUP
    db_role_monitor: str = ROLE_MONITOR

    # Storage selection and migration of the legacy files.
    data_storage_type: Literal["file", "postgresql", "dual"] = "file"
    data_dir: Path = DEFAULT_DATA_DIR
    migration_batch_size: int = Field(1000, ge=1)
    migration_enable_dual_write: bool = False
    #: Dual-write: the store reads come from (writes always go to the files first).
    migration_primary_store: Literal["file", "postgresql"] = "file"
    #: Dual-write failures wait here for reconcile (default DATA_DIR/.dualwrite/pending.jsonl).
    migration_reconcile_queue: Path | None = None
    #: One entity's store (file | dual | postgresql), for a pilot and a cut-over one
    #: entity at a time (docs/dal.md, "A store per entity"); unset (or empty) follows
    #: DATA_STORAGE_TYPE and MIGRATION_ENABLE_DUAL_WRITE.
    data_storage_users: Literal["file", "postgresql", "dual"] | None = None
    data_storage_memory: Literal["file", "postgresql", "dual"] | None = None
    #: Chat session metadata (its messages are DATA_STORAGE_MESSAGES).
    data_storage_chats: Literal["file", "postgresql", "dual"] | None = None
    data_storage_messages: Literal["file", "postgresql", "dual"] | None = None
    data_storage_logs: Literal["file", "postgresql", "dual"] | None = None
    #: Each DAL process writes its dual-write copy figures per entity here (one small
    #: file per process, dal/mirrorstats.py) and `donnactl metrics` adds them up; unset:
    #: off. The deploy sets it where some entity is in dual-write.
    migration_mirror_stats_dir: Path | None = None
    #: `health` warns (reconcile_backlog, and its alert) when an entry of the reconcile
    #: queue has waited longer than this: PostgreSQL is missing writes nobody replays.
    reconcile_backlog_max_age_minutes: float = Field(30.0, gt=0)

    # Where the migration files live: the checkout's schema/, or in a deployed install
    # (<donnadb_install_dir>/venv) the copy the deploy ships beside the venv.
    schema_dir: Path = Field(default_factory=lambda: default_schema_dir())

    # Operations (donnactl status/health/metrics, partitions, retention); ops thresholds
    # come from group_data. Each health pair is WARNING then CRITICAL.
    health_connections_warn_pct: float = Field(75.0, ge=0)
    health_connections_crit_pct: float = Field(90.0, ge=0)
    health_cache_hit_warn_pct: float = Field(95.0, ge=0, le=100)
    health_cache_hit_crit_pct: float = Field(85.0, ge=0, le=100)
    health_long_query_warn_seconds: float = Field(60.0, ge=0)
    health_long_query_crit_seconds: float = Field(300.0, ge=0)
    health_long_xact_warn_seconds: float = Field(300.0, ge=0)
    health_long_xact_crit_seconds: float = Field(1800.0, ge=0)
    health_replication_lag_warn_seconds: float = Field(30.0, ge=0)
    health_replication_lag_crit_seconds: float = Field(300.0, ge=0)
    # backup_age WARNING is BACKUP_MAX_AGE_HOURS (below), the threshold `backup check` uses.
    health_backup_crit_age_hours: float = Field(50.0, ge=0)
    #: When false, "no backup known" is OK instead of WARNING (hosts without backups yet).
    health_backup_required: bool = True
    #: WAL waiting to be archived (pgBackRest), seconds since the last segment archived
    #: while some are due: what a lost host would lose.
    health_archive_lag_warn_seconds: float = Field(600.0, ge=0)
    health_archive_lag_crit_seconds: float = Field(3600.0, ge=0)
    health_partitions_ahead_warn: int = Field(2, ge=0)
    health_partitions_ahead_crit: int = Field(1, ge=0)
    health_bloat_warn_pct: float = Field(30.0, ge=0)
    health_bloat_crit_pct: float = Field(60.0, ge=0)
    health_wraparound_warn_pct: float = Field(50.0, ge=0)
    health_wraparound_crit_pct: float = Field(80.0, ge=0)
    # Alert rules (`donnactl metrics rules`, docs/monitoring.md) beyond the health checks:
    # each Tier is the threshold of the `warning` rule, then of the `critical` one.
    #: Base of every alert's runbook_url (the alert's section anchor is appended): the
    #: repository-relative runbook, or its address on your git server.
    alert_runbook_url: str = "docs/runbook.md"
    #: Age of METRICS_TEXTFILE (the metrics timer rewrites it every minute).
    alert_textfile_stale_seconds: Tier = Tier(300.0, 900.0)
    #: A session idle in a transaction, seconds.
    alert_idle_xact_seconds: Tier = Tier(120.0, 600.0)
    #: Clients of one PgBouncer pool waiting for a server connection.
    alert_pgbouncer_waiting: Tier = Tier(1, 10)
    #: Free share of the data and WAL volumes (lower is worse).
    alert_disk_free_ratio: Tier = Tier(0.2, 0.1)
    #: How far ahead the disk fill-up forecast looks.
    alert_disk_fill_horizon_hours: float = Field(24.0, gt=0)
    #: Deadlocks in one database within 10 minutes.
    alert_deadlocks: Tier = Tier(1, 5)
    #: Share of transactions rolled back (5-minute rates) in a database doing at least
    #: ALERT_ROLLBACK_MIN_TPS transactions per second.
    alert_rollback_ratio: Tier = Tier(0.05, 0.2)
    alert_rollback_min_tps: float = Field(1.0, ge=0)
    #: Share of one entity's dual-write copies to PostgreSQL that failed within 10 minutes.
    alert_mirror_failure_ratio: Tier = Tier(0.01, 0.5)
    #: Mean execution seconds of one statement (pg_stat_statements, 5-minute deltas) run
    #: at least ALERT_STATEMENT_MIN_RATE times a second.
    alert_statement_mean_seconds: Tier = Tier(0.1, 0.5)
    alert_statement_min_rate: float = Field(0.1, ge=0)
    #: system_logs partitions made ahead, and how long log rows are kept.
    partition_premake: int = Field(4, ge=1)
    log_retention_months: int = Field(6, ge=1)
    #: Where detached log partitions are archived (gzip'd COPY) before they are dropped.
    log_archive_dir: Path = Path("/var/backups/donna-logs")
    #: donnactl writes one JSON line per event here (0600); data changes also go to system_logs.
    ops_log_file: Path = Path("/var/log/donnadb/donnactl.jsonl")
    #: Textfile for node_exporter's textfile collector (`donnactl metrics`).
    metrics_textfile: Path = Path("/var/lib/prometheus/node-exporter/donnadb.prom")
    #: The Prometheus `donnactl dashboard` reads (the deploy writes the one scraping the
    #: host, the monitor host's or its own, when it is not on 127.0.0.1).
    prometheus_url: str = Field("http://127.0.0.1:9090",
                                pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    #: PgBouncer's auth_file; `roles rotate` rewrites the role's line when the file exists.
    pgbouncer_auth_file: Path = Path("/etc/pgbouncer/userlist.txt")

    # Backups (donnactl backup; docs/backup.md): local repository and pg_dump.
    backup_repo_dir: Path = Path("/var/backups/donna")
    backup_jobs: int = Field(2, ge=1, le=64)
    backup_compress_level: int = Field(DEFAULT_COMPRESS_LEVEL, ge=0, le=9)
    #: pg_dump/pg_restore; unset: /usr/lib/postgresql/<PG_VERSION>/bin.
    backup_pg_bin_dir: Path | None = None
    # Retention (keep last N, then one per day / ISO week / month).
    backup_keep_last: int = Field(7, ge=1)
    backup_keep_daily: int = Field(7, ge=0)
    backup_keep_weekly: int = Field(4, ge=0)
    backup_keep_monthly: int = Field(6, ge=0)
    #: Client-side AES-256-GCM: off unless set. The key file (0600, one 64-hex key per
    #: line, the first encrypts) must be kept outside the backups: losing it loses them.
    backup_encryption_key_file: Path | None = None
    #: Encryption to public keys with age (donnadb/backup/agecrypt.py): the ``age1...``
    #: keys, one a line. When set, new backups are age files; it wins over
    #: BACKUP_ENCRYPTION_KEY_FILE, which then only reads the older backups.
    backup_age_recipients_file: Path | None = None
    #: The operator's age private key (0600), for restore and `verify --restore` only
    #: (``--identity``); not on the database host normally.
    backup_age_identity_file: Path | None = None
    #: HMAC key of the manifests (donnadb/backup/signing.py; the deploy generates it,
    #: 0600). A manifest read from S3 is used only when it verifies under this file's
    #: keys: keep a copy with the encryption key, restoring elsewhere needs it.
    backup_signing_key_file: Path | None = DEFAULT_SIGNING_KEY_FILE
    #: `backup check` fails, and `health` warns (backup_age), when the newest good backup
    #: is older.
    backup_max_age_hours: float = Field(26.0, gt=0)
    #: `health` warns (backup_drill) when the last successful restore drill (`backup
    #: drill`, weekly on the timer) of any kind is older; CRITICAL, and its alert, at
    #: HEALTH_BACKUP_DRILL_CRIT_AGE_HOURS. A failed last drill is CRITICAL at once.
    backup_drill_max_age_hours: float = Field(8 * 24.0, gt=0)
    health_backup_drill_crit_age_hours: float = Field(15 * 24.0, gt=0)
    #: The physical drill's throwaway copy: its parent directory (the copy is as large
    #: as the cluster) and its port (socket only). /var/tmp because the backup units'
    #: sandbox (ProtectSystem=strict, PrivateTmp) lets the job write there, on disk; the
    #: drill refuses it unless it is a real directory only its owner can write.
    backup_drill_dir: Path = Path("/var/tmp/donna-drill")  # noqa: S108
    backup_drill_port: int = Field(5498, ge=1, le=65535)
    # S3 copy (off unless a bucket is set).
    backup_s3_bucket: str | None = None
    backup_s3_prefix: str = "donna/"
    backup_s3_region: str | None = None
    backup_s3_endpoint_url: str | None = None
    #: CA bundle that signed the endpoint's certificate (an S3-protocol server of your
    #: own); unset: the system's trust store.
    backup_s3_ca_file: Path | None = None
    backup_s3_profile: str | None = None
    backup_s3_storage_class: str = "STANDARD_IA"
    #: "AES256", "aws:kms" or "" for none.
    backup_s3_sse: str = "AES256"
    backup_s3_kms_key_id: str | None = None
    #: Smallest multipart part (S3 allows 5 MiB..5 GiB); parts grow so no upload needs
    #: more than 10,000. 16 MiB: a large file goes up in enough parts to keep every
    #: request busy (bench/backup.py's one-file pair: 64 MiB parts were slower than
    #: boto3's 8 MiB default).
    backup_s3_min_part_size: int = Field(16 * MIB, ge=5 * MIB, le=5 * 1024 * MIB)
    backup_s3_max_attempts: int = Field(10, ge=1)
    #: Parts of one file sent or fetched at a time (boto3's transfer manager).
    backup_s3_concurrency: int = Field(4, ge=1, le=64)
    # pgBackRest (physical backups, point-in-time recovery); off until the deploy has
    # configured WAL archiving (group_data pgbackrest_enabled).
    pgbackrest_enabled: bool = False
    pgbackrest_stanza: str = "donna"
    pgbackrest_config: Path = Path("/etc/pgbackrest/pgbackrest.conf")
    #: The directory of pgBackRest's secret files (repo2's passphrase and S3 keys);
    #: passed as --config-include-path, which pgBackRest drops once --config is given.
    pgbackrest_include_path: Path | None = None
    #: The stanza has repo2 in S3 besides the local repo1 (the deploy sets it with
    #: group_data backup_s3).
    pgbackrest_s3: bool = False
    #: The stanza has repo1 on this host's disk (not on a cluster, whose members share
    #: the S3 repository only).
    pgbackrest_local_repo: bool = True
    # The cluster (group_data pg_version, pg_cluster; the deploy writes PG_VERSION and
    # PG_CLUSTER to donnadb.env): the paths below follow them unless set.
    pg_version: int = Field(15, ge=10, le=99)
    pg_cluster: str = Field("main", pattern=CLUSTER_NAME_RE)
    #: Unset: /var/lib/postgresql/<PG_VERSION>/<PG_CLUSTER>.
    pg_data_dir: Path | None = None
    #: Patroni's configuration on a database host of an HA cluster (the deploy writes
    #: it when group_data ``ha = True``); unset: a single host, `donnactl cluster` refuses.
    patroni_config: Path | None = None
    #: `health` warns when fewer members run, when one is not streaming, or when one's
    #: lag (Patroni's, in bytes) is above this.
    patroni_expected_members: int = Field(3, ge=1)
    health_cluster_lag_warn_bytes: int = Field(16 * MIB, ge=0)
    #: How long `cluster switchover|failover` wait for the new leader to run.
    patroni_switch_timeout_s: float = Field(60.0, gt=0)
    #: `cluster update` refuses while a transaction older than this is open on the server
    #: its restart or switchover would cut (a migration, a backup, a forgotten session).
    update_max_xact_age_s: float = Field(60.0, ge=0)
    #: How long `cluster update` waits for this member to stream again after a restart.
    update_wait_timeout_s: float = Field(120.0, gt=0)

    @field_validator("db_user", "db_role_owner", "db_role_migrator", "db_role_app",
                     "db_role_readonly", "db_role_backup", "db_role_monitor")
    @classmethod
    def _plain_role_name(cls, value: str) -> str:
        # The bootstrap SQL, pg_hba and the passfiles use role names as they are.
        if not ROLE_NAME_RE.match(value) or value.startswith("pg_"):
            raise PydanticCustomError(
                "role_name",
                "{value} is not a plain role name: use 1-63 lower-case letters, digits "
                "or _, starting with a letter or _ (and not pg_)", {"value": repr(value)})
        return value

    @field_validator("patroni_config", "data_storage_users", "data_storage_memory",
                     "data_storage_chats", "data_storage_messages", "data_storage_logs",
                     "cache_password_file", "cache_sslrootcert", "cache_username",
                     "crypto_kek_file", "crypto_kms_key_id", "crypto_kms_region",
                     "crypto_kms_endpoint_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # PATRONI_CONFIG= (empty) in donnadb.env means "not in a cluster", like no line;
        # DATA_STORAGE_MEMORY= means "as DATA_STORAGE_TYPE says"; an empty CACHE_* file
        # or user likewise means none.
        return None if value == "" else value

    @field_validator("*")
    @classmethod
    def _tier_not_negative(cls, value: object) -> object:
        if isinstance(value, Tier) and min(value) < 0:
            raise PydanticCustomError("tier", "{value} must be two numbers >= 0 (warning, "
                                      "critical)", {"value": list(value)})
        return value

    @field_validator("*")
    @classmethod
    def _safe_path(cls, value: object) -> object:
        # Every path setting leads to files root or a privileged role reads, writes or
        # runs: it must not depend on the working directory nor climb out of a folder.
        if isinstance(value, Path):
            text = str(value)
            if "\x00" in text or not value.is_absolute() or ".." in value.parts:
                raise PydanticCustomError(
                    "safe_path",
                    "{value} must be an absolute path without '..' or NUL "
                    "(for example /var/lib/donna/data)", {"value": repr(text)})
        return value

    @model_validator(mode="after")
    def _cluster_paths(self) -> Settings:
        # Filled once here; model_copy() does not re-run it (set the paths themselves).
        if self.backup_pg_bin_dir is None:
            self.backup_pg_bin_dir = debian_bin_dir(self.pg_version)
        if self.pg_data_dir is None:
            self.pg_data_dir = debian_data_dir(self.pg_version, self.pg_cluster)
        return self

    @property
    def s3_enabled(self) -> bool:
        return bool(self.backup_s3_bucket)

    def role(self, kind: str) -> str:
        """Role name for ``kind`` in owner|migrator|app|readonly|backup|monitor."""
        try:
            return getattr(self, f"db_role_{kind}")
        except AttributeError:
            raise ConfigError(
                f"unknown role kind {kind!r}; use owner, migrator, app, readonly, backup or "
                "monitor"
            ) from None


def debian_bin_dir(version: int) -> Path:
    """Where Debian's postgresql-<version> keeps its programs (pg_dump, pg_ctl ...)."""
    return Path(f"/usr/lib/postgresql/{int(version)}/bin")


def debian_data_dir(version: int, cluster: str) -> Path:
    """The data directory pg_createcluster gives cluster ``version``/``cluster``."""
    return Path(f"/var/lib/postgresql/{int(version)}/{cluster}")


def default_schema_dir() -> Path:
    """The checkout's ``schema/migrations``, else the deployed copy beside the venv."""
    checkout = Path(__file__).resolve().parent.parent / "schema" / "migrations"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix).parent / "schema" / "migrations"


def local_env_file(path: Path = Path(".env")) -> Path | None:
    """``./.env`` when it may be read, else None (and a warning says why).

    donnactl often runs as root from whatever directory the operator is in: a ``.env``
    there that someone else could have written would steer root (another DB_HOST, a
    BACKUP_REPO_DIR to delete in, a pg_dump directory to run). It is read only when it
    is a regular file (not a symlink) owned by the user running us or by root, and
    writable by nobody else.
    """
    try:
        st = path.lstat()
    except OSError:
        return None
    uid = os.geteuid()
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (uid, 0) or st.st_mode & 0o022:
        log.warning("ignoring %s: it must be a regular file owned by uid %d (or root) and "
                    "writable by nobody else", path.resolve(), uid)
        return None
    return path


def load_settings(**overrides: object) -> Settings:
    """Build settings; ``overrides`` are command-line flags (highest precedence).

    :raises ConfigError: a value is missing or invalid; the message names the variable.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    local = local_env_file()
    files = (HOST_ENV_FILE, BACKUP_ENV_FILE, *((local,) if local else ()))
    try:
        return Settings(_env_file=files, **clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (no flags applied)."""
    return load_settings()

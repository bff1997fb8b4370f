"""Every setting of the deploy, for all hosts (pyinfra group data).

Override per host in the inventory: ``("db1", {"pg_listen_addresses": "10.0.0.5"})``.
``pg_*`` settings shape the server; ``db_*`` ones also go to /etc/donnadb/donnadb.env
(DB_HOST, DB_NAME ...) and default to donnadb/config.py's values, which the runtime
falls back to. ``donnadb_*`` ones place the deploy's files on the host.

The tuning formulas below take the host's facts (``memory_mb`` = total RAM in MB from
pyinfra's ``hardware.Memory``, ``cpus`` = online CPUs from ``hardware.Cpus``) and
return the value the deploy writes to conf.d/donna.conf. They follow PGTune's "web
application" profile: many short transactions, data set larger than RAM over time.
"""

from donnadb import config as _config

# --- PostgreSQL cluster -------------------------------------------------------------
# The PostgreSQL major version. It names the Debian packages the deploy installs
# (postgresql-{v} with its contrib modules such as pg_stat_statements,
# postgresql-{v}-partman, postgresql-{v}-pgaudit: donnadb/provision/settings.py
# PG_PACKAGES), the cluster's directories (/etc/postgresql/{v}/<cluster>) and its unit.
# Debian 12 ships 15, the version this kit is tested with; another one needs the PGDG
# apt repository. Changing it on a deployed host creates a second, empty cluster: it
# does not upgrade the data (that is pg_upgradecluster's job).
# The deploy writes both to donnadb.env (PG_VERSION, PG_CLUSTER): donnactl's pg_dump
# and pg_restore (/usr/lib/postgresql/{v}/bin) and the cluster's data directory follow.
pg_version = 15
pg_cluster = "main"
pg_port = 5432
# apt-get update only when something must be installed and the lists are older than this.
pg_apt_cache_time = 86400
# Where the server listens for TCP. "localhost" keeps it off the network; a server the
# application reaches from elsewhere lists its private address ("localhost,10.0.0.5").
pg_listen_addresses = "localhost"
# Client networks allowed over TCP (TLS and scram-sha-256 only: every TCP line of
# pg_hba.conf is hostssl). Add the app servers' subnet.
pg_hba_networks = ["127.0.0.1/32", "::1/128"]
# Role kinds that may connect over TCP only from this host (loopback and every IP of
# pg_listen_addresses), then `reject`
# from anywhere, pg_hba_networks included: the migrator and backup role run here, and
# the application reaches the database through PgBouncer (which runs here too), and
# postgres_exporter (monitor) runs on every database host.
pg_hba_local_only_kinds = ["migrator", "backup", "app", "monitor"]
# Networks from which the application role may still connect directly, bypassing
# PgBouncer (e.g. ["10.0.2.0/24"] for app servers with a pool of their own). Empty: none.
pg_app_direct_networks = []
# Direct connections: PgBouncer multiplexes the application's clients onto a few server
# connections, so this only needs room for the pool, migrations, backups and operators.
pg_max_connections = 200
# pgaudit's statement classes written to the server log (AUDIT: lines): role changes
# (CREATE/ALTER/DROP ROLE, GRANT, REVOKE) and DDL. Bind values are never logged
# (pgaudit.log_parameter is off). "none" keeps the library loaded but silent.
pg_audit_log = "role, ddl"
# Statements slower than this are logged with their duration (ms); -1 turns it off.
pg_log_min_duration_statement_ms = 250
# pg_partman's background worker premakes the system_logs partitions.
# It connects as a LOGIN role (PostgreSQL 15 refuses NOLOGIN roles for workers too); the
# migrator is a member of the owner, so the partitions it makes belong to donna_owner.
pg_partman_bgw_interval_s = 3600
pg_partman_bgw_role = None  # None: db_role_migrator


def pg_shared_buffers_mb(memory_mb, cpus, max_connections):
    # 25% of RAM is the documented starting point; above ~16 GB the OS cache does better.
    return min(memory_mb // 4, 16384)


def pg_effective_cache_size_mb(memory_mb, cpus, max_connections):
    # Planner hint only (allocates nothing): shared_buffers plus the OS page cache, ~75%.
    return memory_mb * 3 // 4


def pg_work_mem_mb(memory_mb, cpus, max_connections):
    # Per sort/hash node: RAM left after shared_buffers, shared by every connection
    # running ~3 such nodes at once; clamped to 4..64 MB so a burst cannot swap.
    spare = memory_mb - pg_shared_buffers_mb(memory_mb, cpus, max_connections)
    return max(4, min(64, spare // (max_connections * 3)))


def pg_maintenance_work_mem_mb(memory_mb, cpus, max_connections):
    # VACUUM / CREATE INDEX: 1/16 of RAM, at most 2 GB (more does not speed them up).
    return max(64, min(2048, memory_mb // 16))


def pg_max_worker_processes(memory_mb, cpus, max_connections):
    # Parallel query and pg_partman's worker share this pool: at least the default 8.
    return max(8, cpus)


def pg_max_parallel_workers_per_gather(memory_mb, cpus, max_connections):
    # Half the cores per query, so two parallel queries do not starve the rest.
    return max(1, cpus // 2)


def pg_max_parallel_workers(memory_mb, cpus, max_connections):
    # All cores may run parallel workers at once.
    return max(2, cpus)


# WAL and checkpoints: spread checkpoints over 15 minutes and 90% of the interval so
# writes are smooth; max_wal_size large enough that checkpoints are timed, not forced.
pg_wal = {
    "wal_compression": "lz4",
    "wal_buffers": "16MB",
    "min_wal_size": "1GB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": 0.9,
}
# SSD storage: random reads cost about the same as sequential ones.
pg_random_page_cost = 1.1
pg_effective_io_concurrency = 200
# Any other postgresql.conf setting, written verbatim to conf.d/donna.conf (a change
# restarts the cluster), e.g. {"archive_mode": "on", "archive_command": "..."}.
pg_extra_settings = {}

# --- Roles (the runtime's defaults, donnadb/config.py) -------------------------------
db_role_owner = _config.ROLE_OWNER  # NOLOGIN, owns every schema object
db_role_migrator = _config.ROLE_MIGRATOR  # LOGIN, member of the owner, runs migrations
db_role_app = _config.ROLE_APP  # LOGIN, reads and writes rows, no DDL, no TRUNCATE
db_role_readonly = _config.ROLE_READONLY  # LOGIN, SELECT only
db_role_backup = _config.ROLE_BACKUP  # LOGIN, what pg_dump needs
# LOGIN, pg_monitor only: postgres_exporter's role (statistics, never table data)
db_role_monitor = _config.ROLE_MONITOR
# Most connections each LOGIN role may hold at once (-1: no limit).
pg_role_connection_limits = {
    # Migrations, pg_partman's worker, partition maintenance, and pg_restore -j N of a
    # restore all log in as the migrator.
    "migrator": 10,
    # PgBouncer holds at most pgbouncer_max_db_connections (60) of these; the rest is
    # room for a pool-less tool. Beyond it a runaway client gets an error, not the server.
    "app": 100,
    "readonly": 20,
    "backup": 5,
    # postgres_exporter holds one and its collectors open more during a scrape; a scrape
    # that overlaps a slow one doubles that; `donnactl db check` needs one too.
    "monitor": 5,
}
# Server settings each role always gets (ALTER ROLE ... SET), so that no session of it
# can hold a connection, a lock or a transaction for ever: statement_timeout,
# lock_timeout, idle_in_transaction_session_timeout, idle_session_timeout. One left out
# here is reset. None for backup: pg_dump's snapshot transaction stays idle for the
# whole dump; none for migrator: migrations set their own lock_timeout.
pg_role_settings = {
    "app": {"statement_timeout": "30s", "lock_timeout": "5s",
            "idle_in_transaction_session_timeout": "60s"},
    "readonly": {"statement_timeout": "5min", "idle_in_transaction_session_timeout": "10min"},
    # A scrape must never queue behind a lock: it gives up and the next one tries again.
    "monitor": {"statement_timeout": "10s", "lock_timeout": "1s",
                "idle_in_transaction_session_timeout": "60s"},
}

# --- The database and its host files ------------------------------------------------
# Written to donnadb.env as DB_HOST, DB_NAME ... (DB_PORT is pg_port).
db_host = "127.0.0.1"
db_name = "donna"
# Generated role passwords (libpq passfile, 0600 root, directory 0700).
db_passfile = "/etc/donnadb/pgpass"
# Consumers of the database: each OS user gets its own passfile
# (<db_passfile dir>/pgpass.d/<user>, 0600, its own) holding only these role kinds, so
# reading one consumer's credential never gives another's. donna-ops runs the
# scheduled ops jobs (partitions: migrator, retention: app, metrics: readonly); point
# the application's service at DB_PASSFILE=/etc/donnadb/pgpass.d/donna-app.
db_consumers = {
    "donna-app": ["app"],
    "donna-ops": ["readonly", "app", "migrator"],
}
# Written from this file; donnactl and the application read it (donnadb/config.py).
donnadb_env_file = "/etc/donnadb/donnadb.env"
# Extra NAME=value lines for donnadb.env (e.g. {"DATA_STORAGE_TYPE": "postgresql"}).
donnadb_env_extra = {}
# Where helper scripts and rendered SQL are kept on the host (root only).
donnadb_lib_dir = "/usr/local/lib/donnadb"
# Where the deploy installs the code the host runs (root-owned, 0755): venv/ (a wheel
# built from the checkout running the deploy), schema/migrations/, bin/donna-backup.
# Jobs never run code from a checkout; /usr/local/bin/donnactl links to venv/bin.
donnadb_install_dir = "/opt/donnadb"


# --- TLS (donnadb/provision/tls.py and ca.py; docs/deploy.md, TLS) ------------------
# Every TCP connection is TLS: PostgreSQL (ssl = on, TLS >= 1.2, hostssl only), PgBouncer
# (client and server side), and every client we ship verifies the server against the CA
# (sslmode=verify-full, DB_SSLROOTCERT=/etc/donnadb/tls/ca.crt on each host).
# The deploy's own CA lives on the machine that RUNS the deploy, in this directory
# (created when missing: 0700, ca.key 0600). Back it up: without it the next deploy makes
# a new CA and every host's certificate and ca.crt are replaced. Issued certificates are
# kept under hosts/<inventory name>/ and reused; one is reissued when its names or the CA
# change or fewer than 30 days of its 397 remain (renewal is a deploy run).
tls_ca_dir = "~/.local/share/donnadb/ca"
# An operator's CA instead (PEM certificate and its unencrypted key, on the control
# machine): both set, or both None for the deploy's own.
tls_ca_cert_file = None
tls_ca_key_file = None
# Extra DNS names / IPs for a database host's certificate. It always holds the inventory
# name, the hostname, localhost, 127.0.0.1, ::1, pg_listen_addresses, db_host and
# pgbouncer_listen_addr: add the names clients dial that are none of these.
tls_server_names = []


# --- Backups (donnadb/provision/backups.py -> /etc/donnadb/backup.env) ---------------
# None keeps the runtime default of donnadb/config.py (Settings.backup_*).
backup_repo_dir = "/var/backups/donna"  # local repository, 0700 root
backup_jobs = 2  # pg_dump/pg_restore parallel jobs: about the number of cores
backup_compress_level = None  # gzip level; default 1, measured: bench/backup_compression.py
# Retention: the last N, then the newest of each of the last D days, W weeks, M months.
backup_keep_last = 7
backup_keep_daily = 7
backup_keep_weekly = 4
backup_keep_monthly = 6
# `donnactl backup check` (hourly) fails, and `donnactl health` warns, when the newest
# good backup is older than this.
backup_max_age_hours = 26
# S3 copy: {} is off. Keys: bucket, prefix, region, storage_class (STANDARD_IA), sse
# (AES256 | aws:kms | ""), kms_key_id, endpoint_url (https:// for pgBackRest), ca_file
# (the CA of an S3-protocol server of your own). Credentials: instance role/profile.
backup_s3 = {}
# job -> (systemd OnCalendar, cron) overrides; jobs: snapshot, prune, verify, check,
# physical-full, physical-diff, physical-verify.
backup_schedule = {}
# Client-side AES-256-GCM encryption: path of a key file made by `donnactl backup keygen`
# (0600, kept outside the backups and escrowed). None: not encrypted.
backup_encryption_key_file = None
# Encryption to public keys with age (docs/backup.md): the operator's age1... public
# keys (`donnactl backup keygen --age key.txt` on the operator's machine). Set: the deploy
# installs `age`, writes them to backup_age_recipients_file (root:postgres 0640) and new
# backups are encrypted to them (this wins over backup_encryption_key_file, which then
# only reads older backups). The host cannot decrypt them: restore with --identity.
backup_age_recipients = []
backup_age_recipients_file = "/etc/donnadb/backup-age-recipients.txt"
# HMAC key of the backup manifests: a manifest read from S3 is used only when it verifies
# under it (whoever can write the bucket cannot forge one). Generated by the deploy when
# missing (0600, root), never replaced; escrow a copy with the encryption key.
backup_signing_key_file = "/etc/donnadb/backup-signing.key"
# pgBackRest physical backups + WAL archiving for point-in-time recovery (docs/backup.md).
# None: on (with ha = True: on when backup_s3 names a bucket, the members' shared and
# only repository; off without one); False: off. The first deploy with it restarts the
# cluster once (archive_mode) and takes a first full backup. repo1 is on this host;
# with a bucket in backup_s3, repo2 is in it (under <prefix>pgbackrest), encrypted with
# a passphrase the deploy generates in <include dir>/donna-repo2-cipher.conf (0600
# postgres): escrow a copy, restores from the bucket on another host need it.
pgbackrest_enabled = None
pgbackrest_repo_path = "/var/lib/pgbackrest"
pgbackrest_stanza = "donna"
# Retention per repository: full backups kept, differentials kept (WAL follows).
pgbackrest_retention_full = 2
pgbackrest_retention_diff = 6
pgbackrest_s3_retention_full = 4
pgbackrest_s3_retention_diff = 6
# repo2's S3 credentials: "auto" (the instance role) or "shared" (repo2-s3-key and
# repo2-s3-key-secret in <include dir>/donna-repo2-s3-key.conf, written by you, 0600).
pgbackrest_s3_key_type = "auto"


# --- Monitoring (donnadb/provision/monitoring.py; docs/monitoring.md) ---------------
# node_exporter and postgres_exporter on every database host, on its own address (the
# first of pg_listen_addresses); Prometheus and Alertmanager on the inventory's
# monitor_servers host, which scrapes them over TLS with a client certificate (without
# that group a single database host runs them itself). Alertmanager delivers to this
# webhook (e.g. a chat integration's incoming URL); None keeps alerts in Alertmanager.
alertmanager_webhook_url = None
# Where Prometheus and Alertmanager listen on the monitor host (None: the first of its
# pg_listen_addresses, localhost meaning 127.0.0.1).
monitor_listen_address = None


# --- PgBouncer (donnadb/provision/pgbouncer.py; docs/loadtest.md) --------------------
# Transaction pooling on its own port. The deploy writes PGBOUNCER_PORT to donnadb.env,
# so the app role connects through it by default (donnadb/db.py); migrations, backups
# and the operator commands always go direct to pg_port.
pgbouncer_port = 6432
# Keep it on loopback unless app servers elsewhere must reach it (then add a firewall).
pgbouncer_listen_addr = "127.0.0.1"
# The role PgBouncer logs in as to run its auth_query (pgbouncer.user_lookup); its
# password is generated on the host, like every other role's.
pgbouncer_auth_user = "donna_pgbouncer"
pgbouncer_auth_user_connlimit = 10
# Role kinds allowed to log in through PgBouncer (the lookup returns only these).
pgbouncer_lookup_kinds = ("app", "readonly")
# Role kinds allowed SHOW POOLS/STATS on the admin console (`donnactl status`, load test).
pgbouncer_stats_kinds = ("readonly",)
pgbouncer_admin_users = ()
# Server connections per (database, user): about 2-4 x cores keeps the CPUs busy
# without queueing inside PostgreSQL; clients beyond it wait in PgBouncer instead.
pgbouncer_default_pool_size = 20
pgbouncer_min_pool_size = 0
# Extra server connections a pool may open when a client has waited this many seconds.
pgbouncer_reserve_pool_size = 5
pgbouncer_reserve_pool_timeout = 3
# Client connections PgBouncer accepts (the daemon's open-file limit is raised to fit).
pgbouncer_max_client_conn = 2000
# Server connections per database, all users together: stays under pg_max_connections.
pgbouncer_max_db_connections = 60
pgbouncer_server_idle_timeout = 600
# A client waiting longer than this (s) for a server connection gets an error instead of
# hanging: with transaction pooling the wait is normally milliseconds.
pgbouncer_query_wait_timeout = 30
# A client idle inside a transaction this long (s) is disconnected: it holds one of the
# few server connections. Matches the app role's idle_in_transaction_session_timeout.
pgbouncer_idle_transaction_timeout = 60
# Serve every other database of the server too ("*" entry): scratch and restored
# databases; each database's bootstrap installs the lookup (provision/bootstrap.py).
pgbouncer_fallback_database = True


# --- Operations (donnadb/provision/opsjobs.py; docs/runbook.md) ----------------------
# job -> (systemd OnCalendar, cron schedule) for the scheduled donnactl commands. The
# systemd timers are installed always and enabled where systemd runs; elsewhere the
# same jobs go to /etc/cron.d/donna-ops. Leave a job out with None: {"metrics": None}.
ops_schedule = {
    # `donnactl partitions maintain --json`: premake system_logs partitions, archive and
    # drop the expired ones. Daily, before the 02:15 backup snapshot.
    "partitions": ("*-*-* 01:10:00", "10 1 * * *"),
    # `donnactl retention run --yes --json`: delete expired rows (LOG_RETENTION_MONTHS,
    # user_memory.expires_at). Daily, after the partitions and before the snapshot.
    "retention": ("*-*-* 01:40:00", "40 1 * * *"),
    # `donnactl metrics textfile`: one scrape for node_exporter's textfile
    # collector every minute (or run `donnactl metrics serve --port 9189` as a service).
    "metrics": ("*-*-* *:*:00", "* * * * *"),
}
# Ops settings written to donnadb.env (NAME=value; names are donnadb/config.py's fields,
# checked at deploy time). Health pairs are WARNING then CRITICAL (`donnactl health`,
# the alert rules of `donnactl metrics rules`).
ops_env = {
    # Connections in use, % of max_connections.
    "HEALTH_CONNECTIONS_WARN_PCT": 75,
    "HEALTH_CONNECTIONS_CRIT_PCT": 90,
    # Buffer cache hit ratio below this %.
    "HEALTH_CACHE_HIT_WARN_PCT": 95,
    "HEALTH_CACHE_HIT_CRIT_PCT": 85,
    # A query running longer than this (s): 1 min warns, 5 min is critical.
    "HEALTH_LONG_QUERY_WARN_SECONDS": 60,
    "HEALTH_LONG_QUERY_CRIT_SECONDS": 300,
    # A transaction open longer than this (s): it holds back VACUUM.
    "HEALTH_LONG_XACT_WARN_SECONDS": 300,
    "HEALTH_LONG_XACT_CRIT_SECONDS": 1800,
    # Replica lag (s), once a standby exists.
    "HEALTH_REPLICATION_LAG_WARN_SECONDS": 30,
    "HEALTH_REPLICATION_LAG_CRIT_SECONDS": 300,
    # Newest good backup older than this is critical (the warning is backup_max_age_hours).
    "HEALTH_BACKUP_CRIT_AGE_HOURS": 50,
    # "No backup known" warns; false on hosts that are backed up elsewhere.
    "HEALTH_BACKUP_REQUIRED": "true",
    # Future system_logs partitions left: the daily maintain job keeps PARTITION_PREMAKE.
    "HEALTH_PARTITIONS_AHEAD_WARN": 2,
    "HEALTH_PARTITIONS_AHEAD_CRIT": 1,
    # Dead tuples, % of a table's tuples (`donnactl vacuum report` lists them).
    "HEALTH_BLOAT_WARN_PCT": 30,
    "HEALTH_BLOAT_CRIT_PCT": 60,
    # Age of the oldest unfrozen transaction id, % of the 2^31 wraparound limit.
    "HEALTH_WRAPAROUND_WARN_PCT": 50,
    "HEALTH_WRAPAROUND_CRIT_PCT": 80,
    # Monthly system_logs partitions made ahead, and months of log rows kept.
    "PARTITION_PREMAKE": 4,
    "LOG_RETENTION_MONTHS": 6,
    # Detached log partitions are archived here (gzip'd COPY, 0700) before the drop.
    "LOG_ARCHIVE_DIR": "/var/backups/donna-logs",
    # node_exporter's textfile collector directory (the deploy creates it, 0755).
    "METRICS_TEXTFILE": "/var/lib/prometheus/node-exporter/donnadb.prom",
}


# --- Host roles (deploy.py; docs/deploy.md "Host roles") -----------------------------
# An inventory lists db_servers (PostgreSQL, PgBouncer, backups, ops jobs, donnactl) and
# app_servers (the DAL package, its settings, the CA certificate and the application
# role's credential only). A host may be in both.
# The tuning formulas' budget: None sizes for the host's own RAM and CPUs; a host that
# shares its machine (a test fleet, a VM with ballooning) sets what it may use.
host_memory_mb = None
host_cpus = None
# Extras installed beside the DAL on an application host, or beside the ops tools on a
# database host ("loadtest": Locust and donnactl's load-test commands, for a host that
# drives the load test or the failure drill), and the inventory name of
# the database host they use (None: the only host of db_servers). The application
# connects to that name (it is in the server certificate) through PgBouncer.
app_extras = []
app_db_server = None

# --- The DAL's cache (donnadb/provision/cacheserver.py; docs/deploy.md "Cache") -------
# True: one host runs Redis (Debian's redis-server) and every database and application
# host's settings turn the DAL's read-through cache on (CACHE_* in donnadb.env/app.env).
# Redis runs on cache_server (an inventory name; None: the first app_servers host, else
# the first db_servers host). Loopback only when it is the only host; otherwise TLS only,
# with the deploy's CA, on the cache host's address: its inventory name, or
# cache_listen_addr set in that host's own data (every client dials it, its own too).
# The ACL user's password is generated on the cache host and copied to the others over
# the deploy's connections. Turning it off again leaves Redis installed and unused.
cache_enabled = False
cache_server = None
cache_port = 6379
cache_tls_port = 6380
cache_listen_addr = None
# Redis's memory for cached values (least recently used evicted first).
cache_maxmemory_mb = 256
# How long a cached value lives: the staleness bound of a lost invalidation.
cache_ttl_seconds = 60

# --- Field encryption (donnadb/provision/fieldkeys.py; docs/security.md) -------------
# On by default. The first app_servers host (else the first db_servers host) makes the
# key file once (a key encryption key and the e-mail look-up key) and every database and
# application host gets a 0600 copy per user running the DAL, with CRYPTO_ENABLED=true
# and CRYPTO_KEK_FILE in its settings file. Keep a copy of /etc/donnadb/keys.d/root in
# escrow: without it nothing sealed can be read. Personal values a database already
# holds in clear are sealed by the deploy (`donnactl keys seal-existing`). False turns it
# off (the key file stays; sealed values then cannot be read by the DAL).
crypto_enabled = True
# A KMS key (id, ARN or alias) that seals the key file: on disk it is then KMS
# ciphertext, which each process opens once through KMS with its host's own credentials
# (an instance role allowed to decrypt with the key). None: the file is in clear, 0600.
# The region, and an endpoint for a KMS-compatible server other than AWS's.
crypto_kms_key_id = None
crypto_kms_region = None
crypto_kms_endpoint_url = None


# --- High availability (donnadb/provision/ha.py; docs/ha.md) -------------------------
# ha = True turns the db_servers hosts (three, or another odd number) into one Patroni
# cluster with etcd on the same hosts: Patroni starts PostgreSQL, elects the leader and
# fails over; HAProxy on every host sends ha_write_port to the leader and ha_read_port
# to replicas lagging less than ha_read_max_lag_bytes (the leader when none is). Each
# db host's db_host is its own address (Patroni, etcd and the certificates use it).
ha = False
ha_scope = "donna"
# The name applications dial (resolves to the local HAProxy; in every node's certificate).
ha_service_name = "donna-db"
# A committed write is on two nodes (synchronous_mode). Strict: refuse writes when no
# synchronous replica is left, rather than carry on alone.
ha_synchronous_mode_strict = False
ha_read_max_lag_bytes = 1048576
ha_max_lag_on_failover_bytes = 1048576
# Patroni's timings (its defaults): a dead leader is replaced within about ttl seconds.
ha_ttl = 30
ha_loop_wait = 10
ha_retry_timeout = 10

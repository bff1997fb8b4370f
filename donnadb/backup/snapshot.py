"""``backup create``: a consistent logical snapshot with pg_dump -Fd -j.

The manifest's row counts and the dump come from the SAME snapshot: we open a
REPEATABLE READ transaction as the backup role, export its snapshot, count the
rows in it (per table and per partition) with a content checksum of each table
(dbfacts.table_facts), and hand the snapshot id to ``pg_dump --snapshot`` while we
keep the transaction open. ``backup drill`` compares a restored copy with these.
Everything (dump, ``SHA256SUMS``, manifest) is written into ``.partial-<id>`` and
published by one rename, so an interrupted backup never looks complete.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg

import donnadb
from donnadb import db
from donnadb.backup import agecrypt, crypto, dbfacts, pgtools, signing, storage_local, sums
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupError
from donnadb.config import Settings

log = logging.getLogger(__name__)

DUMP_DIR = mf.DUMP_DIR
SQL_SNAPSHOT_TX = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SQL_EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"
#: Our snapshot connection + pg_dump's leader + one per job.
SQL_CONN_LIMIT = "SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user"


def create_backup(
    settings: Settings,
    *,
    dbname: str | None = None,
    jobs: int | None = None,
    compress_level: int | None = None,
) -> storage_local.LocalBackup:
    """Dump ``dbname`` (default DB_NAME) into the local repository and return it.

    :raises BackupError: pg_dump failed or the repository is not writable.
    :raises ConfigError: a key file (signing, encryption, age recipients) is missing or
        unreadable.
    :raises PreconditionError: age recipients are set but age is not installed.
    :raises DatabaseError, CredentialsError: the backup role cannot connect.
    """
    dbname = dbname or settings.db_name
    jobs = jobs or settings.backup_jobs
    level = settings.backup_compress_level if compress_level is None else compress_level
    repo = storage_local.ensure_repo(settings.backup_repo_dir)
    pg_dump = pgtools.tool(settings, "pg_dump")
    # A bad key or recipients file (or no age binary) fails before pg_dump.
    if settings.backup_age_recipients_file:
        agecrypt.load_recipients(settings.backup_age_recipients_file)
        agecrypt.binary()
    elif settings.backup_encryption_key_file:
        crypto.load_keys(settings.backup_encryption_key_file)
    signing_keys = signing.load_keys(settings)
    with storage_local.repo_lock(repo):
        backup_id = storage_local.new_backup_id()
        partial = storage_local.start_partial(repo, backup_id)
        try:
            manifest = _dump(settings, pg_dump, dbname, backup_id, partial, jobs, level)
            signing.sign(manifest, signing_keys)
            sums.write(partial, manifest)
            mf.write_private(partial / mf.MANIFEST_NAME, manifest.to_json())
            final = storage_local.commit_partial(partial, backup_id)
        except BaseException:
            # Also on KeyboardInterrupt: nothing half-written may survive.
            shutil.rmtree(partial, ignore_errors=True)
            raise
    log.info("backup %s of %s finished: %d files", backup_id, dbname, len(manifest.files))
    return storage_local.LocalBackup(backup_id, final, manifest, None)


def _timed_facts(conn: psycopg.Connection) -> tuple[dbfacts.TableFacts, float]:
    mark = time.monotonic()
    facts = dbfacts.table_facts(conn)
    return facts, round(time.monotonic() - mark, 3)


def _dump(
    settings: Settings,
    pg_dump: str,
    dbname: str,
    backup_id: str,
    partial: Path,
    jobs: int,
    level: int,
) -> mf.Manifest:
    started = mf.now_utc()
    role = settings.role("backup")
    with db.connection("backup", settings=settings, dbname=dbname) as conn:
        limit = conn.execute(SQL_CONN_LIMIT).fetchone()[0]
        if 0 <= limit < jobs + 2:
            raise BackupError(
                f"pg_dump -j{jobs} needs {jobs + 2} connections but role {role} is limited "
                f"to {limit}; lower BACKUP_JOBS or raise its limit in group_data "
                "(pg_role_connection_limits)")
        conn.commit()  # the snapshot transaction must start fresh
        conn.execute(SQL_SNAPSHOT_TX)
        snapshot = conn.execute(SQL_EXPORT_SNAPSHOT).fetchone()[0]
        server_version = dbfacts.server_version(conn)
        schema_version = dbfacts.schema_version(conn)
        size = dbfacts.database_size(conn)
        cmd = [pg_dump, "--format=directory", f"--jobs={jobs}", f"--compress={level}",
               f"--snapshot={snapshot}", f"--file={partial / DUMP_DIR}", "--no-password"]
        # The counts and checksums read the same snapshot while pg_dump writes it out:
        # on the snapshot's own connection (no extra connection), in a thread, so their
        # scans overlap the dump's instead of adding to it.
        with ThreadPoolExecutor(max_workers=1) as pool:
            counting = pool.submit(_timed_facts, conn)
            pgtools.run(cmd, pgtools.libpq_env(settings, role, dbname),
                        f"pg_dump of {dbname}")
            facts, facts_seconds = counting.result()
    encryption = None
    if settings.backup_age_recipients_file:  # wins over the symmetric key (docs/backup.md)
        recipients = agecrypt.load_recipients(settings.backup_age_recipients_file)
        agecrypt.encrypt_tree(partial, DUMP_DIR, settings.backup_age_recipients_file)
        encryption = {"algorithm": agecrypt.ALGORITHM, "recipients": recipients}
    elif settings.backup_encryption_key_file:
        key = crypto.load_keys(settings.backup_encryption_key_file)[0]
        crypto.encrypt_tree(partial, DUMP_DIR, key, backup_id)
        encryption = {"algorithm": crypto.ALGORITHM, "key_id": key.key_id}
    # Hashed and flushed on every job's core at once: commit_partial's fsync then finds
    # nothing left to write.
    files = mf.hash_tree(partial, workers=jobs, sync=True)
    return mf.Manifest(
        backup_id=backup_id,
        database=dbname,
        started_at=started,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        server_version=server_version,
        schema_version=schema_version,
        database_size=size,
        row_counts=facts.row_counts,
        files=files,
        tools={
            "pg_dump": pgtools.version(pg_dump),
            "donnadb": getattr(donnadb, "__version__", "0.1.0"),
            "python": platform.python_version(),
        },
        compress_level=level,
        jobs=jobs,
        encryption=encryption,
        extra=mf.drill_facts(facts, facts_seconds),
    )

"""``backup restore``: a verified backup into a fresh, bootstrapped database.

Order matters for "no partial damage": the backup's files are re-hashed against
the manifest first, and the data is loaded into a NEW database
(``<target>_restoring_<stamp>``) that is compared with the manifest; only a copy that
matches takes the target's name, in one transaction (donnadb/backup/swap.py), the
previous database being kept as ``<target>_before_<stamp>``. Any failure drops the
new copy and leaves the target as it was. The new database is created by the
superuser (peer auth) with the deploy's bootstrap SQL, so extensions, grants and
default privileges are exactly a deployed database's; the data itself is loaded
by ``pg_restore -j`` as the migrator role acting as the owner role (``--role``),
so restored objects are owned as in production and no superuser runs pg_restore.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from donnadb import db
from donnadb.backup import (
    agecrypt,
    bootstrap,
    crypto,
    dbfacts,
    erasures,
    pgtools,
    room,
    signing,
    storage_local,
    swap,
)
from donnadb.backup import manifest as mf
from donnadb.backup.erasures import Reapplied
from donnadb.backup.errors import BackupCorrupt, BackupError, RestoreRefused
from donnadb.backup.snapshot import DUMP_DIR
from donnadb.config import Settings
from donnadb.errors import ConfigError, DonnaError, UsageError

log = logging.getLogger(__name__)

#: TOC entries the bootstrap SQL already created (extensions need a superuser).
_TOC_EXTENSION = re.compile(r"^\d+; \d+ \d+ (EXTENSION|COMMENT - EXTENSION) ")
_TOC_SCHEMA = re.compile(r"^\d+; \d+ \d+ SCHEMA - (\S+) ")
#: Schemas whose every object the bootstrap creates as the superuser (PgBouncer's login
#: lookup, SECURITY DEFINER): the owner role may not create in them, and need not.
BOOTSTRAP_SCHEMAS = ("pgbouncer",)
_TOC_IN_BOOTSTRAP_SCHEMA = re.compile(
    r"^\d+; \d+ \d+ [A-Z][A-Z ]*? (?:" + "|".join(BOOTSTRAP_SCHEMAS) + r") ")
DBNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Never dropped or replaced, whatever the flags (template* too).
NEVER_REPLACED = frozenset({"postgres"})


@dataclass
class RestoreResult:
    backup_id: str
    target_db: str
    seconds: float
    schema_version: str | None
    row_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    #: The name the replaced database keeps (``<target>_before_<stamp>``), if one existed.
    kept_as: str | None = None
    #: The erasures applied again to the copy before it took the target's name.
    erasures: Reapplied | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_files(settings: Settings, backup: storage_local.LocalBackup) -> mf.Manifest:
    """Re-hash every file of ``backup`` against its manifest (and its signature, if any).

    :raises BackupCorrupt: the manifest is missing, fails its signature, or any file
        differs.
    """
    if backup.manifest is None:
        raise BackupCorrupt(f"backup {backup.backup_id} has no readable manifest")
    signing.check_if_signed(settings, backup.manifest,
                            where=f"the manifest of backup {backup.backup_id}")
    problems = mf.check_files(backup.path, backup.manifest)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupCorrupt(
            f"backup {backup.backup_id} is damaged: {problems[0]}{more}; "
            "restore an older backup or the S3 copy"
        )
    return backup.manifest


def target_has_data(settings: Settings, target_db: str) -> bool:
    """True when ``target_db`` exists and holds any object of its own (a table of any
    kind, a view, a sequence, a function)."""
    if not bootstrap.database_exists(target_db, port=settings.db_port):
        return False
    with db.connection("migrator", settings=settings, dbname=target_db) as conn:
        return dbfacts.has_own_objects(conn)


def restore_backup(
    settings: Settings,
    backup: storage_local.LocalBackup,
    target_db: str,
    *,
    force: bool = False,
    jobs: int | None = None,
    allow_unencrypted: bool = False,
    apply_erasures: bool = True,
) -> RestoreResult:
    """Restore ``backup`` into a new database, check it against the manifest, erase again
    the users the erasures ledgers of ``target_db`` and of the backup's source database
    name (``result.erasures``; ``apply_erasures=False`` only for a throwaway copy that is
    compared with the backup and dropped), then give it the name ``target_db`` (an
    existing ``target_db`` is kept as ``result.kept_as``).

    :raises BackupCorrupt: the backup's files do not match (target untouched).
    :raises RestoreRefused: the target holds data and ``force`` is off, or the backup is
        not encrypted while a key is configured and ``allow_unencrypted`` is off
        (target untouched).
    :raises DiskWriteError: the server's disk has no room for the copy (nothing made).
    :raises BackupError: pg_restore failed, the restored data differs from the manifest,
        or the swap failed (target untouched, the new copy dropped).
    :raises DatabaseError: an existing ledger, or the copy, cannot be reached to erase
        again (target untouched, the new copy dropped).
    """
    started = time.monotonic()
    if not DBNAME_RE.match(target_db):
        # libpq would read a name with "=" as a connection string: keep names plain.
        raise UsageError(f"--target-db {target_db!r} is not a plain database name; "
                         "use letters, digits and _ (max 63)")
    if target_db in NEVER_REPLACED or target_db.startswith("template"):
        raise RestoreRefused(f"--target-db {target_db} is a database PostgreSQL itself "
                             "needs; restore into another name (even --force never "
                             "replaces it)")
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 3)
        mark = now

    with storage_local.reading(backup):
        manifest = verify_files(settings, backup)
        lap("verify_files")
        configured = ("BACKUP_AGE_RECIPIENTS_FILE" if settings.backup_age_recipients_file
                      else "BACKUP_ENCRYPTION_KEY_FILE" if settings.backup_encryption_key_file
                      else None)
        if configured and not manifest.encryption and not allow_unencrypted:
            # With encryption configured every backup of ours is encrypted: a plain one is
            # someone else's (or a downgrade); use it only when the operator says so.
            raise RestoreRefused(
                f"backup {backup.backup_id} is not encrypted but {configured} "
                "is set; pass --allow-unencrypted if you know where it comes from")
        decrypt = decryption(settings, manifest)
        if target_db == settings.db_name and not force:
            raise RestoreRefused(
                f"{target_db} is the live database; pass --force to replace it"
            )
        exists = bootstrap.database_exists(target_db, port=settings.db_port)
        if exists and not force and target_has_data(settings, target_db):
            raise RestoreRefused(
                f"database {target_db} exists and is not empty; pass --force to replace it "
                "or choose another --target-db"
            )
        # The copy is built beside the live databases: never fill the server's disk.
        room.for_logical_restore(settings, backup.backup_id, manifest.database_size)
        with storage_local.restore_lock(settings.backup_repo_dir, target_db) as alone:
            if not alone:
                raise RestoreRefused(f"another restore into {target_db} is running; wait "
                                     "for it to finish")
            temp_db = swap.temp_name(target_db, swap.stamp())
            try:
                result = _restore_and_check(settings, backup, manifest, decrypt, temp_db,
                                            jobs or settings.backup_jobs, lap)
                if apply_erasures:
                    # Read now, the latest the ledgers can be before the swap; the copy
                    # is nobody's yet, so the erased never show under the target's name.
                    names = [target_db, manifest.database]
                    result.erasures = erasures.apply_to(
                        settings, erasures.read_ledgers(settings, names), temp_db,
                        serves_as=target_db, names=names)
                    lap("erasures")
                # Checked: only now does the target change, in one step.
                result.kept_as = swap.swap_in(settings, temp_db, target_db, replace=exists,
                                              when=swap.stamp())
                lap("swap")
            except BaseException:
                # Whatever failed (even Ctrl-C), the target is as it was: drop the copy.
                # A killed process cannot do this; --cleanup recognises the name.
                _drop_quietly(settings, temp_db)
                raise
            if result.erasures is not None and result.erasures.ledger_from:
                # A `users forget` that committed after the ledgers were read and before
                # the swap is in the replaced database's (or the source's) ledger now.
                late_from = [n for n in (result.kept_as, manifest.database)
                             if n and n != target_db]
                erasures.apply_late(settings, late_from, target_db, result.erasures)
    result.target_db = target_db
    result.seconds = round(time.monotonic() - started, 3)
    result.phases = phases
    log.info("restored %s into %s in %.1fs", backup.backup_id, target_db, result.seconds)
    return result


def _drop_quietly(settings: Settings, temp_db: str) -> None:
    """Drop a failed restore's copy; a failure to do so is logged, never hides the
    error that made the restore fail."""
    try:
        bootstrap.drop_database(temp_db, port=settings.db_port)
    except DonnaError as exc:
        log.error("could not drop %s (%s); `donnactl backup restore --cleanup` will",
                  temp_db, exc)


def _restore_and_check(settings: Settings, backup: storage_local.LocalBackup,
                       manifest: mf.Manifest, decrypt: Decrypt | None, temp_db: str,
                       jobs: int, lap: Callable[[str], None]) -> RestoreResult:
    """Create ``temp_db``, load the backup into it and compare it with the manifest.

    :raises BackupError: pg_restore failed or the data differs from the manifest.
    """
    bootstrap.create_database(settings, temp_db, port=settings.db_port)
    lap("create_database")
    if decrypt:
        # The plaintext lives only while pg_restore reads it, inside the 0700 repository.
        with tempfile.TemporaryDirectory(dir=settings.backup_repo_dir,
                                         prefix=storage_local.DECRYPTED_PREFIX) as tmp:
            decrypt(backup.path, Path(tmp))
            _pg_restore(settings, Path(tmp), temp_db, jobs)
    else:
        _pg_restore(settings, backup.path / DUMP_DIR, temp_db, jobs)
    lap("pg_restore")
    # Objects restored as the owner already got the default privileges; re-applying
    # the bootstrap also covers anything created another way, and it is idempotent.
    bootstrap.apply_bootstrap(settings, temp_db, port=settings.db_port)
    lap("grants")
    # Fresh tables have no statistics: the first queries would plan blind.
    bootstrap.superuser_psql("ANALYZE", dbname=temp_db, port=settings.db_port)
    lap("analyze")
    result = check_against_manifest(settings, manifest, temp_db)
    lap("compare")
    if not result.ok:
        raise BackupError(
            f"the restored copy differs from backup {backup.backup_id}: "
            + "; ".join(result.problems[:3]) + "; the target was not touched"
        )
    return result


#: Decrypts a backup's dump (its directory) into a directory.
Decrypt = Callable[[Path, Path], None]


def decryption(settings: Settings, manifest: mf.Manifest) -> Decrypt | None:
    """How to decrypt ``manifest``'s backup (None: it is plain), with its key checked
    before the target is touched.

    :raises ConfigError: no key (file or age identity) is configured, or it cannot be
        read or is readable by others.
    :raises BackupError: the key file lacks the backup's key id, or the identity is not
        one of the backup's recipients.
    """
    if not manifest.encryption:
        return None
    if manifest.encryption["algorithm"] == agecrypt.ALGORITHM:
        identity = agecrypt.check_identity(settings.backup_age_identity_file,
                                           manifest.encryption["recipients"],
                                           manifest.backup_id)
        return lambda src, dest: agecrypt.decrypt_tree(src, DUMP_DIR, dest, identity)
    keys = _keys_for(settings, manifest)
    return lambda src, dest: crypto.decrypt_tree(src, DUMP_DIR, dest, keys, manifest.backup_id)


def _keys_for(settings: Settings, manifest: mf.Manifest) -> list[crypto.Key]:
    """The keys to decrypt ``manifest``'s backup (a symmetric key's).

    :raises ConfigError: no key file is configured or it cannot be read.
    :raises BackupError: the key file lacks the backup's key id.
    """
    wanted = manifest.encryption["key_id"]
    if not settings.backup_encryption_key_file:
        raise ConfigError(f"backup {manifest.backup_id} is encrypted (key id {wanted}); "
                          "set BACKUP_ENCRYPTION_KEY_FILE to the file holding that key")
    keys = crypto.load_keys(settings.backup_encryption_key_file)
    if wanted not in {k.key_id for k in keys}:
        raise BackupError(
            f"backup {manifest.backup_id} needs key id {wanted}, but "
            f"{settings.backup_encryption_key_file} has {', '.join(k.key_id for k in keys)}; "
            "add the old key to the file (see docs/backup.md, key rotation)")
    return keys


def _pg_restore(
    settings: Settings, dump: Path, target_db: str, jobs: int
) -> None:
    pg_restore = pgtools.tool(settings, "pg_restore")
    env = pgtools.libpq_env(settings, settings.role("migrator"), target_db)
    toc = pgtools.run([pg_restore, "--list", str(dump)], env, "pg_restore --list")
    existing = set(bootstrap.superuser_psql(
        "SELECT nspname FROM pg_namespace", dbname=target_db, port=settings.db_port
    ).splitlines())
    keep = []
    for line in toc.splitlines():
        if _TOC_EXTENSION.match(line) or _TOC_IN_BOOTSTRAP_SCHEMA.match(line):
            continue
        schema = _TOC_SCHEMA.match(line)
        if schema and schema.group(1) in existing:
            continue
        keep.append(line)
    with tempfile.NamedTemporaryFile("w", suffix=".toc", delete=True) as listfile:
        listfile.write("\n".join(keep) + "\n")
        listfile.flush()
        cmd = [pg_restore, f"--dbname={target_db}", f"--jobs={jobs}",
               f"--role={settings.db_role_owner}", "--no-owner", "--no-privileges",
               "--exit-on-error", "--no-password", f"--use-list={listfile.name}", str(dump)]
        pgtools.run(cmd, env, f"pg_restore into {target_db}")


def check_against_manifest(
    settings: Settings, manifest: mf.Manifest, target_db: str
) -> RestoreResult:
    """Compare schema version and every table's row count with the manifest."""
    with db.connection("backup", settings=settings, dbname=target_db) as conn:
        version = dbfacts.schema_version(conn)
        counts = dbfacts.row_counts(conn)
    problems = []
    if version != manifest.schema_version:
        problems.append(f"schema version {version} != {manifest.schema_version}")
    for table, expected in sorted(manifest.row_counts.items()):
        got = counts.get(table)
        if got != expected:
            problems.append(f"{table}: {got} rows != {expected}")
    for table in sorted(set(counts) - set(manifest.row_counts)):
        problems.append(f"{table}: not in the backup")
    return RestoreResult(manifest.backup_id, target_db, 0.0, version, counts, problems)

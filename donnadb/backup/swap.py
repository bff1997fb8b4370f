"""Putting a restored copy in place of a database in one step, and the copies it leaves.

A restore never loads into the database it replaces. It builds ``<db>_restoring_<stamp>``,
checks it, and only then swaps names in ONE transaction (ALTER DATABASE ... RENAME is
transactional): the old database becomes ``<db>_before_<stamp>`` and the new one takes
its name. Either both renames happen or neither does. PgBouncer holds the application's
clients (``PAUSE <db>``) while the sessions on both databases are ended and the names
change, and ``RESUME <db>`` always follows. The kept ``_before_`` copy, and a
``_restoring_`` copy left by a killed restore, are listed and dropped by
``backup restore --cleanup``; nothing else is ever dropped there.

The postgres superuser is reached by peer authentication over the local socket, and
PgBouncer's admin console as its ``pgbouncer`` user over its Unix socket from the OS
user PgBouncer runs as (postgres): no password anywhere.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from psycopg import sql

from donnadb import db
from donnadb.backup import bootstrap, storage_local
from donnadb.backup.errors import BackupError, RestoreRefused
from donnadb.config import Settings
from donnadb.errors import DatabaseError

log = logging.getLogger(__name__)
audit = logging.getLogger("donnadb.audit")

TEMP_TAG = "_restoring_"
KEPT_TAG = "_before_"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP_RE = r"[0-9]{8}T[0-9]{6}Z"
_STAMP_LEN = 16
MAX_NAME = 63
#: Where PgBouncer's admin console listens (pgbouncer.ini.j2's unix_socket_dir).
PGBOUNCER_SOCKET_DIR = "/var/run/postgresql"
#: PAUSE waits for running transactions to end; a restore does not wait longer.
PAUSE_TIMEOUT_SECONDS = 30
#: ALTER DATABASE RENAME fails while a session is connected; a client that connected
#: directly between the terminate and the rename gets ended again this many times.
SWAP_ATTEMPTS = 3

SQL_SWAP = """
SET search_path = pg_catalog, pg_temp;
SET lock_timeout = '10s';
BEGIN;
SELECT count(pg_catalog.pg_terminate_backend(pid, 5000)) FROM pg_catalog.pg_stat_activity
WHERE datname IN ({names}) AND pid <> pg_catalog.pg_backend_pid();
{renames}
COMMIT;
"""
SQL_RENAME = "ALTER DATABASE {old} RENAME TO {new};"
SQL_DATABASES = """
SET search_path = pg_catalog, pg_temp;
SELECT datname FROM pg_catalog.pg_database ORDER BY datname
"""


def stamp(now: datetime | None = None) -> str:
    return f"{now or datetime.now(UTC):{STAMP_FORMAT}}"


def _prefix(target_db: str, tag: str) -> str:
    return target_db[:MAX_NAME - len(tag) - _STAMP_LEN]


def temp_name(target_db: str, when: str) -> str:
    """The database a restore into ``target_db`` builds (a valid name, <= 63 chars)."""
    return f"{_prefix(target_db, TEMP_TAG)}{TEMP_TAG}{when}"


def kept_name(target_db: str, when: str) -> str:
    """The name ``target_db``'s previous database keeps after a swap."""
    return f"{_prefix(target_db, KEPT_TAG)}{KEPT_TAG}{when}"


def _matches(target_db: str, tag: str, name: str) -> bool:
    pattern = rf"^{re.escape(_prefix(target_db, tag))}{tag}{_STAMP_RE}$"
    return re.match(pattern, name) is not None


def _literal(script: sql.Composable) -> str:
    return script.as_string(None)


def _admin(settings: Settings, command: str) -> subprocess.CompletedProcess[str]:
    cmd = db.as_cluster_owner(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", PGBOUNCER_SOCKET_DIR, "-p", str(settings.pgbouncer_port),
                               "-U", "pgbouncer", "-d", "pgbouncer"])
    return subprocess.run(cmd, input=command, capture_output=True, text=True, cwd="/",
                          check=False, timeout=PAUSE_TIMEOUT_SECONDS)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr.strip().splitlines() or ["no output"])[-1]


def _resume(settings: Settings, dbname: str) -> None:
    try:
        done = _admin(settings, f"RESUME {dbname}")
    except subprocess.TimeoutExpired:
        log.error("PgBouncer did not answer RESUME %s; run it on the admin console", dbname)
        return
    if done.returncode != 0:
        log.error("PgBouncer RESUME %s failed: %s; check `SHOW DATABASES` on the admin "
                  "console", dbname, _last_line(done))
    else:
        log.info("PgBouncer resumed %s", dbname)


def resume_if_left_paused(settings: Settings, dbname: str) -> bool:
    """``RESUME dbname`` on PgBouncer unless a restore of it is running: a restore killed
    between its PAUSE and its RESUME leaves the database paused. True when it was paused
    (and is resumed now); False when it was not, or without PgBouncer."""
    if settings.pgbouncer_port is None:
        return False
    with storage_local.restore_lock(settings.backup_repo_dir, dbname) as free:
        if not free:
            return False
        try:
            done = _admin(settings, f"RESUME {dbname}")
        except subprocess.TimeoutExpired:
            log.error("PgBouncer did not answer RESUME %s", dbname)
            return False
    if done.returncode != 0:  # "database ... is not paused", or PgBouncer is not running
        return False
    audit.info("PgBouncer resumed after a killed restore", extra={"audit": {"database": dbname}})
    return True


@contextmanager
def pgbouncer_paused(settings: Settings, dbname: str) -> Iterator[bool]:
    """Hold PgBouncer's clients of ``dbname`` (``PAUSE``) and always ``RESUME`` after.

    Yields whether it paused. PgBouncer not configured (no PGBOUNCER_PORT), not running
    or refusing the admin command is logged and the swap goes on without it.

    :raises BackupError: PgBouncer did not finish pausing within PAUSE_TIMEOUT_SECONDS
        (a long transaction); it is resumed and nothing was renamed.
    """
    if settings.pgbouncer_port is None:
        log.warning("PGBOUNCER_PORT is not set: swapping %s without pausing PgBouncer", dbname)
        yield False
        return
    # dbname passed DBNAME_RE: a plain identifier, safe in the admin console's syntax.
    try:
        done = _admin(settings, f"PAUSE {dbname}")
    except subprocess.TimeoutExpired:
        _resume(settings, dbname)
        raise BackupError(f"PgBouncer did not pause {dbname} within {PAUSE_TIMEOUT_SECONDS} s "
                          "(a long transaction?); nothing was swapped, try again") from None
    if done.returncode != 0:
        log.warning("PgBouncer not paused (%s): swapping %s without it", _last_line(done),
                    dbname)
        yield False
        return
    log.info("PgBouncer paused %s", dbname)
    try:
        yield True
    finally:
        _resume(settings, dbname)


def swap_in(settings: Settings, temp_db: str, target_db: str, *, replace: bool,
            when: str) -> str | None:
    """Give ``temp_db`` the name ``target_db`` in one transaction; with ``replace``, the
    existing ``target_db`` is renamed to its kept name first. Returns that kept name.

    :raises RestoreRefused: the kept name is taken (nothing renamed).
    :raises BackupError: the renames failed (rolled back: nothing renamed).
    """
    kept = kept_name(target_db, when) if replace else None
    if kept and bootstrap.database_exists(kept, port=settings.db_port):
        raise RestoreRefused(f"database {kept} exists already; drop it with `donnactl backup "
                             "restore --cleanup` and restore again")
    pairs = ([(target_db, kept)] if kept else []) + [(temp_db, target_db)]
    script = _literal(sql.SQL(SQL_SWAP).format(
        names=sql.SQL(", ").join(sql.Literal(n) for n in (target_db, temp_db)),
        renames=sql.SQL("\n").join(
            sql.SQL(SQL_RENAME).format(old=sql.Identifier(a), new=sql.Identifier(b))
            for a, b in pairs)))
    with pgbouncer_paused(settings, target_db):
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                bootstrap.superuser_psql(script, port=settings.db_port)
                break
            except DatabaseError as exc:
                # psql's last line is the DETAIL: "There is 1 other session using ..."
                busy = "other session" in str(exc) or "accessed by other users" in str(exc)
                if not busy or attempt == SWAP_ATTEMPTS:
                    raise BackupError(f"swapping {temp_db} in as {target_db} failed, nothing "
                                      f"renamed: {exc}") from None
                log.warning("a session reconnected to %s during the swap; again", target_db)
    if kept:
        audit.info("database replaced by a restore; the previous one is kept",
                   extra={"audit": {"database": target_db, "kept_as": kept,
                                    "restored_from": temp_db}})
    return kept


@dataclass
class Leftover:
    name: str
    kind: str  # "kept" (a replaced database) or "stale" (a killed restore's copy)
    in_use: bool = False  # a running restore is building it: never dropped

    def to_dict(self) -> dict:
        return asdict(self)


def leftovers(settings: Settings, target_db: str) -> list[Leftover]:
    """The kept and stale copies of ``target_db`` (only names of the two patterns)."""
    names = bootstrap.superuser_psql(SQL_DATABASES, port=settings.db_port).splitlines()
    found = [Leftover(n, "kept") for n in names if _matches(target_db, KEPT_TAG, n)]
    stale = [Leftover(n, "stale") for n in names if _matches(target_db, TEMP_TAG, n)]
    if stale:
        with storage_local.restore_lock(settings.backup_repo_dir, target_db) as free:
            for s in stale:
                s.in_use = not free
    return found + stale


def drop_leftovers(settings: Settings, target_db: str, found: list[Leftover]) -> list[str]:
    """Drop ``found`` (from :func:`leftovers`) except those in use; return the dropped.

    Only names of the two patterns of ``target_db`` are dropped, never ``postgres`` nor a
    ``template*`` database, whatever is passed in.
    """
    dropped = []
    for item in found:
        if item.in_use or item.name == "postgres" or item.name.startswith("template") \
                or not (_matches(target_db, KEPT_TAG, item.name)
                        or _matches(target_db, TEMP_TAG, item.name)):
            continue
        bootstrap.drop_database(item.name, port=settings.db_port)
        audit.info("restore leftover dropped",
                   extra={"audit": {"database": item.name, "kind": item.kind,
                                    "copy_of": target_db}})
        dropped.append(item.name)
    return dropped

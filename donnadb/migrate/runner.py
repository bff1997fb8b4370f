"""Applying migrations: checksums, advisory lock, one transaction per migration.

A migration whose first line is ``-- donnadb: no-transaction`` (files.NO_TRANSACTION)
runs statement by statement outside a transaction instead, for what PostgreSQL refuses
inside one (``CREATE INDEX CONCURRENTLY``, which builds an index without blocking
writes). It is recorded after its last statement, so a failure or a kill half-way
reruns the whole file: such a file is written to be rerun (``IF EXISTS``, and an index
dropped before it is built again, since an interrupted concurrent build leaves an
INVALID index behind).

Every function connects as the migrator role. Migrations run after ``SET LOCAL ROLE``
to the owner role, so all objects they create belong to the owner and pick up the
default grants of the database bootstrap (database.sql.j2).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from donnadb import db
from donnadb.config import Settings, get_settings
from donnadb.errors import MigrationError
from donnadb.migrate.files import MigrationFile, discover

log = logging.getLogger(__name__)

#: pg_advisory_lock key shared by every runner ("donnamig" as a 64-bit integer).
LOCK_KEY = int.from_bytes(b"donnamig", "big") - (1 << 63)
#: How long a second runner waits for the first before giving up.
DEFAULT_LOCK_WAIT_S = 600
#: A migration waits at most this long for a table lock, so it never queues the app
#: behind it for minutes; rerun when the conflicting session is gone.
MIGRATION_LOCK_TIMEOUT = "30s"

TABLE_EXISTS = "SELECT to_regclass('public.schema_migrations') IS NOT NULL"
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    char(64) NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms numeric(12, 3) NOT NULL,
    applied_by  text NOT NULL DEFAULT session_user
)
"""
# Readonly and backup keep the SELECT the default privileges give them; the app role
# must not be able to forge or erase migration history.
REVOKE_APP = "REVOKE ALL ON public.schema_migrations FROM {app}"
SELECT_APPLIED = """
SELECT version, name, checksum, applied_at, duration_ms::float8
  FROM public.schema_migrations ORDER BY version
"""
INSERT_APPLIED = """
INSERT INTO public.schema_migrations (version, name, checksum, duration_ms)
VALUES (%s, %s, %s, %s)
"""
SET_ROLE = "SET LOCAL ROLE {owner}"
TRY_ADVISORY_LOCK = "SELECT pg_try_advisory_lock(%s)"
LOCK_POLL_S = 0.2
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%s)"


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``schema_migrations``."""

    version: str
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: float


@dataclass
class MigrationStatus:
    """What is applied, what is pending, and what does not add up."""

    applied: list[AppliedMigration] = field(default_factory=list)
    pending: list[MigrationFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def current_version(self) -> str | None:
        return self.applied[-1].version if self.applied else None

    def to_dict(self) -> dict:
        return {
            "applied": [asdict(a) for a in self.applied],
            "pending": [
                {"version": p.version, "name": p.name, "checksum": p.checksum}
                for p in self.pending
            ],
            "current_version": self.current_version,
            "problems": list(self.problems),
        }


def _fetch_applied(conn: psycopg.Connection) -> list[AppliedMigration]:
    if not conn.execute(TABLE_EXISTS).fetchone()[0]:
        return []
    return [AppliedMigration(*row) for row in conn.execute(SELECT_APPLIED).fetchall()]


def compare(applied: list[AppliedMigration], files: list[MigrationFile]) -> MigrationStatus:
    """Pure comparison of the database's history with the files on disk.

    A problem is an applied migration whose file was edited or removed, or a pending
    file numbered below the newest applied one (forward-only: it would run out of order).
    """
    by_version = {f.version: f for f in files}
    status = MigrationStatus(applied=list(applied))
    for row in applied:
        on_disk = by_version.get(row.version)
        if on_disk is None:
            status.problems.append(
                f"applied migration {row.version}_{row.name}.sql was removed from disk;"
                " restore it (migrations are forward-only)"
            )
        elif on_disk.checksum != row.checksum.strip():
            status.problems.append(
                f"applied migration {on_disk.path.name} was edited after it was applied"
                f" (checksum {row.checksum[:12]} in the database, {on_disk.checksum[:12]} on"
                " disk); restore the file and put the change in a new migration"
            )
    done = {row.version for row in applied}
    newest = max(done) if done else None
    for f in files:
        if f.version in done:
            continue
        if newest is not None and f.version < newest:
            status.problems.append(
                f"pending migration {f.path.name} is older than applied version {newest};"
                " renumber it after the newest migration"
            )
        status.pending.append(f)
    return status


def get_status(*, settings: Settings | None = None, dbname: str | None = None) -> MigrationStatus:
    """Applied and pending migrations plus any problems; changes nothing.

    :raises DatabaseError: the database cannot be reached.
    :raises MigrationError: the migration directory is unusable.
    """
    s = settings or get_settings()
    files = discover(s.schema_dir)
    with db.connection("migrator", settings=s, dbname=dbname, autocommit=True) as conn:
        applied = _fetch_applied(conn)
    return compare(applied, files)


def plan(*, settings: Settings | None = None, dbname: str | None = None) -> list[MigrationFile]:
    """The migrations ``apply`` would run, in order; executes nothing.

    :raises MigrationError: an applied migration was edited or removed, or a pending one
        is out of order.
    :raises DatabaseError: the database cannot be reached.
    """
    status = get_status(settings=settings, dbname=dbname)
    if status.problems:
        raise MigrationError(status.problems[0])
    return status.pending


def _ensure_table(conn: psycopg.Connection, s: Settings) -> None:
    with conn.transaction():
        conn.execute(sql.SQL(SET_ROLE).format(owner=sql.Identifier(s.role("owner"))))
        conn.execute(CREATE_TABLE)
        conn.execute(sql.SQL(REVOKE_APP).format(app=sql.Identifier(s.role("app"))))


def _run_one(conn: psycopg.Connection, s: Settings, mig: MigrationFile) -> float:
    """Run ``mig`` as the owner role and record it; return its duration in ms. In one
    transaction, or statement by statement outside one (files.NO_TRANSACTION)."""
    outside = not mig.transactional
    # No parameters: psycopg sends a file with the simple query protocol, so a file run
    # in a transaction may hold many statements.
    parts = mig.statements() if outside else [mig.read_sql()]
    scope = "" if outside else "LOCAL "
    started = time.monotonic()
    try:
        with contextlib.nullcontext() if outside else conn.transaction():
            conn.execute(sql.SQL(f"SET {scope}ROLE {{owner}}").format(
                owner=sql.Identifier(s.role("owner"))))
            conn.execute(sql.SQL(f"SET {scope}lock_timeout = {{timeout}}").format(
                timeout=sql.Literal(MIGRATION_LOCK_TIMEOUT)))
            for part in parts:
                conn.execute(part.encode("utf-8"))
            duration_ms = (time.monotonic() - started) * 1000
            conn.execute(INSERT_APPLIED, (mig.version, mig.name, mig.checksum, duration_ms))
    except psycopg.Error as exc:
        diag = exc.diag.message_primary or str(exc).strip().splitlines()[0]
        if outside:
            raise MigrationError(
                f"migration {mig.path.name} failed: {diag}; it runs outside a transaction, "
                "so the statements before this one stay applied and the file is written to "
                "be rerun (fix the cause and rerun `donnactl migrate apply`)") from exc
        raise MigrationError(
            f"migration {mig.path.name} failed and was rolled back: {diag}"
            " (fix the file and rerun `donnactl migrate apply`)"
        ) from exc
    finally:
        if outside and not conn.closed and not conn.broken:
            conn.execute("RESET ROLE")
            conn.execute("RESET lock_timeout")
    return duration_ms


def _take_lock(conn: psycopg.Connection, lock_wait_s: int) -> None:
    """Take the runners' advisory lock, polling (bounded) rather than waiting inside a
    statement: a ``CREATE INDEX CONCURRENTLY`` of the runner holding it waits for every
    open transaction to end, a waiting ``pg_advisory_lock`` call included (a deadlock).

    :raises MigrationError: the lock stayed taken for ``lock_wait_s`` seconds.
    """
    deadline = time.monotonic() + lock_wait_s
    while not conn.execute(TRY_ADVISORY_LOCK, (LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another migration runner held the lock for over {lock_wait_s}s;"
                " wait for it to finish (see pg_stat_activity) and rerun")
        time.sleep(LOCK_POLL_S)


def apply_migrations(
    *,
    settings: Settings | None = None,
    dbname: str | None = None,
    lock_wait_s: int = DEFAULT_LOCK_WAIT_S,
    on_applied: Callable[[MigrationFile, float], None] | None = None,
) -> list[MigrationFile]:
    """Apply every pending migration in order; return those applied (maybe none).

    Holds a session advisory lock for the whole run, so a second runner waits and then
    finds nothing left to do. Each migration runs in its own transaction with its
    ``schema_migrations`` row; a failure rolls back that migration only and stops.

    :raises MigrationError: an applied file was edited or removed, a pending file is out
        of order, a migration failed, or the lock was not free within ``lock_wait_s``.
    :raises DatabaseError: the database cannot be reached.
    """
    s = settings or get_settings()
    files = discover(s.schema_dir)
    done: list[MigrationFile] = []
    with db.connection("migrator", settings=s, dbname=dbname, autocommit=True) as conn:
        _take_lock(conn, lock_wait_s)
        try:
            _ensure_table(conn, s)
            status = compare(_fetch_applied(conn), files)
            if status.problems:
                raise MigrationError(status.problems[0])
            for mig in status.pending:
                duration_ms = _run_one(conn, s, mig)
                log.info("applied migration %s in %.1f ms", mig.path.name, duration_ms)
                done.append(mig)
                if on_applied:
                    on_applied(mig, duration_ms)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute(ADVISORY_UNLOCK, (LOCK_KEY,))
    return done

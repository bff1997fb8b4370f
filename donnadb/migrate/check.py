"""``donnactl db check``: can every login role connect, and is the schema what it should be?

Read-only: the checks connect and query catalogs; they change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg

from donnadb import db
from donnadb.config import Settings, get_settings
from donnadb.errors import CredentialsError, DatabaseError, DonnaError
from donnadb.migrate.runner import get_status

log = logging.getLogger(__name__)

#: The login roles the deploy creates (the owner role is NOLOGIN).
LOGIN_KINDS = ("migrator", "app", "readonly", "backup", "monitor")
#: How long a login may wait for a role that is at its connection limit (its own
#: clients, e.g. postgres_exporter's scrapes, come and go) before the check fails.
BUSY_ROLE_WAIT = 15.0
#: libpq's text for a login refused by a role's CONNECTION LIMIT (no SQLSTATE is
#: available on a failed connection attempt).
ROLE_FULL = "too many connections for role"
#: pg_partman must keep at least this many whole months premade after the current one.
MIN_MONTHS_AHEAD = 3

WHOAMI = "SELECT current_user, current_setting('server_version')"
#: Tables of the schema the application works on (everything but the runner's history).
APP_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND c.relname <> 'schema_migrations'
 ORDER BY 1
"""
#: Tables the application role may read and insert into, not change: the audit trail
#: and the erasure ledger.
APPEND_ONLY_TABLES = ("system_logs", "erasures")
APPEND_ONLY = ("SELECT", "INSERT")
APP_WRITES = ("SELECT", "INSERT", "UPDATE", "DELETE")
TABLE_PRIVILEGE = "SELECT has_table_privilege(%s, format('public.%%I', %s::text), %s)"
SCHEMA_CREATE = "SELECT has_schema_privilege(%s, 'public', 'CREATE')"
MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('public.schema_migrations') IS NOT NULL"
#: Upper bound of the newest system_logs partition, and whether the default one exists.
PARTITIONS_AHEAD = """
SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]
           ::timestamptz) AS newest_upper,
       bool_or(pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') AS has_default,
       date_trunc('month', now()) + make_interval(months => %s + 1) AS needed_upper
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = to_regclass('public.system_logs')
"""
#: Rows outside every monthly partition; informational (old imported logs end up there).
DEFAULT_ROWS = "SELECT count(*) FROM ONLY public.system_logs_default"
#: Indexes a failed or killed CREATE INDEX CONCURRENTLY left behind: never used for
#: reads, still maintained on every write.
INVALID_INDEXES = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND NOT i.indisvalid ORDER BY 1
"""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    database: str
    server_version: str | None = None
    schema_version: str | None = None
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "database": self.database,
            "server_version": self.server_version,
            "schema_version": self.schema_version,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
        }


def _check_connections(s: Settings, dbname: str, report: CheckReport) -> list[DonnaError]:
    errors: list[DonnaError] = []
    for kind in LOGIN_KINDS:
        name = f"connect as {s.role(kind)}"
        try:
            user, version, waited = _login(s, kind, dbname)
        except (DatabaseError, CredentialsError) as exc:
            errors.append(exc)
            report.checks.append(CheckResult(name, False, str(exc)))
            continue
        report.server_version = version
        ok = user == s.role(kind)
        detail = f"logged in as {user}, server {version}"
        if waited:
            detail += f" (after {waited:.1f} s: the role was at its connection limit)"
        report.checks.append(CheckResult(name, ok, detail))
    return errors


def _login(s: Settings, kind: str, dbname: str,
           wait: float | None = None) -> tuple[str, str, float]:
    """Log in as ``kind``: (current_user, server version, seconds spent waiting).

    A role at its connection limit is busy, not broken: the monitor role's slots are
    held for moments by postgres_exporter's scrapes. The login is tried again until a
    slot frees up, for ``wait`` seconds at most.
    """
    wait = BUSY_ROLE_WAIT if wait is None else wait
    started = time.monotonic()
    waited = 0.0
    while True:
        try:
            with db.connection(kind, settings=s, dbname=dbname, autocommit=True) as conn:
                user, version = conn.execute(WHOAMI).fetchone()
            return user, version, waited
        except DatabaseError as exc:
            if ROLE_FULL not in str(exc) or waited >= wait:
                raise
        time.sleep(0.25)
        waited = time.monotonic() - started


def _table_grant_problems(has: Callable[[str, str, str], bool], table: str, app: str,
                          ro: str) -> list[str]:
    """What is wrong with the app's and readonly's grants on one table."""
    # The audit trail is append-only for the application (migration 0005).
    needed = APPEND_ONLY if table in APPEND_ONLY_TABLES else APP_WRITES
    wrong = [f"{app} lacks {p} on {table}" for p in needed if not has(app, table, p)]
    wrong += [f"{app} may {p} {table}" for p in ("UPDATE", "DELETE")
              if p not in needed and has(app, table, p)]
    if has(app, table, "TRUNCATE"):
        wrong.append(f"{app} has TRUNCATE on {table}")
    if not has(ro, table, "SELECT"):
        wrong.append(f"{ro} lacks SELECT on {table}")
    wrong += [f"{ro} has {p} on {table}" for p in ("INSERT", "UPDATE", "DELETE")
              if has(ro, table, p)]
    return wrong


def _schema_grant_problems(conn: psycopg.Connection, has: Callable[[str, str, str], bool],
                           app: str, ro: str) -> list[str]:
    """CREATE in schema public for either role; the app writing the migration history."""
    wrong = [f"{role} may CREATE in schema public" for role in (app, ro)
             if conn.execute(SCHEMA_CREATE, (role,)).fetchone()[0]]
    if conn.execute(MIGRATIONS_TABLE_EXISTS).fetchone()[0]:
        wrong += [f"{app} may {p} schema_migrations" for p in ("INSERT", "UPDATE", "DELETE")
                  if has(app, "schema_migrations", p)]
    return wrong


def _check_privileges(conn: psycopg.Connection, s: Settings) -> list[CheckResult]:
    tables = [r[0] for r in conn.execute(APP_TABLES).fetchall()]

    def has(role: str, table: str, priv: str) -> bool:
        return conn.execute(TABLE_PRIVILEGE, (role, table, priv)).fetchone()[0]

    app, ro = s.role("app"), s.role("readonly")
    wrong = [w for table in tables for w in _table_grant_problems(has, table, app, ro)]
    wrong += _schema_grant_problems(conn, has, app, ro)
    if not tables:
        detail = "no tables: run `donnactl migrate apply`"
    elif wrong:
        detail = "; ".join(wrong)
    else:
        detail = f"app and readonly grants right on {len(tables)} tables"
    return [CheckResult("role privileges", not wrong and bool(tables), detail)]


def _check_partitions(conn: psycopg.Connection) -> CheckResult:
    newest, has_default, needed = conn.execute(PARTITIONS_AHEAD, (MIN_MONTHS_AHEAD,)).fetchone()
    name = "system_logs partitions"
    if newest is None:
        return CheckResult(name, False,
                           "system_logs has no partitions: run `donnactl migrate apply`")
    problems = []
    if newest < needed:
        problems.append(f"partitions end at {newest:%Y-%m-%d}, need {needed:%Y-%m-%d}"
                        " (run partman.run_maintenance())")
    if not has_default:
        problems.append("no default partition")
    detail = "; ".join(problems) or f"premade until {newest:%Y-%m-%d}, default partition present"
    if has_default:
        stray = conn.execute(DEFAULT_ROWS).fetchone()[0]
        if stray:
            detail += (f"; {stray} row(s) in system_logs_default"
                       " (move them with partman.partition_data_time)")
    return CheckResult(name, not problems, detail)


def _check_indexes(conn: psycopg.Connection) -> CheckResult:
    invalid = [r[0] for r in conn.execute(INVALID_INDEXES).fetchall()]
    if invalid:
        return CheckResult("indexes", False, f"INVALID (an interrupted concurrent build): "
                           f"{', '.join(invalid)}; run `donnactl migrate apply` again if a "
                           "migration was interrupted, else DROP and re-create them")
    return CheckResult("indexes", True, "every index valid")


def run_checks(*, settings: Settings | None = None, dbname: str | None = None) -> CheckReport:
    """Connect as each login role and check schema version, grants and partitions.

    :raises DatabaseError: no role could connect at all (the server is down or
        unreachable): one line, not a report full of identical failures.
    """
    s = settings or get_settings()
    name = dbname or s.db_name
    report = CheckReport(database=name)
    errors = _check_connections(s, name, report)
    if len(errors) == len(LOGIN_KINDS):
        first = errors[0]
        raise first if isinstance(first, DatabaseError) else DatabaseError(str(first))
    if any(c.name == f"connect as {s.role('migrator')}" and not c.ok for c in report.checks):
        # Schema, grants and partitions are read through the migrator's connection.
        report.checks.append(CheckResult("schema version", False, "migrator cannot connect"))
        return report
    status = get_status(settings=s, dbname=name)
    report.schema_version = status.current_version
    if status.problems:
        schema = CheckResult("schema version", False, status.problems[0])
    elif status.pending:
        schema = CheckResult("schema version", False,
                             f"{len(status.pending)} migration(s) pending: run"
                             " `donnactl migrate apply`")
    else:
        schema = CheckResult("schema version", True, f"{status.current_version} (up to date)")
    report.checks.append(schema)
    with db.connection("migrator", settings=s, dbname=name, autocommit=True) as conn:
        report.checks += _check_privileges(conn, s)
        report.checks.append(_check_partitions(conn))
        report.checks.append(_check_indexes(conn))
    return report

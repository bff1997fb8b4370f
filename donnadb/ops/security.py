"""``donnactl db check --security``: each security promise, checked on the running host.

docs/security.md lists the promises and the tests that attack them; this module looks
at a live deployment and says, promise by promise, whether it holds there now: a
changed file mode, a hand-edited pg_hba.conf, a function planted by the owner role or
a job moved to root shows up as one FAIL line naming what is wrong.

Read-only. Run as root: secret files and the superuser's catalog views (pg_hba rules)
are root's to read; as another user those promises are reported as not checkable.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from donnadb import db
from donnadb.config import CONSUMER_PASSFILE_DIR, Settings
from donnadb.errors import DonnaError

OPS_UNITS = Path("/etc/systemd/system")
#: The scheduled jobs' units and cron files (ops and backups).
JOB_UNITS = ("donna-ops-*.service", "donna-backup-*.service")
CRON_FILES = (Path("/etc/cron.d/donna-ops"), Path("/etc/cron.d/donna-backup"))
#: Server settings that keep secrets and personal data out of logs and statistics.
QUIET_SETTINGS = {"log_parameter_max_length": "0", "log_parameter_max_length_on_error": "0",
                  "pg_stat_statements.track_utility": "off"}
#: Per-role limits the application role must carry (ALTER ROLE ... SET).
APP_LIMITS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")

DB_OWNER = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
DB_SEARCH_PATH = """
SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
 WHERE d.datname = current_database()
   AND EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'search_path=%')
"""
#: SECURITY DEFINER functions of a superuser that do not pin their search_path
#: (extension members are the extension's business).
UNPINNED_DEFINERS = """
SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
 WHERE r.rolsuper AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c
                    WHERE c LIKE 'search_path=%')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY 1
"""
ROLE_LIMITS = """
SELECT r.rolconnlimit, coalesce(s.setconfig, '{}')
  FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
 WHERE r.rolname = %s
"""
#: Text anyone with pg_read_all_stats could read that carries a password.
SEEN_PASSWORDS = """
SELECT (SELECT count(*) FROM pg_stat_statements WHERE query ~* 'password\\s*''')
     + (SELECT count(*) FROM pg_stat_activity WHERE query ~* 'password\\s*''')
"""
HBA_RULES = ("SELECT line_number, type, array_to_string(user_name, ','), "
             "coalesce(address, ''), auth_method, coalesce(error, '') "
             "FROM pg_hba_file_rules ORDER BY line_number")


@dataclass(frozen=True)
class Finding:
    """One promise and whether it holds here (``detail`` names what breaks it)."""

    promise: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_security(settings: Settings, *, dbname: str | None = None) -> list[Finding]:
    """Every promise, in the order docs/security.md gives them."""
    dbname = dbname or settings.db_name
    findings = _database_findings(settings, dbname)
    findings.append(_hba_finding(settings))
    findings += _file_findings(settings)
    findings.append(_jobs_finding())
    return findings


def _database_findings(settings: Settings, dbname: str) -> list[Finding]:
    try:
        with db.connection("readonly", settings=settings, dbname=dbname,
                           autocommit=True) as conn:
            owner = conn.execute(DB_OWNER).fetchone()[0]
            db_path = conn.execute(DB_SEARCH_PATH).fetchone()[0]
            unpinned = [r[0] for r in conn.execute(UNPINNED_DEFINERS)]
            limits = {kind: conn.execute(ROLE_LIMITS, [settings.role(kind)]).fetchone()
                      for kind in ("app", "readonly")}
            shown = {name: conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()[0]
                     for name in QUIET_SETTINGS}
            # NULL unless the library is loaded (shared_preload_libraries itself is
            # readable by superusers only).
            audit = conn.execute("SELECT current_setting('pgaudit.log', true)").fetchone()[0]
            leaked = conn.execute(SEEN_PASSWORDS).fetchone()[0]
    except (DonnaError, psycopg.Error) as exc:
        return [Finding("database reachable as the read-only role", False,
                        str(exc).strip().splitlines()[0])]
    findings = [
        Finding("database owned by postgres, not the owner role", owner == "postgres",
                f"{dbname} is owned by {owner}"),
        Finding("no search_path set on the database", db_path == 0,
                "none" if not db_path else "ALTER DATABASE ... SET search_path found; "
                f"`ALTER DATABASE {dbname} RESET search_path`"),
        Finding("superuser SECURITY DEFINER functions pin search_path", not unpinned,
                "all pinned" if not unpinned else "unpinned: " + ", ".join(unpinned[:5])),
        _role_limits_finding(settings, limits),
        Finding("bind values and utility statements stay out of logs and statistics",
                all(shown[k] == v for k, v in QUIET_SETTINGS.items()),
                ", ".join(f"{k}={shown[k]}" for k in QUIET_SETTINGS)),
        Finding("pgaudit records role, privilege and DDL changes",
                audit is not None and "role" in audit and "ddl" in audit,
                f"pgaudit.log={audit}" if audit is not None else "pgaudit is not loaded"),
        Finding(f"no password text visible to {settings.role('readonly')}", leaked == 0,
                "none" if not leaked else f"{leaked} statements with a password; "
                "`SELECT pg_stat_statements_reset()` and rotate the passwords"),
    ]
    return findings


def _role_limits_finding(settings: Settings, limits: dict[str, Any]) -> Finding:
    problems = []
    for kind, row in limits.items():
        if row is None:
            problems.append(f"role {settings.role(kind)} is missing")
            continue
        connlimit, config = row
        names = {c.split("=", 1)[0] for c in config}
        wanted = APP_LIMITS if kind == "app" else ("statement_timeout",)
        problems += [f"{settings.role(kind)} has no {n}" for n in wanted if n not in names]
        if kind == "app" and connlimit < 0:
            problems.append(f"{settings.role(kind)} has no connection limit")
    return Finding("login roles carry timeouts and a connection limit", not problems,
                   "; ".join(problems) or "app and readonly limited")


def _hba_finding(settings: Settings) -> Finding:
    promise = ("pg_hba: TCP only as hostssl, no trust, scram-sha-256 or reject, peer only "
               "for postgres")
    try:
        out = _superuser_query(HBA_RULES, settings)
    except DonnaError as exc:
        return Finding(promise, False, f"cannot read pg_hba_file_rules: {exc}")
    problems = []
    for line in out.splitlines():
        number, kind, users, _address, method, error = line.split("|")
        if error:
            problems.append(f"line {number}: {error}")
        elif kind not in ("local", "hostssl"):
            problems.append(f"line {number}: {kind} for {users} admits TCP without TLS")
        elif method == "peer" and not (kind == "local" and users == "postgres"):
            problems.append(f"line {number}: peer for {users}")
        elif method not in ("scram-sha-256", "reject", "peer"):
            problems.append(f"line {number}: {method} for {users}")
    return Finding(promise, not problems, "; ".join(problems) or "every line as promised")


def _superuser_query(sql: str, settings: Settings) -> str:
    if os.geteuid() != 0:
        raise DonnaError("run as root (the check uses the postgres superuser's peer login)")
    return db.superuser_psql(sql, port=settings.db_port)


def _secret_files(settings: Settings) -> list[tuple[Path, set[str]]]:
    """(file, owners allowed) for every secret the deploy writes."""
    root = {"root"}
    files = [(settings.db_passfile, root), (settings.pgbouncer_auth_file, {"postgres"})]
    for key in (settings.backup_encryption_key_file, settings.backup_signing_key_file,
                settings.backup_age_identity_file):  # the last: normally not on the host
        if key:  # the backup jobs' user (the cluster's owner) reads them
            files.append((key, {"root", db.CLUSTER_OWNER}))
    consumers = settings.db_passfile.parent / CONSUMER_PASSFILE_DIR
    if consumers.is_dir():
        files += [(p, {p.name}) for p in sorted(consumers.iterdir())]
    return files


def _file_findings(settings: Settings) -> list[Finding]:
    promise = "secret files readable by their owner only"
    if os.geteuid() != 0:
        return [Finding(promise, False, "run as root to check the secret files")]
    problems = []
    for path, owners in _secret_files(settings):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        owner = _user_name(st.st_uid)
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{path} is not a regular file")
        elif st.st_mode & 0o077:
            problems.append(f"{path} is mode {stat.S_IMODE(st.st_mode):o}; chmod 600 {path}")
        elif owner not in owners:
            problems.append(f"{path} belongs to {owner}, not {'/'.join(sorted(owners))}")
    directory = settings.db_passfile.parent
    if directory.exists() and directory.stat().st_mode & 0o007:
        problems.append(f"{directory} is open to others; chmod o-rwx {directory}")
    return [Finding(promise, not problems, "; ".join(problems) or "all 0600, right owners")]


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _jobs_finding() -> Finding:
    """The jobs run as their own users: systemd units' User=, cron lines' user field."""
    promise = "scheduled jobs (ops, backups) do not run as root"
    as_root = []
    units = sorted(u for pattern in JOB_UNITS for u in OPS_UNITS.glob(pattern))
    for unit in units:
        user = re.search(r"^User=(\S+)", unit.read_text(), re.M)
        if not user or user.group(1) == "root":
            as_root.append(unit.name)
    for cron in CRON_FILES:
        if cron.exists():
            for line in cron.read_text().splitlines():
                fields = line.split()
                if len(fields) > 6 and not line.startswith("#") and fields[5] == "root":
                    as_root.append(f"{cron}: {' '.join(fields[6:])[:80]}")
    if not as_root and not units:
        return Finding(promise, False, "no job units found: run `make deploy`")
    return Finding(promise, not as_root,
                   "run as root: " + "; ".join(as_root) if as_root else "none as root")


"""`donnactl roles rotate ROLE`: a new password for a login role, without downtime.

The new password is generated here, hashed client-side into a SCRAM-SHA-256 verifier
(libpq's PQencryptPasswordConn), and only the verifier is sent to PostgreSQL, so the
password never appears in a server log, pg_stat_activity or argv. The role changes its
own password (allowed to every role: no superuser needed). Then the passfile, and
PgBouncer's auth_file when it lists the role, are replaced atomically. Open sessions
and pools keep working (PostgreSQL checks passwords only at login); the window in which
a new login could read the old password from the passfile is one rename.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal as signals
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import CredentialsError, DatabaseError, DonnaError, UsageError

log = logging.getLogger(__name__)

ROTATABLE = ("app", "readonly", "migrator", "backup", "monitor")
PGBOUNCER_PIDFILE = Path("/var/run/postgresql/pgbouncer.pid")
ALTER_PASSWORD = "ALTER ROLE {} PASSWORD {}"  # noqa: S105 - a statement, filled with a verifier


class RotationError(DonnaError):
    """The password could not be rotated (files unwritable); the old one still works."""

    exit_code = 7


def _scram(conn: psycopg.Connection, role: str, password: str) -> str:
    return conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                        b"scram-sha-256").decode()


def _replace_lines(text: str, match, make) -> tuple[str, int]:
    """Lines for which ``match(line)`` is true become ``make(line)``; return (text, count)."""
    out, n = [], 0
    for line in text.splitlines():
        if match(line):
            out.append(make(line))
            n += 1
        else:
            out.append(line)
    return "\n".join(out) + "\n", n


def _stage(path: Path, text: str) -> Path:
    """Write ``text`` next to ``path`` with its mode and owner; return the staged file."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.rotate-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chown(tmp, st.st_uid, st.st_gid)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _passfile_line(role: str, password: str):
    def match(line: str) -> bool:
        fields = line.split(":")
        return not line.startswith("#") and len(fields) >= 5 and fields[3] == role

    def make(line: str) -> str:
        return ":".join(line.split(":")[:4] + [password])

    return match, make


def _old_password(text: str, role: str) -> str | None:
    match, _ = _passfile_line(role, "")
    for line in text.splitlines():
        if match(line):
            return ":".join(line.split(":")[4:]).replace("\\:", ":").replace("\\\\", "\\")
    return None


def _reload_pgbouncer() -> str:
    try:
        pid = int(PGBOUNCER_PIDFILE.read_text().strip())
        os.kill(pid, signals.SIGHUP)
    except (OSError, ValueError) as exc:
        return f"not reloaded ({exc}); reload PgBouncer to pick up the new auth_file"
    return f"reloaded (pid {pid})"


def rotate(settings: Settings, kind: str, *, dbname: str | None = None) -> dict[str, Any]:
    """Give the role of ``kind`` a new random password everywhere it is stored.

    :raises UsageError: ``kind`` is not app, readonly, migrator, backup or monitor.
    :raises CredentialsError: the passfile is unreadable or lacks the role.
    :raises DatabaseError: the role cannot log in with its current password.
    :raises RotationError: the new files could not be written (nothing changed), or the
        passfile could not be replaced (the old password was restored).
    """
    if kind not in ROTATABLE:
        raise UsageError(f"ROLE must be one of {', '.join(ROTATABLE)}, not {kind!r}")
    role = settings.role(kind)
    passfile = settings.db_passfile
    info = db.conninfo(kind, settings=settings, dbname=dbname, via_pgbouncer=False)
    text = passfile.read_text(encoding="utf-8")
    old = _old_password(text, role)
    if old is None:
        raise CredentialsError(f"no line for role {role} in {passfile}; run `make deploy`")
    new = secrets.token_urlsafe(32)  # URL-safe: no ':' or '\\' to escape in a passfile
    try:
        conn = psycopg.connect(info, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseError(db.describe_connect_error(exc, info)) from exc
    staged: list[tuple[Path, Path]] = []
    with conn:
        verifier = _scram(conn, role, new)
        match, make = _passfile_line(role, new)
        new_text, _ = _replace_lines(text, match, make)
        bouncer = settings.pgbouncer_auth_file
        bouncer_lines = 0
        try:
            staged.append((_stage(passfile, new_text), passfile))
            if bouncer.exists():
                quoted = f'"{role}" '
                btext, bouncer_lines = _replace_lines(
                    bouncer.read_text(encoding="utf-8"), lambda ln: ln.startswith(quoted),
                    lambda ln: f'{quoted}"{verifier}"')
                if bouncer_lines:
                    staged.append((_stage(bouncer, btext), bouncer))
        except OSError as exc:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise RotationError(f"cannot stage the new password files ({exc}); "
                                "nothing changed") from None
        conn.execute(sql.SQL(ALTER_PASSWORD).format(sql.Identifier(role), sql.Literal(verifier)))
        try:
            for tmp, target in staged:
                tmp.replace(target)
        except OSError as exc:
            conn.execute(sql.SQL(ALTER_PASSWORD).format(
                sql.Identifier(role), sql.Literal(_scram(conn, role, old))))
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise RotationError(f"cannot replace {passfile} ({exc}); the old password was "
                                "restored") from None
    reload = _reload_pgbouncer() if bouncer_lines else "not configured for this role"
    with db.connection(kind, settings=settings, dbname=dbname) as check:
        check.execute("SELECT 1")
    log.warning("password rotated", extra={"role": role})
    return {"role": role, "passfile": str(passfile), "pgbouncer": reload, "verified": True}

"""Running pg_dump/pg_restore: the server's own major version, the passfile in the
environment (never a password in argv), one clear error line on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from donnadb import db
from donnadb.backup.errors import BackupError
from donnadb.config import Settings


def tool(settings: Settings, name: str) -> str:
    """Path of ``name`` in BACKUP_PG_BIN_DIR, else on PATH.

    :raises BackupError: the tool is not installed.
    """
    candidate = settings.backup_pg_bin_dir / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found in {settings.backup_pg_bin_dir} or PATH; "
                          "install postgresql-client or set BACKUP_PG_BIN_DIR")
    return found


def libpq_env(settings: Settings, role: str, dbname: str) -> dict[str, str]:
    """Environment for a libpq tool: who/where through PG* variables, password via
    PGPASSFILE only; TLS as every client of ours (verify-full, channel binding)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=settings.db_host,
        PGPORT=str(settings.db_port),
        PGUSER=role,
        PGDATABASE=dbname,
        PGPASSFILE=str(settings.db_passfile),
        PGCONNECT_TIMEOUT=str(settings.db_connect_timeout),
        PGAPPNAME="donnadb-backup",
    )
    env.update(db.tls_env(settings))
    return env


def version(path: str) -> str:
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def run(cmd: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    """Run a PostgreSQL client tool; return its stdout.

    :raises BackupError: it exited non-zero (the message has its last error line).
    """
    # umask 077: pg_dump's files are private like everything else in the repository.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          cwd=cwd or "/", umask=0o077)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or ["no output"]
        raise BackupError(f"{what} failed (exit {done.returncode}): {errors[0]}")
    return done.stdout

"""`donnactl shell`: pgcli or psql connected as a role, authenticated by the passfile.

The password is never typed, never in argv and never in the environment: the client
gets ``PGPASSFILE`` (libpq reads it) and ``-w`` so it fails instead of prompting.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import UsageError

SHELL_ROLES = ("app", "readonly", "migrator")
#: Variables that would override what we set (or smuggle a password in).
_CLEARED = ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE",
            "PGSSLROOTCERT", "PGCHANNELBINDING", "PGREQUIREAUTH", "PGGSSENCMODE")


def client_path(name: str) -> str:
    """The client executable: the one installed next to our Python first (pgcli), then PATH.

    :raises UsageError: it is not installed.
    """
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise UsageError(f"{name} is not installed; `apt-get install postgresql-client` "
                         "or `pip install pgcli`, or use the other client")
    return found


def command(settings: Settings, kind: str = "readonly", *, use_psql: bool = False,
            dbname: str | None = None, extra: list[str] | None = None
            ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that open the client as the role of ``kind``.

    :raises UsageError: ``kind`` is not one of app, readonly, migrator, or the client is missing.
    :raises CredentialsError: the passfile has no password for that role.
    """
    if kind not in SHELL_ROLES:
        raise UsageError(f"--role must be one of {', '.join(SHELL_ROLES)}, not {kind!r}")
    # Validates that the passfile is readable and has the role (same rules as psycopg).
    db.conninfo(kind, settings=settings, dbname=dbname, via_pgbouncer=False)
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update({
        "PGHOST": settings.db_host,
        "PGPORT": str(settings.db_port),
        "PGDATABASE": dbname or settings.db_name,
        "PGUSER": settings.role(kind),
        "PGPASSFILE": str(settings.db_passfile),
        "PGAPPNAME": f"donnactl-shell-{kind}",
        "PGCONNECT_TIMEOUT": str(settings.db_connect_timeout),
        **db.tls_env(settings),
    })
    argv = [client_path("psql" if use_psql else "pgcli"), "-w", *(extra or [])]
    return argv, env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(argv: list[str], env: dict[str, str]) -> int:
    """Run the client in the foreground; Ctrl-C belongs to it, not to us."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # An ignored SIGINT would be inherited across exec; the client needs its default.
        return subprocess.call(argv, env=env, preexec_fn=_default_sigint)  # noqa: PLW1509
    finally:
        signal.signal(signal.SIGINT, previous)

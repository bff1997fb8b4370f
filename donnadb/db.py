"""Connections and pools for each role (psycopg 3, psycopg_pool).

Every connection authenticates with scram-sha-256 over TCP using the deploy's
passfile, so no password is ever passed in argv, the environment or a log. Over TCP
it is TLS (``DB_SSLMODE``, default verify-full against ``DB_SSLROOTCERT``, the
deploy's CA): direct connections also demand SCRAM channel binding, connections
through PgBouncer (which has none) demand SCRAM itself (``require_auth``). The
postgres superuser has no password: root reaches it by peer authentication over the
Unix socket (:func:`superuser_psql`), as the deploy does.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from donnadb.config import Settings, get_settings
from donnadb.errors import CredentialsError, DatabaseError, PreconditionError

log = logging.getLogger(__name__)


def _passfile_has_role(passfile: Path, role: str) -> bool:
    """True when ``passfile`` holds a line whose user field matches ``role``."""
    for line in passfile.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= 5 and fields[3] in (role, "*"):
            return True
    return False


def tls_params(settings: Settings, *, via_pgbouncer: bool = False,
               channel_binding: bool = True) -> dict[str, str]:
    """libpq's TLS keywords for a connection to ``settings.db_host`` ({} on a socket).

    ``channel_binding=require`` proves the TLS session ends at the server that knows the
    password (no proxy in between); PgBouncer cannot offer it, so through it
    ``require_auth=scram-sha-256`` at least refuses a weaker password exchange.
    ``channel_binding=False`` leaves both out (libpq 15's tools know no require_auth).
    """
    if settings.db_host.startswith("/"):
        return {}
    params = {"sslmode": settings.db_sslmode, "sslrootcert": str(settings.db_sslrootcert)}
    if settings.db_sslmode == "disable":
        return {"sslmode": "disable"}
    if via_pgbouncer:
        if channel_binding:
            params["require_auth"] = "scram-sha-256"
    elif channel_binding:
        params["channel_binding"] = "require"
    return params


def tls_env(settings: Settings, *, via_pgbouncer: bool = False) -> dict[str, str]:
    """:func:`tls_params` as PG* variables, for libpq 15 tools (psql, pg_dump, pgcli):
    channel binding direct, nothing libpq 15 would not know through PgBouncer."""
    names = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
             "channel_binding": "PGCHANNELBINDING"}
    params = tls_params(settings, via_pgbouncer=via_pgbouncer)
    return {names[k]: v for k, v in params.items() if k in names}


def conninfo(
    kind: str = "app",
    *,
    settings: Settings | None = None,
    dbname: str | None = None,
    via_pgbouncer: bool | None = None,
    **extra: object,
) -> str:
    """libpq connection string for the role of ``kind`` (owner|migrator|app|readonly|backup).

    The application role goes through PgBouncer when one is configured, unless
    ``via_pgbouncer`` says otherwise; every other role connects directly.

    :raises CredentialsError: no password is available for that role.
    """
    s = settings or get_settings()
    role = s.role(kind)
    if via_pgbouncer is None:
        via_pgbouncer = kind == "app" and s.pgbouncer_port is not None
    port = s.pgbouncer_port if via_pgbouncer and s.pgbouncer_port else s.db_port
    params: dict[str, object] = {
        "host": s.db_host,
        "port": port,
        "dbname": dbname or s.db_name,
        "user": role,
        "connect_timeout": s.db_connect_timeout,
        "application_name": f"donnadb-{kind}",
    }
    if s.db_password is not None and role == s.db_user:
        params["password"] = s.db_password.get_secret_value()
    elif not s.db_host.startswith("/"):
        passfile = s.db_passfile
        if not os.access(passfile, os.R_OK):
            raise CredentialsError(
                f"cannot read the password file {passfile}; run `make deploy` or set DB_PASSFILE"
            )
        if not _passfile_has_role(passfile, role):
            raise CredentialsError(
                f"no password for role {role} in {passfile}; run `make deploy` to create it"
            )
        params["passfile"] = str(passfile)
    params.update(tls_params(s, via_pgbouncer=bool(via_pgbouncer and s.pgbouncer_port)))
    params.update(extra)
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def connect(kind: str = "app", *, settings: Settings | None = None, **kwargs) -> psycopg.Connection:
    """Open one connection as the role of ``kind``.

    :raises DatabaseError: the server is down or refused the login.
    :raises CredentialsError: no password is available for that role.
    """
    dbname = kwargs.pop("dbname", None)
    info = conninfo(kind, settings=settings, dbname=dbname)
    s = settings or get_settings()
    if kind == "app" and s.pgbouncer_port is not None:
        # PgBouncer's transaction pooling cannot keep server-side prepared statements.
        kwargs.setdefault("prepare_threshold", None)
    try:
        return psycopg.connect(info, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseError(describe_connect_error(exc, info)) from exc


@contextmanager
def connection(kind: str = "app", *, settings: Settings | None = None, **kwargs) -> Iterator[
    psycopg.Connection
]:
    """``with connection("migrator") as conn:`` opens, yields and always closes."""
    conn = connect(kind, settings=settings, **kwargs)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def set_local_role(conn: psycopg.Connection, role: str) -> None:
    """Act as ``role`` until the current transaction ends (``SET LOCAL ROLE``): how the
    migrator does what only the owner of the tables may (DDL, ANALYZE, COMMENT)."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))


def describe_connect_error(exc: psycopg.OperationalError, info: str) -> str:
    """One line naming the problem and the fix, without the password."""
    params = psycopg.conninfo.conninfo_to_dict(info)
    where = f"{params.get('user')}@{params.get('host')}:{params.get('port')}/{params.get('dbname')}"
    # libpq's messages span lines (one per address tried, hints): fold them into one.
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "password authentication failed" in text or "SASL authentication failed" in text:
        hint = "the stored password is stale: run `make deploy` to re-sync role passwords"
    elif any(w in text for w in ("certificate", "SSL", "channel binding", "no encryption",
                                 "sslrootcert")):
        hint = ("TLS: DB_SSLROOTCERT must be the deploy's CA (/etc/donnadb/tls/ca.crt) and "
                "DB_HOST a name in the server certificate; run `make deploy` to renew them")
    elif any(w in text for w in ("Connection refused", "could not connect", "timeout",
                                 "server running")):
        hint = "is PostgreSQL running? try `pg_lsclusters` and `make deploy`"
    elif "too many connections" in text:
        hint = ("the role's CONNECTION LIMIT (group_data's pg_role_connection_limits) or "
                "max_connections is reached: see pg_stat_activity, raise it and `make deploy`")
    elif "does not exist" in text:
        hint = "run `make deploy` to create roles and the database"
    else:
        hint = "check DB_HOST/DB_PORT and pg_hba.conf"
    return f"cannot connect as {where}: {text} ({hint})"


#: The OS user that owns the clusters (Debian's packages): its peer login is the superuser.
CLUSTER_OWNER = "postgres"


def as_cluster_owner(cmd: list[str]) -> list[str]:
    """``cmd`` run as the cluster's owner: through ``runuser`` from root, as is when the
    process already is that user (the backup jobs run as it)."""
    import pwd

    try:
        owner_uid = pwd.getpwnam(CLUSTER_OWNER).pw_uid
    except KeyError:
        raise PreconditionError(f"this host has no {CLUSTER_OWNER} user: run it on the "
                                "database host") from None
    if os.geteuid() == owner_uid:
        return cmd
    return ["runuser", "-u", CLUSTER_OWNER, "--", *cmd]


def superuser_psql(script: str, dbname: str = "postgres", *, port: int | None = None) -> str:
    """Run ``script`` as the postgres superuser (peer); psql's unaligned output.

    :raises DatabaseError: psql failed; the message carries psql's last error line.
    """
    cmd = as_cluster_owner(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", dbname])
    if port:
        cmd += ["-p", str(port)]
    done = subprocess.run(cmd, input=script, capture_output=True, text=True, cwd="/",
                          check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["psql failed"])[-1]
        raise DatabaseError(f"superuser psql on {dbname}: {last}")
    return done.stdout.strip()

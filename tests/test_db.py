"""Connections per role: passfile handling and one-line errors."""

from __future__ import annotations

import socket

import pytest
from psycopg.conninfo import conninfo_to_dict

from donnadb import db
from donnadb.config import load_settings
from donnadb.errors import CredentialsError, DatabaseError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_passfile_is_a_credentials_error(tmp_path):
    s = load_settings(db_passfile=tmp_path / "nope")
    with pytest.raises(CredentialsError, match="make deploy"):
        db.conninfo("app", settings=s)


def test_passfile_without_the_role(tmp_path):
    pf = tmp_path / "pgpass"
    pf.write_text("*:*:*:someone_else:pw\n")
    pf.chmod(0o600)
    with pytest.raises(CredentialsError, match="no password for role donna_app"):
        db.conninfo("app", settings=load_settings(db_passfile=pf))


def test_conninfo_never_contains_a_password(settings):
    info = db.conninfo("migrator", settings=settings)
    assert "password" not in info
    assert "passfile" in info


def test_dead_database_is_one_line(settings):
    s = settings.model_copy(update={"db_port": _closed_port(), "pgbouncer_port": None})
    with pytest.raises(DatabaseError) as exc:
        db.connect("app", settings=s)
    msg = str(exc.value)
    assert "\n" not in msg and "pg_lsclusters" in msg


def test_wrong_password_is_reported(tmp_path, settings):
    pf = tmp_path / "pgpass"
    pf.write_text(f"*:*:*:{settings.db_role_app}:wrong-password\n")
    pf.chmod(0o600)
    s = settings.model_copy(update={"db_passfile": pf})
    # Directly PostgreSQL says "password", through PgBouncer "SASL authentication failed".
    with pytest.raises(DatabaseError, match="(password|SASL) authentication failed"):
        db.connect("app", settings=s)


def test_tcp_connections_verify_the_server_and_bind_or_require_scram(tmp_path):
    pf = tmp_path / "pgpass"
    pf.write_text("*:*:*:donna_app:pw\n*:*:*:donna_readonly:pw\n")
    pf.chmod(0o600)
    s = load_settings(db_passfile=pf, db_host="127.0.0.1", pgbouncer_port=6432)
    direct = conninfo_to_dict(db.conninfo("readonly", settings=s))
    assert direct["sslmode"] == "verify-full"
    assert direct["sslrootcert"] == "/etc/donnadb/tls/ca.crt"
    assert direct["channel_binding"] == "require" and "require_auth" not in direct
    bounced = conninfo_to_dict(db.conninfo("app", settings=s))
    assert bounced["port"] == "6432" and bounced["sslmode"] == "verify-full"
    assert bounced["require_auth"] == "scram-sha-256" and "channel_binding" not in bounced
    # libpq 15's tools (psql, pg_dump): the same through PG* variables, no require_auth.
    assert db.tls_env(s) == {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/etc/donnadb/tls/ca.crt",
                             "PGCHANNELBINDING": "require"}
    assert "PGREQUIREAUTH" not in db.tls_env(s, via_pgbouncer=True)
    # The Unix socket: no TLS keywords at all.
    socket_dir = load_settings(db_passfile=pf, db_host="/var/run/postgresql")
    assert "sslmode" not in conninfo_to_dict(db.conninfo("readonly", settings=socket_dir))
    assert db.tls_env(socket_dir) == {}


def test_a_tls_failure_names_the_ca_and_the_host_name(tmp_path, settings):
    pf = tmp_path / "pgpass"
    pf.write_text(f"*:*:*:{settings.db_role_readonly}:pw\n")
    pf.chmod(0o600)
    s = settings.model_copy(update={"db_passfile": pf, "db_sslrootcert": tmp_path / "none.crt"})
    with pytest.raises(DatabaseError, match="DB_SSLROOTCERT") as exc:
        db.connect("readonly", settings=s)
    assert "\n" not in str(exc.value)

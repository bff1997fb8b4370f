"""TLS over TCP, attacked for real on the deployed host: a client without TLS, with a
CA of its own, or dialling a name the certificate does not hold is refused; our own
clients (the DAL, donnactl, the backup tools' libpq, PgBouncer's server side) really
use TLS 1.2 or newer; and nothing of a login or a query is readable on the wire."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from donnadb import db
from donnadb.backup import pgtools
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.provision import ca
from tests.wirecapture import Capture

pytestmark = pytest.mark.deploy

DONNACTL = str(Path(sys.executable).with_name("donnactl"))
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
SSL_SQL = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _params(settings, kind: str, via_pgbouncer: bool) -> dict[str, str]:
    return conninfo_to_dict(db.conninfo(kind, settings=settings, via_pgbouncer=via_pgbouncer))


def _connect(params: dict[str, object]) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(**params), autocommit=True, prepare_threshold=None)


TARGETS = [pytest.param(("readonly", False), id="postgresql"),
           pytest.param(("app", True), id="pgbouncer")]


@pytest.fixture
def target(request, deployed, settings):
    kind, via = request.param
    return _params(settings, kind, via)


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_our_parameters_connect(target):
    """The control for the refusals below: the very same parameters, unchanged, get in."""
    assert target["sslmode"] == "verify-full"
    with _connect(target) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_a_client_without_tls_is_refused(target):
    plain = {k: v for k, v in target.items()
             if k not in ("sslrootcert", "channel_binding", "require_auth")}
    plain["sslmode"] = "disable"
    with pytest.raises(psycopg.OperationalError,
                       match=r"no encryption|SSL required|TLS required"):
        _connect(plain).close()


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_a_client_trusting_another_ca_is_refused(target, tmp_path):
    other = tmp_path / "other-ca.crt"
    other.write_text(ca.new_ca("not the deploy's CA").cert_pem)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect({**target, "sslrootcert": str(other)}).close()


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_a_client_dialling_a_name_not_in_the_certificate_is_refused(target):
    wrong = {**target, "host": "wrong.example", "hostaddr": "127.0.0.1"}
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _connect(wrong).close()


def test_channel_binding_is_required_and_works_direct(deployed, settings):
    params = _params(settings, "readonly", False)
    assert params["channel_binding"] == "require"
    with _connect(params) as conn:
        ssl, version = conn.execute(SSL_SQL).fetchone()
        assert ssl is True and version in TLS_VERSIONS


def test_the_dal_and_db_connections_use_tls(deployed, settings):
    with db.connection("readonly", settings=settings, autocommit=True) as conn:
        ssl, version = conn.execute(SSL_SQL).fetchone()
        assert ssl is True and version in TLS_VERSIONS
    # The application's path: client -> PgBouncer over TLS, PgBouncer -> PostgreSQL too.
    with PostgresDataAccess(settings) as dal, dal._pool.connection() as conn:
        assert conn.pgconn.ssl_in_use
        ssl, version = conn.cursor(row_factory=tuple_row).execute(SSL_SQL).fetchone()
        assert ssl is True and version in TLS_VERSIONS


def test_donnactl_shell_and_the_backup_tools_use_tls(deployed, settings):
    """psql started by `donnactl shell` and by the backup code (libpq 15, not psycopg's)."""
    query = f"{SSL_SQL.replace('ssl,', 'ssl::text,')}"
    shell = subprocess.run([DONNACTL, "shell", "--psql", "--", "-XAt", "-c", query],
                           capture_output=True, text=True, check=False, cwd="/")
    assert shell.returncode == 0, shell.stderr
    ssl, version = shell.stdout.strip().split("|")
    assert ssl == "true" and version in TLS_VERSIONS
    env = pgtools.libpq_env(settings, settings.role("backup"), settings.db_name)
    assert env["PGSSLMODE"] == "verify-full" and env["PGCHANNELBINDING"] == "require"
    done = subprocess.run(["psql", "-XAt", "-w", "-c", query], env=env, capture_output=True,
                          text=True, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {f"true|{v}" for v in TLS_VERSIONS}


# --- the sniffed wire -------------------------------------------------------------------
def _plain_echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(1024))

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _endpoint(params: dict[str, str]) -> tuple[str, int]:
    return params.get("hostaddr") or params["host"], int(params["port"])


def _sniff_logins(settings, path: Path, marker: str, plain_marker: bytes) -> Capture:
    """Log in and query as two roles (direct and through PgBouncer) and send a clear-text
    control to an echo server, all inside one capture."""
    _, plain_port = _plain_echo_server()
    logins = [_params(settings, "readonly", False), _params(settings, "app", True)]
    endpoints = [_endpoint(params) for params in logins] + [("127.0.0.1", plain_port)]
    with Capture(path, endpoints) as capture:
        for params in logins:
            # A fresh login each: the SCRAM exchange happens inside the capture.
            with _connect(params) as conn:
                assert conn.execute("SELECT %s::text", (marker,)).fetchone() == (marker,)
                assert conn.execute(f"SELECT '{marker}'").fetchone() == (marker,)  # noqa: S608
        with socket.create_connection(("127.0.0.1", plain_port)) as plain:
            plain.sendall(plain_marker)
            assert plain.recv(1024) == plain_marker
        capture.wait_for(plain_marker)
    return capture


def test_nothing_of_a_login_or_a_query_is_readable_on_the_wire(deployed, settings, tmp_path):
    marker = f"sniffme_{uuid.uuid4().hex}"
    plain_marker = f"plaintext_{uuid.uuid4().hex}".encode()
    roles = [settings.role("readonly"), settings.role("app")]
    # A capture the kernel dropped packets from is no evidence: take another (at most 3).
    for attempt in range(3):
        capture = _sniff_logins(settings, tmp_path / f"lo-{attempt}.pcap", marker, plain_marker)
        if capture.complete:
            break
    wire = capture.data()
    assert capture.complete, f"every capture lost packets ({capture.dropped} dropped by the kernel)"
    # The control: the capture does see what is sent in clear.
    assert plain_marker in wire
    assert marker.encode() not in wire
    assert b"SCRAM-SHA-256" not in wire
    assert b"n,,n=" not in wire and b"p=tls-server-end-point" not in wire
    for role in roles:
        assert role.encode() not in wire, role
    assert settings.db_name.encode() + b"\x00" not in wire  # no startup packet in clear

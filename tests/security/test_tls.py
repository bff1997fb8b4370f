"""TLS over TCP, attacked for real on the deployed host: a client without TLS, with a
CA of its own, or dialling a name the certificate does not hold is refused; our own
clients (the DAL, donnactl, the backup tools' libpq, PgBouncer's server side) really
use TLS 1.2 or newer; and nothing of a login or a query is readable on the wire."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
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
class Capture:
    """``tcpdump -i lo`` of some TCP ports into a file, for the length of a ``with``."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        expr = " or ".join(f"tcp port {p}" for p in ports)
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U",
                                      "-w", str(path), expr], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Capture:
        # tcpdump says "listening on lo" once its filter is installed; --immediate-mode
        # hands over every packet at once (not in blocks a stop would drop), -U writes it.
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # let the last packets reach the file
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)

    def wait_for(self, seen: bytes, timeout: float = 15.0) -> None:
        """Until ``seen`` is in the file (a busy host hands packets over late), at most
        ``timeout`` seconds; the caller's assertion then decides."""
        deadline = time.monotonic() + timeout
        while seen not in self.data() and time.monotonic() < deadline:
            time.sleep(0.2)

    def data(self) -> bytes:
        return self.path.read_bytes()


def _plain_echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(1024))

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_nothing_of_a_login_or_a_query_is_readable_on_the_wire(deployed, settings, tmp_path):
    marker = f"sniffme_{uuid.uuid4().hex}"
    plain_marker = f"plaintext_{uuid.uuid4().hex}".encode()
    _, plain_port = _plain_echo_server()
    roles = [settings.role("readonly"), settings.role("app")]
    with Capture(tmp_path / "lo.pcap", [settings.db_port, settings.pgbouncer_port,
                                        plain_port]) as capture:
        for kind, via in (("readonly", False), ("app", True)):
            # A fresh login each: the SCRAM exchange happens inside the capture.
            with _connect(_params(settings, kind, via)) as conn:
                assert conn.execute("SELECT %s::text", (marker,)).fetchone() == (marker,)
                assert conn.execute(f"SELECT '{marker}'").fetchone() == (marker,)  # noqa: S608
        with socket.create_connection(("127.0.0.1", plain_port)) as plain:
            plain.sendall(plain_marker)
            assert plain.recv(1024) == plain_marker
        capture.wait_for(plain_marker)
    wire = capture.data()
    # The control: the capture does see what is sent in clear.
    assert plain_marker in wire
    assert marker.encode() not in wire
    assert b"SCRAM-SHA-256" not in wire
    assert b"n,,n=" not in wire and b"p=tls-server-end-point" not in wire
    for role in roles:
        assert role.encode() not in wire, role
    assert settings.db_name.encode() + b"\x00" not in wire  # no startup packet in clear


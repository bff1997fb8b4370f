"""pg_hba per role: from another machine the application gets in only through PgBouncer,
and the migrator and backup roles not at all, even from an allowed network.

"Another machine" is a TCP relay whose outgoing connections leave from 127.0.0.9, so
the server sees that client address, inside a network the deploy is told to allow.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import psycopg
import pytest

from donnadb import db
from tests.provision.deployrun import run_deploy

pytestmark = pytest.mark.deploy

ELSEWHERE = "127.0.0.9"
NETWORKS = ["127.0.0.1/32", "::1/128", "127.0.0.0/8"]


class Relay:
    """Accept on 127.0.0.1:<port>; connect to ``target`` from ``source``; pump bytes."""

    def __init__(self, target: tuple[str, int], source: str):
        self.target, self.source = target, source
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target, timeout=10,
                                                source_address=(self.source, 0))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture(scope="module")
def open_network(deployed):
    """The deploy run again with 127.0.0.0/8 allowed, then put back as it was."""
    run = run_deploy(data={"pg_hba_networks": json.dumps(NETWORKS)})
    assert run.returncode == 0, run.output[-3000:]
    try:
        yield
    finally:
        back = run_deploy()
        assert back.returncode == 0, back.output[-3000:]


def _connect_through(relay: Relay, kind: str, settings, via_pgbouncer: bool):
    info = db.conninfo(kind, settings=settings, via_pgbouncer=via_pgbouncer,
                       host="127.0.0.1", port=relay.port)
    return psycopg.connect(info, prepare_threshold=None, connect_timeout=10)


@pytest.fixture
def relay_to(settings):
    relays = []

    def make(port: int) -> Relay:
        relays.append(Relay(("127.0.0.1", port), ELSEWHERE))
        return relays[-1]

    yield make
    for relay in relays:
        relay.close()


def test_from_elsewhere_readonly_gets_in_but_not_app_migrator_or_backup(
        settings, open_network, relay_to):
    relay = relay_to(settings.db_port)
    with _connect_through(relay, "readonly", settings, False) as conn:
        seen = conn.execute("SELECT host(inet_client_addr())").fetchone()[0]
        assert seen == ELSEWHERE  # the server really saw the other address
    for kind in ("app", "migrator", "backup"):
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            _connect_through(relay, kind, settings, False)


def test_from_elsewhere_the_app_gets_in_through_pgbouncer(settings, open_network, relay_to):
    relay = relay_to(settings.pgbouncer_port)
    with _connect_through(relay, "app", settings, True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == settings.db_role_app

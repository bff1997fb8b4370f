"""A load-test process opens its connections before its users start.

Otherwise the first requests wait for the pool to grow, one connection's TLS and SCRAM
set-up after another: on a busy host that is about a second, and those still running
when ``--reset-stats`` clears the ramp-up land in the measured stats (the fleet's
p99 was a second). The locustfile is driven in a child process, since importing it
monkey-patches the interpreter for gevent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb.dal import PostgresDataAccess
from donnadb.errors import DatabaseError
from donnadb.loadtest import workload as wl
from tests.loadtest.conftest import PGBOUNCER_PORT

ROOT = Path(__file__).resolve().parents[2]
POOL = 6

#: test_start as Locust fires it in a process that runs users, before the first spawns.
TEST_START = """
import argparse, json, sys
from donnadb.loadtest import locustfile
from donnadb.loadtest import workload as wl
from locust.env import Environment

opts = argparse.Namespace(donna_dbname=sys.argv[1], donna_pgbouncer_port=int(sys.argv[2]),
                          donna_pool_size=int(sys.argv[3]), donna_request_log="")
env = Environment(user_classes=[locustfile.ChatUser], events=locustfile.events,
                  parsed_options=opts)
env.create_local_runner()
env.events.test_start.fire(environment=env)
print(json.dumps(wl._shared.dal.health_check()["pool"] if wl._shared else None))
wl.close_shared()
"""


def _pool_at_test_start(dbname: str) -> dict | None:
    out = subprocess.run([sys.executable, "-c", TEST_START, dbname, str(PGBOUNCER_PORT),
                          str(POOL)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_through_pgbouncer_every_connection_is_open_before_the_users_start(seeded_db):
    pool = _pool_at_test_start(seeded_db)
    assert pool is not None, "test_start opened no workload"
    assert pool["size"] == POOL


def test_direct_the_pool_opens_a_few_and_grows_with_the_load(seeded_db):
    # Each direct connection is a server backend: opening pool_size of them per process
    # could pass max_connections where the load never needs them.
    work = wl.open_workload(dbname=seeded_db, pgbouncer_port=None, pool_size=POOL + 10)
    try:
        assert work.dal.health_check()["pool"]["size"] <= 4
    finally:
        work.close()


def test_a_pool_that_cannot_open_says_so(settings):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(update={"db_port": port, "pgbouncer_port": None})
    dal = PostgresDataAccess(dead, min_size=2)
    try:
        with pytest.raises(DatabaseError, match="did not open its 2 connections within 1s"):
            dal.wait_ready(timeout=1)
    finally:
        dal.close()

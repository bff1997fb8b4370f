"""No session of the application (or a read-only login) can hold a lock, a transaction
or a connection for ever: the deployed role settings, checked and felt for real."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from donnadb import db
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data
from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

HOLD_LOCK = "BEGIN; LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30);"
LOCK_HELD = ("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
             "AND granted AND relation = 'public.users'::regclass")


@pytest.mark.parametrize("kind, via_pgbouncer", [("app", False), ("app", True),
                                                 ("readonly", False)])
def test_every_session_of_the_role_carries_its_limits(settings, deployed, kind,
                                                      via_pgbouncer):
    wanted = dict(load_deploy_settings(load_group_data()).roles[kind].settings)
    assert wanted, f"group_data sets no limits for {kind}"
    info = db.conninfo(kind, settings=settings, via_pgbouncer=via_pgbouncer)
    with psycopg.connect(info, prepare_threshold=None) as conn:
        for name, value in wanted.items():
            shown = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = %s",
                                 [name]).fetchone()[0]  # in milliseconds
            assert shown == _milliseconds(value), (kind, name, shown)


def _milliseconds(value: str) -> int:
    number = int("".join(c for c in value if c.isdigit()))
    unit = value.lstrip("0123456789").strip() or "ms"
    return number * {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]


def test_the_app_gives_up_on_a_lock_instead_of_queueing_for_ever(connect_as, scratch_db,
                                                                 deployed):
    app = connect_as("app", dbname=scratch_db)
    # A session of the superuser's own holds the table until it is killed.
    blocker = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-d", scratch_db, "-c",
         HOLD_LOCK], cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while superuser_psql(LOCK_HELD, dbname=scratch_db) == "0":
            assert time.monotonic() < deadline, "the blocker never took its lock"
            time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            app.execute("SELECT count(*) FROM public.users")
        assert time.monotonic() - started < 15
    finally:
        blocker.kill()
        blocker.wait()


def test_every_login_role_has_the_connection_limit_of_group_data(deployed):
    deploy = load_deploy_settings(load_group_data())
    for kind in ("app", "readonly", "migrator", "backup"):
        spec = deploy.roles[kind]
        shown = superuser_psql(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{spec.name}'")
        assert int(shown) == spec.connlimit, kind
    # A runaway application cannot take every server connection.
    assert 0 < deploy.roles["app"].connlimit < deploy.pg_max_connections

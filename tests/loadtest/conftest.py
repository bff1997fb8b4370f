"""Fixtures for the load-test tests: a scratch database, seeded tiny, behind PgBouncer."""

from __future__ import annotations

import pytest

from donnadb.loadtest import seed
from donnadb.provision.bootstrap import auth_sql
from donnadb.provision.pgbouncer import DEFAULTS
from tests.support import superuser_psql

PGBOUNCER_PORT = DEFAULTS["pgbouncer_port"]
#: A smaller data set than the CI scale: the tests need shape, not volume.
TEST_SCALE = seed.Scale(users=100, sessions=400, messages=6_000)


def install_lookup(settings, dbname: str) -> None:
    """What the deploy does for its database, so PgBouncer's `*` entry can log us in."""
    sql, _ = auth_sql(DEFAULTS["pgbouncer_auth_user"],
                      [settings.db_role_app, settings.db_role_readonly])
    superuser_psql(sql, dbname=dbname)


@pytest.fixture
def seeded_db(settings, scratch_db):
    """A migrated scratch database with the lookup function and TEST_SCALE seeded."""
    install_lookup(settings, scratch_db)
    seed.seed(settings, TEST_SCALE, dbname=scratch_db)
    return scratch_db


@pytest.fixture
def sealed_seeded_db(settings, sealed_settings, scratch_db):
    """A migrated scratch database with the lookup function and the ``ci`` scale seeded
    with field encryption on (``sealed_settings``' key file)."""
    install_lookup(settings, scratch_db)
    seed.seed(sealed_settings, seed.SCALES["ci"], dbname=scratch_db)
    return scratch_db

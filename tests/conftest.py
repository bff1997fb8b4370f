"""Fixtures shared by every test. The database is the real deployed PostgreSQL."""

from __future__ import annotations

import os

import pytest

from donnadb import db
from donnadb.config import Settings, load_settings
from tests.support import (
    create_scratch_database,
    crypto_settings,
    drop_database_and_copies,
    plain_settings,
)

#: The fleet suite boots test hosts: `make test-hosts` runs it, the plain suite does not.
collect_ignore = [] if os.environ.get("DONNADB_FLEET") == "1" else ["fleet"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings as the deployed host sees them (/etc/donnadb/donnadb.env)."""
    return load_settings()


@pytest.fixture(scope="session")
def deployed():
    """The host after a deploy (whatever it changed); fails the tests if it failed."""
    from tests.provision.deployrun import run_deploy

    run = run_deploy()
    assert run.returncode == 0, run.output[-4000:]
    return run


@pytest.fixture(scope="session")
def deploy_settings():
    """The deploy's settings for this host, from group_data/all.py."""
    from donnadb.provision.settings import load_deploy_settings
    from tests.provision.deployrun import load_group_data
    from tests.support import GroupData

    return load_deploy_settings(GroupData(load_group_data()))


@pytest.fixture
def connect_as(settings):
    """``connect_as("app", dbname=...)`` opens a connection that is closed after the test."""
    opened = []

    def _connect(kind: str = "app", **kwargs):
        conn = db.connect(kind, settings=settings, **kwargs)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def empty_db(settings):
    """A bootstrapped database with no migrations applied; dropped afterwards."""
    name = create_scratch_database(settings)
    yield name
    drop_database_and_copies(name)


@pytest.fixture
def scratch_db(settings, empty_db):
    """A bootstrapped database with every migration applied; dropped afterwards."""
    from donnadb.migrate import apply_migrations

    apply_migrations(settings=settings, dbname=empty_db)
    return empty_db


@pytest.fixture
def kek_file(tmp_path):
    """A field-encryption key file (CRYPTO_KEK_FILE, 0600) for one test."""
    from donnadb.crypto import keyfile

    path = tmp_path / "fields.key"
    keyfile.generate(path)
    return path


@pytest.fixture
def clear_settings(settings):
    """``settings`` with field encryption off (tests/support.py ``plain_settings``)."""
    return plain_settings(settings)


@pytest.fixture
def sealed_settings(settings, kek_file):
    """``settings`` with field encryption on, with the keys of ``kek_file``."""
    return crypto_settings(settings, kek_file)


@pytest.fixture(scope="session")
def patroni_cluster():
    """A real local Patroni cluster (etcd + three nodes, tests/cluster/localcluster.py),
    booted by the first test that asks for it; stopped and removed at the end."""
    import shutil

    from tests.cluster import localcluster

    cluster = localcluster.boot()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)

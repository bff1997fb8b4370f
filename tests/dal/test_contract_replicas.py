"""The contract suite, unchanged, against PostgreSQL reading from a streaming hot standby
(DB_READ_FROM=replicas through DB_READ_PORT; tests/dal/replicas.py)."""

from __future__ import annotations

import pytest

from donnadb.dal import PostgresDataAccess
from tests.dal.test_contract import *  # noqa: F403 (the same tests, collected again here)


@pytest.fixture
def dal(settings, replica_db):
    store = PostgresDataAccess(replica_db.settings(settings), dbname=replica_db.dbname)
    yield store
    store.close()

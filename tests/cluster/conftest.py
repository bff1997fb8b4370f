"""Fixtures of the cluster tests over the real local Patroni cluster (``patroni_cluster``
in tests/conftest.py, booted once for the session by the first test that asks for it)."""

from __future__ import annotations

import pytest

from tests.ops.conftest import cli  # noqa: F401  (the donnactl runner, shared)


@pytest.fixture
def healthy(patroni_cluster):
    """The cluster with every node running and streaming (restarts a node a test killed)."""
    patroni_cluster.heal()
    return patroni_cluster


@pytest.fixture
def in_cluster(healthy):
    """Environment for donnactl on node1 of the healthy cluster."""
    return {"PATRONI_CONFIG": str(healthy.config), "PATRONI_SWITCH_TIMEOUT_S": "40"}

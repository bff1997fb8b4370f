"""Fixtures of the cluster tests: a real local Patroni cluster (etcd + three nodes),
booted once for the session by the first test that asks for it."""

from __future__ import annotations

import shutil

import pytest

from tests.cluster import localcluster
from tests.ops.conftest import cli  # noqa: F401  (the donnactl runner, shared)


@pytest.fixture(scope="session")
def patroni_cluster():
    """The running local cluster; stopped and removed at the end of the session."""
    cluster = localcluster.boot()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def healthy(patroni_cluster):
    """The cluster with every node running and streaming (restarts a node a test killed)."""
    for name in localcluster.NODE_HOSTS:
        if name not in patroni_cluster.procs:
            patroni_cluster.start_node(name)
    patroni_cluster.wait_healthy()
    return patroni_cluster


@pytest.fixture
def in_cluster(healthy):
    """Environment for donnactl on node1 of the healthy cluster."""
    return {"PATRONI_CONFIG": str(healthy.config), "PATRONI_SWITCH_TIMEOUT_S": "40"}

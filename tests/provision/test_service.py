"""Starting, restarting and reloading a cluster with pg_ctlcluster (the path without
systemd; where systemd runs, pg_ctlcluster hands the same actions to its unit)."""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from donnadb.provision.facts import SystemdRunning
from donnadb.provision.service import cluster_signalled, cluster_started
from tests.support import systemd_running

VERSION, CLUSTER, PORT = 15, "donna_svc_test", 5471


def _run(op, **kwargs) -> bool:
    """Run one operation on @local through pyinfra's API; True when it changed something."""
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    results = add_op(state, op, **kwargs)
    run_ops(state)
    meta = next(iter(results.values()))
    assert meta.did_succeed()
    return meta.did_change()


def _status() -> str:
    out = subprocess.run(["pg_lsclusters", "--no-header", str(VERSION), CLUSTER],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[3]


@pytest.fixture
def stopped_cluster():
    subprocess.run(["pg_createcluster", str(VERSION), CLUSTER, "-p", str(PORT)],
                   capture_output=True, check=True)
    yield
    subprocess.run(["pg_dropcluster", "--stop", str(VERSION), CLUSTER], capture_output=True,
                   check=False)


def test_the_systemd_fact_is_true_exactly_where_systemd_is_pid_1():
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    host = next(iter(state.inventory))
    assert host.get_fact(SystemdRunning) is systemd_running()


def test_cluster_is_started_once_and_signalled_only_when_running(stopped_cluster):
    assert _status() == "down"
    # Nothing to restart or reload while it is down.
    assert _run(cluster_signalled, version=VERSION, cluster=CLUSTER, action="restart") is False
    assert _run(cluster_started, version=VERSION, cluster=CLUSTER) is True
    assert _status() == "online"
    assert _run(cluster_started, version=VERSION, cluster=CLUSTER) is False
    assert _run(cluster_signalled, version=VERSION, cluster=CLUSTER, action="reload") is True
    assert _run(cluster_signalled, version=VERSION, cluster=CLUSTER, action="restart") is True
    assert _status() == "online"

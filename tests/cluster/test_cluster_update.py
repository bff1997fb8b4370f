"""`donnactl cluster update` on the real local Patroni cluster: the plan and the refusals.

The three nodes run this machine's binaries, so they cannot end on different versions:
what is tested here is what needs none (a replica's plan, the leader's refusals, which
change nothing). The host's packages are put on the older minor version first (without
restarting anything), so the update has something to do; tests/ops/test_update.py
updates a host for real, tests/fleet/ha/test_update.py a whole cluster.
"""

from __future__ import annotations

import json
import subprocess
import time

import psycopg
import pytest

from donnadb.ops.update import upstream
from tests.cluster.localcluster import SCOPE
from tests.support import (
    apt_policy,
    install_server_packages,
    older_server_version,
    one_line_error,
)

pytestmark = pytest.mark.minor_update
START_SQL = "SELECT pg_postmaster_start_time()"


@pytest.fixture(scope="module")
def old_packages():
    """This host's server packages on the older version (nothing restarted)."""
    old = older_server_version()
    if old is None:
        pytest.skip("apt offers no postgresql-15 older than its candidate to go back to")
    install_server_packages(old)
    return old


@pytest.fixture
def readonly_role(healthy, settings):
    """The readonly role in the local cluster, reading every session (as deployed):
    `update` reads the leader's open transactions with it, through the socket (trust)."""
    role = settings.db_role_readonly
    healthy.sql(healthy.leader(), f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN "
                                  f"duplicate_object THEN NULL; END $$; "
                                  f"GRANT pg_read_all_stats TO {role}")
    return role


def _env(cluster, name: str) -> dict[str, str]:
    """donnactl as it runs on member ``name``: its Patroni configuration, and DB_HOST
    reaching its own PostgreSQL."""
    return {"PATRONI_CONFIG": str(cluster.config_path(name)),
            "DB_HOST": str(cluster.root / "sock" / name), "DB_PORT": "5432",
            "DB_NAME": "postgres"}


def _role(cluster, role: str) -> str:
    return next(m["name"] for m in cluster.members() if m["role"] == role)


def _versions(cluster) -> dict[str, str]:
    out = subprocess.run(["patronictl", "-c", str(cluster.config), "version", SCOPE],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return {ln.split(":")[0]: ln.rsplit(" ", 1)[-1] for ln in out.splitlines()
            if "PostgreSQL" in ln}


def test_a_replicas_dry_run_plans_its_restart_and_changes_nothing(cli, healthy, old_packages,
                                                                  readonly_role):
    replica = _role(healthy, "replica")
    before = {m["name"]: healthy.sql(m["name"], START_SQL) for m in healthy.members()}
    run = cli("cluster", "update", "--dry-run", "--json", env=_env(healthy, replica))
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    assert plan["mode"] == "replica" and plan["member"] == replica
    assert plan["dry_run"] is True and plan["switchover"] is None
    assert plan["steps"][0].startswith("apt-get install") and plan["steps"][-1] == (
        f"patronictl restart of {replica}")
    assert apt_policy("postgresql-15")[0] == old_packages
    assert {m["name"]: healthy.sql(m["name"], START_SQL) for m in healthy.members()} == before


def test_the_leader_refuses_while_a_replica_runs_an_older_version(cli, healthy, old_packages,
                                                                   readonly_role):
    # The replicas on the older binaries now installed (a restart through Patroni).
    for name, version in _versions(healthy).items():
        if name != healthy.leader() and version != upstream(old_packages):
            subprocess.run(["patronictl", "-c", str(healthy.config), "restart", SCOPE, name,
                            "--force"], check=True, capture_output=True, timeout=120)
    healthy.wait_healthy()
    leader = healthy.leader()
    started = healthy.sql(leader, START_SQL)
    for flags in (["--dry-run"], ["--yes"]):
        run = cli("cluster", "update", *flags, env=_env(healthy, leader))
        one_line_error(run, 14, f"this host ({leader}) is the leader",
                        "update the replicas first")
    assert healthy.leader() == leader and healthy.sql(leader, START_SQL) == started
    assert apt_policy("postgresql-15")[0] == old_packages


def test_a_long_transaction_on_the_leader_refuses(cli, healthy, old_packages, readonly_role):
    leader = healthy.leader()
    with psycopg.connect(host=str(healthy.root / "sock" / leader), user="postgres",
                         dbname="postgres") as held:
        held.execute("SELECT txid_current()")  # an open transaction from here
        pid = held.info.backend_pid
        time.sleep(1.5)
        run = cli("cluster", "update", "--yes",
                  env={**_env(healthy, leader), "UPDATE_MAX_XACT_AGE_S": "1"})
    one_line_error(run, 14, f"on the leader {leader}", f"pid {pid}",
                    "UPDATE_MAX_XACT_AGE_S=1")
    assert healthy.leader() == leader


def test_a_missing_member_refuses(cli, healthy, old_packages, readonly_role):
    replica, sync = _role(healthy, "replica"), _role(healthy, "sync_standby")
    healthy.kill_node(replica)
    deadline = time.monotonic() + 40
    while any(m["name"] == replica and m["state"] in ("running", "streaming")
              for m in healthy.members()):
        assert time.monotonic() < deadline, "Patroni still shows the killed member running"
        time.sleep(0.5)
    run = cli("cluster", "update", "--dry-run", env=_env(healthy, sync))
    one_line_error(run, 14, replica if "PATRONI_EXPECTED" not in run.stderr else "2 of",
                    "then run the update again")

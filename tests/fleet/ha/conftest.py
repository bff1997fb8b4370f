"""The cluster: three fresh Debian 12 database hosts (one Patroni cluster) and an
application host, deployed over SSH from this machine with group_data ``ha = True``.

Booted once for this directory (``make test-hosts``), deployed twice with
``pyinfra tests/fleet/ha/inventory.py deploy.py``; powered off and deleted at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from tests.hosts import machine
from tests.provision.deployrun import DeployRun, deploy_twice

INVENTORY = "tests/fleet/ha/inventory.py"
DB = [("db1", "127.0.0.21"), ("db2", "127.0.0.22"), ("db3", "127.0.0.23")]
APP = ("app2", "127.0.0.24")
MEMORY_MB = 2048
CPUS = 1
DEPLOY_TIMEOUT = 25 * 60
PATRONICTL = "patronictl -c /etc/patroni/15-main.yml"


@dataclass
class Cluster:
    members: list[machine.Host]
    app: machine.Host
    env: dict[str, str]
    first: DeployRun
    second: DeployRun

    def member(self, name: str) -> machine.Host:
        return next(m for m in self.members if m.name == name)

    def state(self) -> list[dict]:
        """``patronictl list`` of the cluster, asked on any member that answers."""
        for member in self.members:
            done = member.run(f"{PATRONICTL} list --format json", check=False)
            if done.returncode == 0:
                return json.loads(done.stdout)
        raise AssertionError("no member's patronictl answers")

    def leader(self) -> str:
        return next(m["Member"] for m in self.state() if m["Role"] == "Leader")

    def wait(self, healthy, timeout: float = 180.0, what: str = "the cluster") -> list[dict]:
        """Poll :meth:`state` until ``healthy(state)`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        state: list[dict] = []
        while time.monotonic() < deadline:
            try:
                state = self.state()
            except AssertionError:
                state = []
            if state and healthy(state):
                return state
            time.sleep(2)
        raise AssertionError(f"{what} not reached in {timeout:.0f} s: {state}")


def all_streaming(state: list[dict]) -> bool:
    """One leader, every other member a running replica that has caught up, one of them
    synchronous (Patroni 3.0 shows a streaming replica as "running")."""
    leaders = [m for m in state if m["Role"] == "Leader" and m["State"] == "running"]
    others = [m for m in state if m["Role"] != "Leader"]
    return (len(state) == len(DB) and len(leaders) == 1
            and all(m["State"] in ("running", "streaming") and m.get("Lag in MB") == 0
                    for m in others)
            and any(m["Role"] == "Sync Standby" for m in others))


@pytest.fixture(scope="package")
def cluster(tmp_path_factory) -> Cluster:
    with machine.fleet([*DB, APP]) as hosts:
        *members, app = hosts
        state = machine.STATE_DIR
        spec = {
            "db": DB, "app": APP, "ssh_user": machine.SSH_USER,
            "ssh_key": str(state / "ssh" / "id_ed25519"),
            "known_hosts": str(machine.known_hosts(hosts, "known_hosts-cluster")),
            "ca_dir": str(tmp_path_factory.mktemp("cluster-ca")),
            "memory_mb": MEMORY_MB, "cpus": CPUS,
        }
        spec_file = state / "cluster.json"
        spec_file.write_text(json.dumps(spec))
        env = {"DONNADB_CLUSTER_FILE": str(spec_file)}
        runs = deploy_twice(inventory=INVENTORY, env=env,
                            hosts=[name for name, _ in [*DB, APP]], log_dir=state,
                            log_name="cluster-deploy", timeout=DEPLOY_TIMEOUT)
        cluster = Cluster(members, app, env, *runs)
        cluster.wait(all_streaming, what="a leader and two streaming replicas")
        yield cluster

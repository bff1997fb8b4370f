"""The cluster: three fresh Debian 12 database hosts (one Patroni cluster) and an
application host, deployed over SSH from this machine with group_data ``ha = True``.

Booted once for this directory (``make test-hosts``), deployed twice with
``pyinfra tests/fleet/ha/inventory.py deploy.py``; powered off and deleted at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests import s3tls
from tests.fleet.logins import wait_for_logins
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


#: The cluster's bucket (moto's S3 over TLS in this process, which the test hosts reach
#: at 127.0.0.1: they share this machine's network): pgBackRest's shared repository and
#: the logical backups' off-site copies.
S3_BUCKET = "donna-cluster-backups"
#: On every member: the CA of that server, and the operator's key file for pgBackRest
#: (moto takes any key).
S3_CA_FILE = "/etc/ssl/donna-test-s3-ca.crt"
S3_KEY_FILE = "/etc/pgbackrest/conf.d/donna-repo2-s3-key.conf"
S3_KEY = "testing"


@pytest.fixture(scope="package")
def cluster_s3(tmp_path_factory):
    """The bucket's server, for the whole directory: (endpoint, boto3 client)."""
    server = s3tls.Server(tmp_path_factory.mktemp("cluster-s3"))
    endpoint = server.start()
    client = boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                          verify=str(endpoint.ca_file), aws_access_key_id=S3_KEY,
                          aws_secret_access_key=S3_KEY)
    client.create_bucket(Bucket=S3_BUCKET)
    yield endpoint, client
    server.stop()


def carry_s3_files(member: machine.Host, ca_file: Path) -> None:
    """What the operator puts on a member before the deploy: the S3 server's CA and
    pgBackRest's key file (the deploy makes it postgres' own)."""
    (member.root / S3_CA_FILE.lstrip("/")).write_bytes(ca_file.read_bytes())
    keys = member.root / S3_KEY_FILE.lstrip("/")
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.touch(mode=0o600)
    keys.write_text(f"[global]\nrepo2-s3-key={S3_KEY}\nrepo2-s3-key-secret={S3_KEY}\n")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory, cluster_s3) -> Cluster:
    endpoint, _ = cluster_s3
    with machine.fleet([*DB, APP]) as hosts:
        *members, app = hosts
        for member in members:
            carry_s3_files(member, endpoint.ca_file)
        state = machine.STATE_DIR
        spec = {
            "db": DB, "app": APP, "ssh_user": machine.SSH_USER,
            "ssh_key": str(state / "ssh" / "id_ed25519"),
            "known_hosts": str(machine.known_hosts(hosts, "known_hosts-cluster")),
            "ca_dir": str(tmp_path_factory.mktemp("cluster-ca")),
            "memory_mb": MEMORY_MB, "cpus": CPUS,
            "s3": {"bucket": S3_BUCKET, "endpoint_url": endpoint.url, "ca_file": S3_CA_FILE},
        }
        spec_file = state / "cluster.json"
        spec_file.write_text(json.dumps(spec))
        wait_for_logins(hosts, key_file=spec["ssh_key"], known_hosts=spec["known_hosts"])
        env = {"DONNADB_CLUSTER_FILE": str(spec_file)}
        runs = deploy_twice(inventory=INVENTORY, env=env,
                            hosts=[name for name, _ in [*DB, APP]], log_dir=state,
                            log_name="cluster-deploy", timeout=DEPLOY_TIMEOUT)
        cluster = Cluster(members, app, env, *runs)
        cluster.wait(all_streaming, what="a leader and two streaming replicas")
        yield cluster

"""The fleet: fresh Debian 12 hosts with systemd, deployed over SSH from this machine.

``make test-hosts`` runs this directory (DONNADB_FLEET=1; the plain suite leaves it
out). One session boots a database host and an application host
(tests/hosts/machine.py), deploys both with ``pyinfra tests/fleet/inventory.py
deploy.py`` as the hosts' operator account through sudo, deploys again, and hands the
tests the booted hosts and both runs. The hosts are powered off and deleted at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet.logins import connect, wait_for_logins
from tests.hosts import machine
from tests.provision.deployrun import DeployRun, deploy_twice

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = "tests/fleet/inventory.py"
DB = ("db1", "127.0.0.11")
APP = ("app1", "127.0.0.12")
#: Each host's budget (inventory host_memory_mb/host_cpus): three fit in 24 GB / 2 cores.
MEMORY_MB = 2048
CPUS = 1
#: A fresh host's first deploy installs PostgreSQL, PgBouncer and two venvs.
DEPLOY_TIMEOUT = 20 * 60


@dataclass
class Fleet:
    db: machine.Host
    app: machine.Host
    env: dict[str, str]
    first: DeployRun
    second: DeployRun

    def ssh(self, host: machine.Host, command: str, *, user: str = machine.SSH_USER,
            timeout: float = 600) -> tuple[int, str]:
        """(exit code, output) of ``command`` run on ``host`` over SSH as ``user``, with the
        control key and strict host key checking (paramiko, as pyinfra connects).

        :raises paramiko.SSHException: the login was refused.
        """
        spec = json.loads(Path(self.env["DONNADB_FLEET_FILE"]).read_text())
        with connect(host.address, key_file=spec["ssh_key"], known_hosts=spec["known_hosts"],
                     user=user, timeout=30) as client:
            _, stdout, _ = client.exec_command(command + " 2>&1", timeout=timeout)
            output = stdout.read().decode()
            return stdout.channel.recv_exit_status(), output


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Fleet:
    with machine.fleet([DB, APP]) as (db, app):
        state = machine.STATE_DIR
        spec = {
            "db": db.address, "app": app.address, "ssh_user": machine.SSH_USER,
            "ssh_key": str(state / "ssh" / "id_ed25519"),
            "known_hosts": str(machine.known_hosts([db, app])),
            "ca_dir": str(tmp_path_factory.mktemp("fleet-ca")),
            "memory_mb": MEMORY_MB, "cpus": CPUS,
        }
        spec_file = state / "fleet.json"
        spec_file.write_text(json.dumps(spec))
        wait_for_logins([db, app], key_file=spec["ssh_key"], known_hosts=spec["known_hosts"])
        env = {"DONNADB_FLEET_FILE": str(spec_file)}
        first, second = deploy_twice(inventory=INVENTORY, env=env,
                                     hosts=[db.address, app.address], log_dir=state,
                                     log_name="fleet-deploy", timeout=DEPLOY_TIMEOUT)
        yield Fleet(db, app, env, first, second)

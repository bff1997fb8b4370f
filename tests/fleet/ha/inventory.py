"""The test cluster's inventory: three database hosts (one Patroni cluster) and one
application host, over SSH.

Shaped like inventory/cluster.py (the same groups and keys; tests/provision checks
it): only the addresses, the SSH files and the test budget differ. The cluster fixture
(tests/fleet/ha/conftest.py) writes the hosts it booted to the JSON file named by
DONNADB_CLUSTER_FILE before running pyinfra with this inventory.
"""

import json
import os

_spec = json.loads(open(os.environ["DONNADB_CLUSTER_FILE"]).read())  # noqa: SIM115
# The operator account through sudo, strict host keys, the test CA: like the fleet's.
_ssh = {"ssh_user": _spec["ssh_user"], "ssh_key": _spec["ssh_key"],
        "ssh_known_hosts_file": _spec["known_hosts"], "ssh_strict_host_key_checking": "yes",
        "_sudo": True, "tls_ca_dir": _spec["ca_dir"], "ha": True,
        # As the example inventory states it (the default): the drills run sealed.
        "crypto_enabled": True,
        # A host booted seconds ago on a loaded machine can drop the first login.
        "ssh_connect_retries": 3}
_addresses = [address for _, address in _spec["db"]]
_app_name, _app = _spec["app"]
#: Each member listens on its own address only (the test hosts share one network), and
#: that address is the one Patroni, etcd and the certificates use.
_OWN_ADDRESS = ("ssh_hostname", "pg_listen_addresses", "pgbouncer_listen_addr", "db_host")
_shared = {
    # Every test host's loopback traffic leaves from 127.0.0.1 (one shared network).
    "pg_hba_networks": ["127.0.0.1/32", *(f"{a}/32" for a in _addresses), f"{_app}/32"],
    "host_memory_mb": _spec["memory_mb"],
    "host_cpus": _spec["cpus"],
    # The failure drill runs on the leader with Locust.
    "app_extras": ["loadtest"],
    # The members' shared pgBackRest repository and the logical backups' copies: moto's
    # S3 in the test process, keys in the operator's file (conftest.carry_s3_files).
    "backup_s3": _spec["s3"],
    "pgbackrest_s3_key_type": "shared",
}

db_servers = [(name, {**_ssh, **_shared, **dict.fromkeys(_OWN_ADDRESS, address)})
              for name, address in _spec["db"]]

_app_host = {**_ssh, "ssh_hostname": _app, "app_address": _app, "app_extras": ["loadtest"],
             "monitor_listen_address": _app}

app_servers = [(_app_name, _app_host)]
monitor_servers = [(_app_name, _app_host)]

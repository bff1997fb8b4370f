"""The test fleet's inventory: one database host and one application host over SSH.

Shaped like inventory/production.py (the same groups and keys; tests/fleet checks
it): only the addresses, the SSH files and the test budget differ. The fleet fixture
(tests/fleet/conftest.py) writes the hosts it booted to the JSON file named by
DONNADB_FLEET_FILE before running pyinfra with this inventory.
"""

import json
import os

_fleet = json.loads(open(os.environ["DONNADB_FLEET_FILE"]).read())  # noqa: SIM115
_ssh = {
    "ssh_user": _fleet["ssh_user"],
    "ssh_key": _fleet["ssh_key"],
    "ssh_known_hosts_file": _fleet["known_hosts"],
    "ssh_strict_host_key_checking": "yes",
    # Log in as the operator account, act as root through sudo (no root login).
    "_sudo": True,
    # A host booted seconds ago on a loaded machine can drop the first login.
    "ssh_connect_retries": 3,
}
_db, _app = _fleet["db"], _fleet["app"]
# The DAL's cache: Redis on the app host, which the database host reaches over TLS; field
# encryption (the default), its key file made on the app host and copied to the database
# host, where the load test's seed and the application's memory are sealed.
_dal = {"cache_enabled": True, "crypto_enabled": True}

db_servers = [
    (
        _db,
        {
            **_ssh,
            # Listen on the host's own address only: it is what the app hosts dial, and
            # the test hosts share one network.
            "pg_listen_addresses": _db,
            "pgbouncer_listen_addr": _db,
            "db_host": _db,
            # Every test host's loopback traffic leaves from 127.0.0.1 (one shared
            # network), so that is where the hosts' clients come from.
            "pg_hba_networks": ["127.0.0.1/32", f"{_db}/32", f"{_app}/32"],
            # Three test hosts share this machine's RAM and cores.
            "host_memory_mb": _fleet["memory_mb"],
            "host_cpus": _fleet["cpus"],
            "tls_ca_dir": _fleet["ca_dir"],
            **_dal,
        },
    ),
]

app_servers = [
    (
        _app,
        {
            **_ssh,
            # This app host also drives the load test.
            "app_extras": ["loadtest"],
            "app_db_server": _db,
            "tls_ca_dir": _fleet["ca_dir"],
            **_dal,
            # The application logs in dual-write: node_exporter and the metrics job export
            # its copy figures, which the database host's Prometheus scrapes.
            "donnadb_env_extra": {"DATA_STORAGE_LOGS": "dual"},
        },
    ),
]

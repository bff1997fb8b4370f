"""Example inventory for a high-availability cluster over SSH: copy, edit, then

    make deploy INVENTORY=inventory/cluster.py

Three database hosts form one Patroni cluster (``ha: True``; etcd on the same hosts)
and an application host reaches the leader and the replicas through its own HAProxy,
as the test cluster runs them (tests/fleet/ha/inventory.py has the same groups and
keys). Growing from inventory/production.py is adding two database hosts, ``ha`` and
``ssh_hostname``/``app_address``: docs/ha.md. Each host is ``(name, data)``; the name
is the Patroni and etcd member name, ``ssh_hostname`` the address pyinfra dials.
"""

_ssh = {
    "ssh_user": "deploy",
    "ssh_key": "~/.ssh/id_ed25519",
    "ssh_known_hosts_file": "~/.ssh/known_hosts",
    "ssh_strict_host_key_checking": "yes",
    # A host booted a moment ago may drop the first logins.
    "ssh_connect_retries": 3,
    "_sudo": True,
    "tls_ca_dir": "~/.local/share/donnadb/ca",
    "ha": True,
    # Field encryption (on by default): the key file made on app1, copied to every member.
    "crypto_enabled": True,
}
_members = {"db1": "10.0.1.11", "db2": "10.0.1.12", "db3": "10.0.1.13"}


def _member(address: str) -> dict:
    return {
        **_ssh,
        "ssh_hostname": address,
        # Each member listens on its private address (and its own loopback for the ops
        # jobs); db_host is the address Patroni, etcd and the other members use.
        "pg_listen_addresses": address,
        "pgbouncer_listen_addr": address,
        "db_host": address,
        # The members (replication) and the app servers' subnet.
        "pg_hba_networks": [*(f"{a}/32" for a in _members.values()), "10.0.2.0/24"],
        "host_memory_mb": None,
        "host_cpus": None,
        # ["loadtest"]: Locust beside the ops tools, for `donnactl cluster drill`.
        "app_extras": [],
        # The bucket the members share: pgBackRest's repository (WAL from whichever member
        # leads, backups from a replica) and the logical backups' off-site copies.
        # Without it pgBackRest stays off on a cluster. Keys: the instance role ("auto").
        "backup_s3": {"bucket": "donna-backups", "region": "eu-west-1"},
        "pgbackrest_s3_key_type": "auto",
    }


db_servers = [(name, _member(address)) for name, address in _members.items()]

_app1 = {
    **_ssh,
    "ssh_hostname": "10.0.2.21",
    # The application's router (HAProxy) listens on this host's address.
    "app_address": "10.0.2.21",
    "app_extras": [],
    # Prometheus and Alertmanager listen here too; they scrape every member's exporters
    # over TLS with this host's certificate (docs/monitoring.md).
    "monitor_listen_address": "10.0.2.21",
}

app_servers = [("app1", _app1)]
# The monitor host: a host off the database members (here the application host), so
# that losing a member never loses the alerts about it.
monitor_servers = [("app1", _app1)]

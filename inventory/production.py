"""Example inventory for real servers over SSH: copy, edit, then

    make deploy INVENTORY=inventory/production.py

One database host and one application host, as the test fleet runs them
(tests/fleet/inventory.py has the same groups and keys). Each host is
``(address, data)``: ``ssh_*`` keys configure pyinfra's SSH connector, ``_sudo``
makes it act as root through sudo, any other key overrides group_data/all.py for
that host. The deploy ships the code each host runs (a wheel built from this
checkout); see docs/deploy.md for host roles and TLS.
"""

db_servers = [
    (
        "db1.internal.example.org",
        {
            "ssh_user": "deploy",
            "ssh_key": "~/.ssh/id_ed25519",
            "ssh_known_hosts_file": "~/.ssh/known_hosts",
            "ssh_strict_host_key_checking": "yes",
            # A host booted a moment ago may drop the first logins.
            "ssh_connect_retries": 3,
            "_sudo": True,
            # Listen on the private address too; the app hosts dial the host's name,
            # which the server certificate carries with these addresses.
            "pg_listen_addresses": "localhost,10.0.1.10",
            "pgbouncer_listen_addr": "127.0.0.1,10.0.1.10",
            "db_host": "127.0.0.1",
            # The app servers' subnet (their application role goes through PgBouncer).
            "pg_hba_networks": ["127.0.0.1/32", "::1/128", "10.0.2.0/24"],
            # None: size PostgreSQL for the whole machine.
            "host_memory_mb": None,
            "host_cpus": None,
            "tls_ca_dir": "~/.local/share/donnadb/ca",
            # True on every host: Redis on app1 for the DAL's cache, reached over TLS.
            "cache_enabled": False,
            # Field encryption (on by default), the key file made on app1.
            "crypto_enabled": True,
        },
    ),
]

app_servers = [
    (
        "app1.internal.example.org",
        {
            "ssh_user": "deploy",
            "ssh_key": "~/.ssh/id_ed25519",
            "ssh_known_hosts_file": "~/.ssh/known_hosts",
            "ssh_strict_host_key_checking": "yes",
            # A host booted a moment ago may drop the first logins.
            "ssh_connect_retries": 3,
            "_sudo": True,
            # ["loadtest"] on a host that drives the load test; [] for the DAL alone.
            "app_extras": [],
            "app_db_server": "db1.internal.example.org",
            "tls_ca_dir": "~/.local/share/donnadb/ca",
            # True on every host: this host runs Redis (TLS on its name, port 6380).
            "cache_enabled": False,
            # Field encryption (on by default): this host makes the key file.
            "crypto_enabled": True,
            # Lines for this host's donnadb.env; while moving an entity to PostgreSQL, e.g.
            # {"DATA_STORAGE_LOGS": "dual"} (docs/dal.md): this host then exports
            # its dual-write figures to Prometheus (docs/monitoring.md).
            "donnadb_env_extra": {},
        },
    ),
]

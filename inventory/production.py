"""Example inventory for real servers over SSH: copy, edit, then

    make deploy INVENTORY=inventory/production.py

Each host is ``(address, data)``: ``ssh_*`` keys configure pyinfra's SSH connector,
any other key overrides group_data/all.py for that host. The deploy runs as root
(or with ``_sudo=True``); it ships the code the server runs (a wheel built from this
checkout) into ``donnadb_install_dir`` (see docs/deploy.md).
"""

db_servers = [
    (
        "db1.internal.example.org",
        {
            "ssh_user": "root",
            "ssh_key": "~/.ssh/id_ed25519",
            # Listen on the private address too and let the app servers' subnet in.
            "pg_listen_addresses": "localhost,10.0.1.10",
            "pg_hba_networks": ["127.0.0.1/32", "::1/128", "10.0.2.0/24"],
        },
    ),
]

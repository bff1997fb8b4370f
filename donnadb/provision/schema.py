"""The schema: `donnactl migrate apply`, only when `migrate status --json` lists pending.

donnactl runs on the target host from the code the deploy installed there
(provision/install.py), with the migrations shipped beside it (SCHEMA_DIR), as root,
reading /etc/donnadb/donnadb.env and the passfile; it connects as the migrator role.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy, operation

from donnadb.provision import install
from donnadb.provision.facts import PendingMigrations
from donnadb.provision.settings import DeploySettings


@operation()
def migrations_applied(donnactl: str, schema_dir: str):
    pending = host.get_fact(PendingMigrations, donnactl=donnactl, schema_dir=schema_dir)
    if pending is None or pending:
        # None: the code is installed by this very run (a fresh host), so nothing could
        # be asked before; `migrate apply` with nothing pending changes nothing.
        # cd /: a .env in the caller's directory must not redirect the migrations.
        yield f"cd / && SCHEMA_DIR={schema_dir} {donnactl} migrate apply --yes"
    else:
        host.noop("no pending migrations")


@deploy("Schema")
def apply_schema(settings: DeploySettings) -> None:
    migrations_applied(name="Apply pending schema migrations (donnactl migrate apply)",
                       donnactl=install.donnactl_path(settings),
                       schema_dir=install.schema_dir(settings))

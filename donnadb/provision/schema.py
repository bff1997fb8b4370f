"""The schema: `donnactl migrate apply`, only when `migrate status --json` lists pending.

donnactl runs on the target host from the checkout's virtualenv (group_data
``donnadb_checkout``; for @local, the checkout running the deploy), as root, reading
/etc/donnadb/donnadb.env and the passfile; it connects as the migrator role.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy, operation

from donnadb.provision.facts import PendingMigrations
from donnadb.provision.settings import DeploySettings


def donnactl_path(settings: DeploySettings) -> str:
    return f"{settings.donnadb_checkout}/.venv/bin/donnactl"


@operation()
def migrations_applied(donnactl: str):
    pending = host.get_fact(PendingMigrations, donnactl=donnactl)
    if pending is None:
        logger.warning(f"{donnactl} has no `migrate` command: schema not applied")
        host.noop("donnactl migrate is not available")
    elif pending:
        # cd /: a .env in the caller's directory must not redirect the migrations.
        yield f"cd / && {donnactl} migrate apply"
    else:
        host.noop("no pending migrations")


@deploy("Schema")
def apply_schema(settings: DeploySettings) -> None:
    migrations_applied(name="Apply pending schema migrations (donnactl migrate apply)",
                       donnactl=donnactl_path(settings))

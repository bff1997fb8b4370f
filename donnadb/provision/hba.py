"""pg_hba.conf: scram-sha-256 everywhere but the postgres superuser's peer entries.

Roles that only ever connect from the database host itself (the migrator, the backup
role, PgBouncer's lookup role and the application role, which PgBouncer pools) get
lines for the host's own addresses (loopback and every IP of ``pg_listen_addresses``)
and then an explicit ``reject`` from anywhere else, so their passwords
are useless from another machine even inside ``pg_hba_networks``. The application may
be let in directly from listed networks (``pg_app_direct_networks``), e.g. while an
app server has no PgBouncer in front of it. Every TCP line is ``hostssl``: a client
without TLS matches none and is refused.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from donnadb.provision.ha import REPLICATION_USER, REWIND_USER
from donnadb.provision.settings import DeploySettings
from donnadb.provision.tls import listen_ip_networks

TEMPLATES = Path(__file__).resolve().parent / "templates"


@deploy("Configure pg_hba.conf")
def configure_hba(settings: DeploySettings, peers: list[str] = ()) -> OperationMeta:
    """Write pg_hba.conf; returns the operation (reload when it changed).

    ``peers``: the cluster members' addresses (a cluster deploy), from where Patroni's
    replication and pg_rewind roles may connect (and from ``pg_hba_networks``).
    """
    return files.template(
        name="Write pg_hba.conf (hostssl and scram-sha-256 only, no trust)",
        src=str(TEMPLATES / "pg_hba.conf.j2"),
        dest=hba_file(settings),
        user="postgres",
        group="postgres",
        mode="640",
        networks=list(settings.pg_hba_networks),
        local_only=local_only_roles(settings),
        own_addresses=own_addresses(settings),
        app=settings.role("app"),
        app_direct_networks=list(settings.pg_app_direct_networks),
        peers=list(dict.fromkeys([f"{p}/32" if "/" not in p and ":" not in p else p
                                  for p in peers] + list(settings.pg_hba_networks)))
        if peers else [],
        replication_user=REPLICATION_USER, rewind_user=REWIND_USER,
    )


def hba_file(settings: DeploySettings) -> str:
    """Debian's pg_hba.conf on a single host. In a cluster a name of the deploy's own:
    Patroni appends its bootstrap lines to a file at its default path (and keeps copies
    of it), which would undo the deploy's file on every new cluster."""
    name = "pg_hba.conf" if settings.ha is None else "donna-pg_hba.conf"
    return f"{settings.conf_dir}/{name}"


def local_only_roles(settings: DeploySettings) -> list[str]:
    """The roles that get loopback lines and then ``reject`` (names, not kinds)."""
    names = [settings.role(kind) for kind in settings.pg_hba_local_only_kinds]
    if "app" in settings.pg_hba_local_only_kinds or settings.pg_app_direct_networks:
        names.append(settings.pgbouncer_auth_user)
    return list(dict.fromkeys(names))


def own_addresses(settings: DeploySettings) -> list[str]:
    """Where "from this host only" comes from: loopback and the host's listen addresses."""
    return list(dict.fromkeys(["127.0.0.1/32", "::1/128",
                               *listen_ip_networks(settings.pg_listen_addresses)]))

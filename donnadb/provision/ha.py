"""The cluster of the db_servers hosts (group_data ``ha = True``): who its members are,
its shared secrets, and which member takes the steps that write.

Patroni (Debian's ``patroni``) runs PostgreSQL on every member and keeps the leader
lock in etcd (``etcd-server``, on the same hosts); HAProxy on every host routes to the
leader and the replicas by Patroni's health endpoints. The engine is Patroni's: the
deploy configures it and never decides a failover itself.

Writes (roles, passwords, the database, migrations) go to the leader alone and reach
the replicas by streaming replication. The leader is what Patroni's REST API says at
the start of the run; on a cluster that does not exist yet it is the first host of
db_servers, whose Patroni is started (and bootstraps) before the others'.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import NamedTuple

from pyinfra import host as current_host
from pyinfra.api import FactBase, operation
from pyinfra.api.host import Host
from pyinfra.operations import files

from donnadb.errors import ConfigError
from donnadb.provision import ca, tls
from donnadb.provision.settings import (
    DB_GROUP,
    DeploySettings,
    HaSettings,
    load_deploy_settings,
)

#: Patroni's roles for the cluster's own connections (created by Patroni at bootstrap).
REPLICATION_USER = "replicator"
REWIND_USER = "rewinder"
REST_USER = "patroni"
SECRET_NAMES = ("replication", "rewind", "restapi")


class Member(NamedTuple):
    """A db_servers host: its inventory name (Patroni's and etcd's member name), address
    and PgBouncer port (the routers send the application there)."""

    name: str
    address: str
    pgbouncer_port: int = 6432


def members(target: Host) -> list[Member]:
    """The db_servers hosts in inventory order, each at its ``db_host`` address.

    :raises ConfigError: fewer than three, an even number, or two at one address.
    """
    group = target.inventory.get_group(DB_GROUP) if DB_GROUP in target.inventory.groups else []
    found = [Member(h.name, str(h.data.get("db_host")),
                    load_deploy_settings(h.data).pgbouncer_port) for h in group]
    if len(found) < 3 or len(found) % 2 == 0:
        raise ConfigError(f"ha = True needs an odd number of db_servers hosts, at least 3 "
                          f"(etcd's quorum), not {len(found)}; add hosts or set ha = False")
    addresses = [m.address for m in found]
    if len(set(addresses)) != len(addresses) or any(a in ("127.0.0.1", "localhost", "")
                                                    for a in addresses):
        raise ConfigError("ha = True: give every db_servers host its own address in db_host "
                          "(Patroni, etcd and the certificates use it), not localhost")
    return found


def me(settings: DeploySettings, target: Host) -> Member:
    return Member(target.name, settings.db_host, settings.pgbouncer_port)


def cluster_secrets(settings: DeploySettings) -> dict[str, str]:
    """The passwords every member shares (replication, pg_rewind, Patroni's REST API),
    made once on the control machine beside the CA (0600) and reused."""
    path = Path(settings.tls_ca_dir) / "cluster" / f"{settings.ha.scope}.json"
    if path.exists():
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the cluster secrets {path}: {exc}; restore the "
                              "file from the control machine's backup") from None
        if all(isinstance(kept.get(n), str) and kept[n] for n in SECRET_NAMES):
            return kept
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = {name: secrets.token_urlsafe(32) for name in SECRET_NAMES}
    ca.write_private(path, json.dumps(made).encode())
    return made


class PatroniRole(FactBase):
    """What this member's Patroni says it is ("primary", "replica", ...), or None when
    no Patroni answers (not installed, not started)."""

    def command(self, address: str, port: int) -> str:
        url = f"https://{address}:{int(port)}/patroni"
        return (f"if command -v curl >/dev/null && [ -f {tls.CA_FILE} ]; then "
                f"curl -fsS --max-time 5 --cacert {tls.CA_FILE} {url} || true; fi")

    def process(self, output):
        try:
            state = json.loads("\n".join(output))
        except ValueError:
            return None
        role = state.get("role")
        # Patroni 3.0 calls the leader "master" in this document.
        return "primary" if role in ("master", "primary") else role


def leader(target: Host) -> Member:
    """The member that takes the writing steps in this run.

    :raises ConfigError: Patroni runs but no member is the leader (a failover in progress).
    """
    cluster = members(target)
    roles = {}
    for member in cluster:
        host = target.inventory.get_host(member.name)
        ha = load_deploy_settings(host.data).ha or HaSettings()
        roles[member.name] = host.get_fact(PatroniRole, address=member.address,
                                           port=ha.rest_port)
    for member in cluster:
        if roles[member.name] == "primary":
            return member
    if all(role is None for role in roles.values()):
        return cluster[0]
    raise ConfigError(f"the cluster has no leader now ({roles}); wait until `donnactl cluster "
                      "list` shows one, then run the deploy again")


@operation()
def rendezvous():
    """Nothing to do: every member calls this from the same line, which makes it ONE
    operation of all hosts (pyinfra's identity of an operation is where it is called
    from), and pyinfra runs an operation on every host before the next. What any host
    does before it is done on all hosts before anything after it starts."""
    current_host.noop("every member reached this point")
    return
    yield  # an operation is a generator


def hosts_entry(name: str, address: str, why: str) -> None:
    """/etc/hosts: ``name`` is ``address`` (one line per name, replaced when it moves)."""
    files.line(name=f"/etc/hosts: {name} is {address} ({why})", path="/etc/hosts",
               line=rf".*\s{re.escape(name)}$", replace=f"{address} {name}")

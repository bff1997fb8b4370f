"""Patroni on every cluster member (Debian's ``patroni``, unit ``patroni@<v>-<c>``).

The Debian cluster layout stays (data in /var/lib/postgresql/<v>/<c>, settings in
/etc/postgresql/<v>/<c>, the deploy's conf.d/donna.conf and its pg_hba file), but the
cluster's start.conf says ``manual``: Patroni alone starts PostgreSQL, never Debian's
postgresql@ unit. Patroni makes the cluster itself (initdb on the first member, a
base backup of the leader on the others) and creates its replication and pg_rewind
roles with the passwords of :func:`donnadb.provision.ha.cluster_secrets`.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd

from donnadb import config
from donnadb.provision import backups, bootstrap, ha, hba, tls, tuning
from donnadb.provision.settings import DeploySettings
from donnadb.provision.tls import listen_names

CONFIG_DIR = "/etc/patroni"
#: How long a member may take to answer as leader / replica (a base backup included).
WAIT_SECONDS = 600


def config_file(settings: DeploySettings) -> str:
    """Where Debian's patroni@ unit reads this cluster's settings."""
    return f"{CONFIG_DIR}/{settings.pg_version}-{settings.pg_cluster}.yml"


def unit(settings: DeploySettings) -> str:
    return f"patroni@{settings.pg_version}-{settings.pg_cluster}"


def render_config(settings: DeploySettings, target: Host, secrets: dict[str, str]) -> str:
    memory_mb, cpus = tuning.host_resources(settings)
    me = ha.me(settings, target)
    listen = ",".join(dict.fromkeys([*listen_names(settings.pg_listen_addresses), me.address]))
    return bootstrap.render(
        "patroni.yml.j2", cfg=settings, ha=settings.ha, me=me, members=ha.members(target),
        tls=tls, secrets=secrets, tune=settings.tuning(memory_mb, cpus), listen=listen,
        data_dir=config.debian_data_dir(settings.pg_version, settings.pg_cluster),
        bin_dir=config.debian_bin_dir(settings.pg_version),
        rest_user=ha.REST_USER, replication_user=ha.REPLICATION_USER,
        rewind_user=ha.REWIND_USER, hba_file=hba.hba_file(settings),
        archive=backups.archive_parameters(target.data, settings))


@deploy("Patroni settings")
def configure_patroni(settings: DeploySettings, target: Host) -> OperationMeta:
    """The package, start.conf ``manual`` and the settings file; returns the file's
    operation (Patroni re-reads it on reload)."""
    apt.packages(name="Install patroni", packages=["patroni"])
    files.put(name="start.conf manual: Patroni starts PostgreSQL, not postgresql@",
              src=StringIO("manual\n"), dest=f"{settings.conf_dir}/start.conf",
              user="postgres", group="postgres", mode="644")
    files.file(name=f"Create {settings.conf_dir}/pg_ident.conf", path=f"{settings.conf_dir}/"
               "pg_ident.conf", user="postgres", group="postgres", mode="640")
    files.directory(name=f"Create {CONFIG_DIR}", path=CONFIG_DIR, user="root",
                    group="postgres", mode="750")
    path = config_file(settings)
    # Secrets inside: the file is 0600 before its content is copied in.
    files.file(name=f"Create {path} (postgres 0600)", path=path, user="postgres",
               group="postgres", mode="600")
    return files.put(name=f"Write {path}",
                     src=StringIO(render_config(settings, target, ha.cluster_secrets(settings))),
                     dest=path, user="postgres", group="postgres", mode="600")


def started(settings: DeploySettings, why: str) -> OperationMeta:
    return systemd.service(name=f"Start {unit(settings)} now and at boot ({why})",
                    service=unit(settings), running=True, enabled=True)


def reloaded_if(settings: DeploySettings, changed) -> None:
    """Patroni re-reads its file when it runs; a stopped member is left for its start
    (``running=None``: pyinfra's default would start it here, before its turn)."""
    systemd.service(name=f"Reload {unit(settings)} (its settings changed)",
                    service=unit(settings), running=None, reloaded=True, _if=changed)


def answers(settings: DeploySettings, target: Host, endpoint: str, _if) -> None:
    """Wait (bounded) until this member's Patroni answers 200 on ``endpoint``
    (``primary`` or ``replica``): it leads, or it streams from the leader."""
    me = ha.me(settings, target)
    url = f"https://{me.address}:{settings.ha.rest_port}/{endpoint}"
    server.shell(
        name=f"Wait until Patroni on {me.name} answers /{endpoint}",
        commands=[f"for i in $(seq {WAIT_SECONDS // 2}); do "
                  f"curl -fsS -o /dev/null --max-time 5 --cacert {tls.CA_FILE} {url} && exit 0; "
                  f"sleep 2; done; echo 'Patroni on {me.name} never answered /{endpoint}: "
                  f"journalctl -u {unit(settings)}' >&2; exit 1"],
        _if=_if)

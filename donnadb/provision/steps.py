"""The deploy's step list, in ONE place: deploy.py and the fresh-cluster test call it.

``converge_postgresql`` is the cluster, its roles, passwords, database and schema;
``converge_host`` adds the services around it (backups, PgBouncer, ops jobs), which
use fixed host paths and ports and so are left out of the throwaway-cluster test
(tests/provision/fresh_deploy.py).
"""

from __future__ import annotations

from collections.abc import Callable

from pyinfra.api.host import Host
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from donnadb.provision import (
    backups,
    consumers,
    database,
    envfile,
    etcd,
    ha,
    haproxy,
    hba,
    install,
    logs,
    monitoring,
    opsjobs,
    packages,
    passwords,
    patroni,
    pgbouncer,
    psql,
    roles,
    scheduler,
    schema,
    service,
    tls,
    tuning,
)
from donnadb.provision.settings import DeploySettings


def converge_postgresql(settings: DeploySettings) -> Callable[[], bool]:
    """Packages, the shipped code, the TLS files, postgresql.conf, pg_hba.conf, the
    service, roles, passwords, database (with PgBouncer's lookup), donnadb.env and the
    schema migrations. Returns "did the TLS files change" (PgBouncer reads them too)."""
    packages.install_postgresql(settings)
    install.install_code(settings)
    consumers.create_users(settings)
    tls_changed = tls.install_server_cert(settings)
    conf = tuning.configure_postgresql(settings)
    access = hba.configure_hba(settings)
    # A reload re-reads pg_hba.conf and the certificate files.
    service.ensure_running(settings, restart_if=conf.did_change,
                           reload_if=lambda: access.did_change() or tls_changed())
    roles.converge_roles(settings)
    passwords.converge_passwords(settings)
    database.converge_database(settings)
    envfile.write_env_file(settings)
    schema.apply_schema(settings)
    return tls_changed


def converge_host(settings: DeploySettings) -> None:
    """Everything: :func:`converge_postgresql`, then cron (without systemd), backups,
    PgBouncer, the ops jobs and monitoring (Prometheus, Alertmanager, node_exporter).

    A later step that edits postgresql settings should use group_data
    pg_extra_settings, or call service.ensure_running(settings,
    restart_if=its_op.did_change) after its own file.
    """
    tls_changed = converge_postgresql(settings)
    scheduler.ensure_cron(settings)
    backups.install_backups(settings)
    pgbouncer.install_pgbouncer(settings, tls_changed=tls_changed)
    opsjobs.install_ops_jobs(settings)
    monitoring.install_monitoring(settings)
    logs.rotate_logs(settings)


def converge_member(settings: DeploySettings, target: Host) -> None:
    """A member of the Patroni cluster (group_data ``ha = True``): the same files as a
    single host, etcd and Patroni instead of Debian's service, the writing steps on the
    leader only (:func:`donnadb.provision.ha.leader`), then the services around it and
    this host's router.

    The order across hosts matters: the leader's Patroni starts (and on a new cluster
    bootstraps it) and the leader gets its roles, database and schema before any
    other member's Patroni starts (a base backup of the leader) and copies the
    leader's passwords. :func:`~donnadb.provision.ha.rendezvous` holds the line.
    """
    leader = ha.leader(target)
    packages.install_postgresql(settings)
    install.install_code(settings)
    consumers.create_users(settings)
    tls_changed = tls.install_server_cert(settings)
    etcd.install_etcd(settings, target)
    conf = tuning.configure_postgresql(settings)
    access = hba.configure_hba(settings, [m.address for m in ha.members(target)])
    patroni.reloaded_if(settings, patroni.configure_patroni(settings, target).did_change)
    changed = any_changed(conf, access)
    # donnadb.env's DB_HOST is the cluster's name (the migrations below dial it).
    haproxy.name_this_host(settings, settings.db_host)
    if leader.name == target.name:
        _lead(settings, target, lambda: changed() or tls_changed())
    ha.rendezvous(name="Cluster: the leader runs, with its roles, database and schema")
    if leader.name != target.name:
        _follow(settings, target, target.inventory.get_host(leader.name),
                lambda: changed() or tls_changed())
    ha.rendezvous(name="Cluster: every member runs")
    scheduler.ensure_cron(settings)
    backups.install_backups(settings, leader=target.inventory.get_host(leader.name))
    pgbouncer.install_pgbouncer(settings, tls_changed=tls_changed, own_password=False)
    opsjobs.install_ops_jobs(settings)
    monitoring.install_monitoring(settings)
    logs.rotate_logs(settings)
    haproxy.install_router(settings, target, settings.db_host)


def _lead(settings: DeploySettings, target: Host, files_changed: Callable[[], bool]) -> None:
    started = patroni.started(settings, "the leader")
    patroni.answers(settings, target, "primary", _if=started.did_change)
    reload_changed(settings, lambda: not started.did_change() and files_changed())
    roles.converge_roles(settings)
    passwords.converge_passwords(settings)
    database.converge_database(settings)
    # After the database's bootstrap, which creates PgBouncer's lookup role.
    pgbouncer.converge_auth_password(settings)
    envfile.write_env_file(settings)
    schema.apply_schema(settings)


def _follow(settings: DeploySettings, target: Host, leader: Host,
            files_changed: Callable[[], bool]) -> None:
    started = patroni.started(settings, "a replica of the leader")
    patroni.answers(settings, target, "replica", _if=started.did_change)
    reload_changed(settings, lambda: not started.did_change() and files_changed())
    passwords.converge_passwords(settings, source=leader)
    envfile.write_env_file(settings)


def reload_changed(settings: DeploySettings, condition: Callable[[], bool]) -> None:
    """pg_hba.conf, conf.d/donna.conf or the certificate changed under a running member:
    PostgreSQL re-reads them (a setting that needs a restart shows as pending in
    ``donnactl cluster list``; ``donnactl cluster restart`` applies it member by member)."""
    server.shell(name="Reload PostgreSQL (its settings or certificate changed)",
                 commands=[psql.run_sql("SELECT pg_reload_conf();", settings.pg_port)],
                 _if=condition)

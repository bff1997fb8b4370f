"""The deploy's step list, in ONE place: deploy.py and the fresh-cluster test call it.

``converge_postgresql`` is the cluster, its roles, passwords, database and schema;
``converge_host`` adds the services around it (backups, PgBouncer, ops jobs), which
use fixed host paths and ports and so are left out of the throwaway-cluster test
(tests/provision/fresh_deploy.py).
"""

from __future__ import annotations

from collections.abc import Callable

from donnadb.provision import (
    backups,
    consumers,
    database,
    envfile,
    hba,
    install,
    logs,
    opsjobs,
    packages,
    passwords,
    pgbouncer,
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
    PgBouncer and the ops jobs.

    A later step that edits postgresql settings should use group_data
    pg_extra_settings, or call service.ensure_running(settings,
    restart_if=its_op.did_change) after its own file.
    """
    tls_changed = converge_postgresql(settings)
    scheduler.ensure_cron(settings)
    backups.install_backups(settings)
    pgbouncer.install_pgbouncer(settings, tls_changed=tls_changed)
    opsjobs.install_ops_jobs(settings)
    logs.rotate_logs(settings)

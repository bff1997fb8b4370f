"""Deploy Donna's PostgreSQL: `pyinfra -y inventory/local.py deploy.py` (`make deploy`).

Each step is a @deploy function in donnadb/provision/; every setting is in
group_data/all.py. Running it again changes nothing. See docs/deploy.md.
"""

from pyinfra import host

from donnadb.provision import (
    backups,
    database,
    envfile,
    hba,
    packages,
    pgbouncer,
    roles,
    schema,
    secrets,
    service,
    tuning,
)
from donnadb.provision.settings import load_deploy_settings

settings = load_deploy_settings(host.data)

packages.install_postgresql(settings)
conf = tuning.configure_postgresql(settings)
access = hba.configure_hba(settings)
service.ensure_running(settings, restart_if=conf.did_change, reload_if=access.did_change)
roles.converge_roles(settings)
secrets.converge_passwords(settings)
database.converge_database(settings)
envfile.write_env_file(settings)
schema.apply_schema(settings)
backups.install_backups(settings)

# Later parts go here, after the schema (e.g. pgbouncer.install_pgbouncer(settings)).
# A step that edits postgresql settings should use group_data pg_extra_settings, or call
# service.ensure_running(settings, restart_if=its_op.did_change) after its own file.
pgbouncer.install_pgbouncer(settings)

"""deploy.py's PostgreSQL steps alone, for tests/provision/test_fresh_cluster.py.

The test points them (pyinfra --data) at a throwaway cluster and files under a
temporary directory, so a from-scratch run can be checked without touching 15/main.
"""

from pyinfra import host

from donnadb.provision import (
    database,
    envfile,
    hba,
    packages,
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

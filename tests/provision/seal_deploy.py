"""deploy.py's field-encryption steps on a database host alone, for
tests/provision/test_seal_on_deploy.py: the key file (made once) and the sealing of
values stored in clear, for the settings file at ``donnadb_env_file`` (a scratch path
naming a scratch database)."""

from pyinfra import host

from donnadb.provision.fieldkeys import is_key_origin, make_key_file, seal_existing
from donnadb.provision.settings import load_deploy_settings

settings = load_deploy_settings(host.data)
if is_key_origin(settings, host):
    make_key_file(settings)
seal_existing(settings, host)

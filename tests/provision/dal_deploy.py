"""deploy.py's steps for the DAL's secrets alone, for tests/provision/test_cacheserver.py:
Redis on this host and the field-encryption key file (with the inventory's data:
``--data cache_enabled=True crypto_enabled=True``), the consumers' copies, and a
settings file at ``donnadb_env_file`` (a scratch path)."""

from pyinfra import host

from donnadb.provision import consumers, envfile
from donnadb.provision.app import dal_users
from donnadb.provision.cacheserver import (
    hand_over_cache_password,
    install_cache_server,
    is_cache_host,
)
from donnadb.provision.fieldkeys import hand_over_key_file, is_key_origin, make_key_file
from donnadb.provision.settings import load_deploy_settings

settings = load_deploy_settings(host.data)
consumers.create_users(settings)
# As deploy.py decides it: with pyinfra's `host` proxy.
if is_cache_host(settings, host):
    install_cache_server(settings)
if is_key_origin(settings, host):
    make_key_file(settings)
envfile.write_env_file(settings)
hand_over_cache_password(settings, host, dal_users(settings, host))
hand_over_key_file(settings, host, dal_users(settings, host))

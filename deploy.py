"""Deploy Donna's PostgreSQL: `pyinfra -y inventory/local.py deploy.py` (`make deploy`).

A host's inventory group says what it gets: ``db_servers`` the database and
everything around it (each step is a @deploy function in donnadb/provision/, listed
once in donnadb/provision/steps.py; with group_data ``ha = True`` the db_servers hosts
form one Patroni cluster), ``app_servers`` the application's package, settings and
credential (donnadb/provision/app.py; where it puts an entity in dual-write, also
node_exporter and a metrics job for its copy figures: provision/appmetrics.py),
``monitor_servers`` Prometheus and Alertmanager scraping every database host (and those
application hosts' node_exporter; donnadb/provision/monitoring.py; without that group a
single database host monitors itself). With group_data ``cache_enabled`` one host runs
Redis for the DAL's cache (donnadb/provision/cacheserver.py); with ``crypto_enabled``
every host running the DAL gets field encryption's key file and what a database held
in clear is sealed (provision/fieldkeys.py).
Every setting is in
group_data/all.py. Running it again changes nothing. See docs/deploy.md, docs/ha.md and
docs/monitoring.md.
"""

from pyinfra import host

from donnadb.provision.app import (
    MONITOR_GROUP,
    converge_app,
    dal_users,
    database_server,
    hand_over_credential,
    roles_of,
)
from donnadb.provision.appmetrics import install_app_metrics
from donnadb.provision.cacheserver import (
    hand_over_cache_password,
    install_cache_server,
    is_cache_host,
)
from donnadb.provision.fieldkeys import (
    hand_over_key_file,
    is_key_origin,
    make_key_file,
    seal_existing,
)
from donnadb.provision.monitoring import install_monitor
from donnadb.provision.settings import load_deploy_settings
from donnadb.provision.steps import converge_host, converge_member

settings = load_deploy_settings(host.data)
is_db, is_app = roles_of(host)
if is_db and settings.ha is not None:
    converge_member(settings, host)
elif is_db:
    converge_host(settings)
elif is_app:
    # A database host already has the package and settings an application needs.
    converge_app(settings, database_server(settings, host))
    install_app_metrics(settings)
if MONITOR_GROUP in host.groups:
    install_monitor(settings)
if is_cache_host(settings, host):
    install_cache_server(settings)
if is_key_origin(settings, host):
    make_key_file(settings)
# Every host, from these lines, after every host's own steps (see hand_over_credential).
hand_over_credential(settings, host)
hand_over_cache_password(settings, host, dal_users(settings, host))
hand_over_key_file(settings, host, dal_users(settings, host))
if is_db:
    seal_existing(settings, host)

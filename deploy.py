"""Deploy Donna's PostgreSQL: `pyinfra -y inventory/local.py deploy.py` (`make deploy`).

Each step is a @deploy function in donnadb/provision/, listed once in
donnadb/provision/steps.py; every setting is in group_data/all.py. Running it again
changes nothing. See docs/deploy.md.
"""

from pyinfra import host

from donnadb.provision.settings import load_deploy_settings
from donnadb.provision.steps import converge_host

converge_host(load_deploy_settings(host.data))

"""deploy.py's PostgreSQL steps alone, for tests/provision/test_fresh_cluster.py.

The test points them (pyinfra --data) at a throwaway cluster and files under a
temporary directory, so a from-scratch run can be checked without touching 15/main.
The step list is donnadb/provision/steps.py's, the one deploy.py runs.
"""

from pyinfra import host

from donnadb.provision.settings import load_deploy_settings
from donnadb.provision.steps import converge_postgresql

converge_postgresql(load_deploy_settings(host.data))

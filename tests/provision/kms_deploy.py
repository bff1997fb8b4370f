"""deploy.py's key file step alone (provision/fieldkeys.py ``make_key_file``), for
tests/crypto/test_kms.py: made sealed by the KMS key group_data names, beside a scratch
DB_PASSFILE."""

from pyinfra import host

from donnadb.provision.fieldkeys import make_key_file
from donnadb.provision.settings import load_deploy_settings

make_key_file(load_deploy_settings(host.data))

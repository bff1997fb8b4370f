"""Field encryption as deployed on fresh hosts (group_data crypto_enabled, the default):
the key file made once on the application host and copied to the database host, one
private copy per user running the DAL; what the application writes reaches the
database sealed, and the database host's donnactl opens it with its own copy."""

from __future__ import annotations

import json
import uuid

from tests.fleet.conftest import Fleet
from tests.fleet.test_app import run_contract


def _sql(fleet: Fleet, query: str) -> str:
    return fleet.db.run(f"sudo -u postgres psql -XAtd donna -c \"{query}\"").stdout.strip()


def test_every_host_has_the_same_key_file_in_private_copies(fleet: Fleet):
    digests = set()
    for host in (fleet.app, fleet.db):
        for user in ("root", "donna-app"):
            listing = host.run(f"stat -c '%U %a' /etc/donnadb/keys.d/{user}").stdout.split()
            assert listing == [user, "600"], (host.name, user, listing)
            digests.add(host.run(f"sha256sum /etc/donnadb/keys.d/{user}").stdout.split()[0])
    assert len(digests) == 1, "the hosts hold different key files"


def test_the_applications_personal_data_arrive_sealed_and_open_on_the_db_host(fleet: Fleet):
    marker = f"m{uuid.uuid4().hex[:10]}"
    result = run_contract(fleet, marker)
    user_id = result["user_id"]
    assert _sql(fleet, f"SELECT (email IS NULL AND name IS NULL AND email_sealed IS NOT NULL)"
                       f" FROM users WHERE id = '{user_id}'") == "t"
    assert _sql(fleet, f"SELECT count(*) FROM user_memory WHERE user_id = '{user_id}' "
                       f"AND value::text LIKE '%{marker}%'") == "0"
    # The control: message text is not encrypted (it is searched in the database).
    assert _sql(fleet, f"SELECT count(*) FROM messages WHERE content LIKE '{marker}%'") == "5"
    seen = json.loads(fleet.db.run(f"donnactl users inspect {user_id} --json").stdout)
    assert seen["user"]["email"].endswith("@example.org"), seen["user"]
    assert seen["user"]["name"] == "Fleet User"


def test_nothing_personal_is_left_in_clear(fleet: Fleet):
    status = json.loads(fleet.db.run("donnactl keys status --json").stdout)
    assert status["users_in_clear"] == 0, status
    assert status["missing"] == [], status

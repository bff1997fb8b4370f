"""The deploy seals what a database held in clear before field encryption was on
(provision/fieldkeys.py ``seal_existing``), so that turning the default on cannot turn
the application's reads of old rows into errors; a second run changes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from donnadb.config import HOST_ENV_FILE
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.dal.sealed import count_plain_users
from tests.provision.deployrun import run_deploy
from tests.support import crypto_settings, superuser_psql

ROOT_KEY_FILE = Path("/etc/donnadb/keys.d/root")


@pytest.fixture
def clear_user(settings, scratch_db):
    """A user with e-mail, name, a preference and a memory value, written with
    encryption off."""
    plain = settings.model_copy(update={"crypto_enabled": False})
    dal = PostgresDataAccess(plain, dbname=scratch_db)
    try:
        user_id = dal.create_user({"clerk_id": "clear-1", "email": "grace@example.org",
                                   "name": "Grace", "preferences": {"tone": "dry"}})
        dal.set_user_memory(user_id, "context", "city", "Arlington")
    finally:
        dal.close()
    return user_id


def _env_file(tmp_path: Path, dbname: str) -> Path:
    """This host's settings file with DB_NAME pointing at ``dbname``."""
    lines = [line for line in HOST_ENV_FILE.read_text().splitlines()
             if not line.startswith(("DB_NAME=", "CRYPTO_"))]
    path = tmp_path / "donnadb.env"
    path.write_text("\n".join([*lines, f"DB_NAME={dbname}"]) + "\n")
    path.chmod(0o600)
    return path


def _deploy(env_file: Path, enabled: bool = True):
    run = run_deploy(deploy_file="tests/provision/seal_deploy.py", timeout=300,
                     data={"crypto_enabled": enabled, "donnadb_env_file": str(env_file)})
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_the_deploy_seals_values_stored_in_clear_once(settings, scratch_db, clear_user,
                                                      tmp_path):
    plain = settings.model_copy(update={"crypto_enabled": False})
    assert count_plain_users(plain, dbname=scratch_db) == 1
    env_file = _env_file(tmp_path, scratch_db)

    first = _deploy(env_file)
    assert any("Seal personal values" in op for op in first.changed_operations()), \
        first.output[-3000:]
    assert count_plain_users(plain, dbname=scratch_db) == 0
    stored = superuser_psql("SELECT coalesce(email, '-') || ' ' || (email_sealed IS NOT NULL)"
                            " || ' ' || (preferences::text LIKE '%dry%') FROM users",
                            scratch_db)
    assert stored == "- true false"
    assert superuser_psql("SELECT count(*) FROM user_memory WHERE value::text LIKE "
                          "'%Arlington%'", scratch_db) == "0"

    sealed = crypto_settings(settings, ROOT_KEY_FILE)
    dal = PostgresDataAccess(sealed, dbname=scratch_db)
    try:
        user = dal.get_user_by_id(clear_user)
        assert (user["email"], user["name"], user["preferences"]) == (
            "grace@example.org", "Grace", {"tone": "dry"})
        assert dal.get_user_memory(clear_user, "context") == {"city": "Arlington"}
    finally:
        dal.close()

    second = _deploy(env_file)
    assert second.changed_operations() == [], second.output[-3000:]


def test_with_encryption_off_the_deploy_leaves_the_values_alone(settings, scratch_db,
                                                                clear_user, tmp_path):
    run = _deploy(_env_file(tmp_path, scratch_db), enabled=False)
    assert run.changed_operations() == [], run.output[-3000:]
    plain = settings.model_copy(update={"crypto_enabled": False})
    assert count_plain_users(plain, dbname=scratch_db) == 1


def test_keys_status_counts_the_users_in_clear(settings, scratch_db, clear_user, tmp_path):
    env_file = _env_file(tmp_path, scratch_db)
    out = subprocess.run(
        [".venv/bin/donnactl", "keys", "status", "--json"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DONNADB_HOST_ENV": str(env_file),
             "CRYPTO_KEK_FILE": str(_any_key_file(tmp_path))}, check=False)
    assert out.returncode == 0, out.stderr
    assert '"users_in_clear": 1' in out.stdout


def _any_key_file(tmp_path: Path) -> Path:
    from donnadb.crypto import keyfile

    path = tmp_path / "fields.key"
    keyfile.generate(path)
    return path

"""`roles rotate` on a throwaway login role (the deployed roles' passwords stay put)."""

import json
import uuid

import psycopg
import pytest

from donnadb import db
from tests.support import superuser_psql


@pytest.fixture
def throwaway(tmp_path, empty_db):
    """A LOGIN role standing in for the readonly role, with its own passfile and auth_file."""
    role = f"donna_rot_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    superuser_psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    superuser_psql(f'GRANT CONNECT ON DATABASE "{empty_db}" TO {role}')
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"# generated\n*:*:*:someone_else:keep:me\n*:*:*:{role}:{password}\n")
    passfile.chmod(0o600)
    userlist = tmp_path / "userlist.txt"
    userlist.write_text(f'"someone_else" "x"\n"{role}" "SCRAM-SHA-256$old"\n')
    userlist.chmod(0o600)
    env = {"DB_PASSFILE": str(passfile), "DB_ROLE_READONLY": role, "DB_NAME": empty_db,
           "PGBOUNCER_AUTH_FILE": str(userlist)}
    yield role, password, passfile, userlist, env
    superuser_psql(f'REVOKE CONNECT ON DATABASE "{empty_db}" FROM {role}')
    superuser_psql(f"DROP ROLE {role}")


def test_rotate_changes_password_everywhere_without_dropping_sessions(cli, settings, throwaway):
    role, old, passfile, userlist, env = throwaway
    s = settings.model_copy(update={"db_passfile": passfile, "db_role_readonly": role,
                                    "db_name": env["DB_NAME"]})
    open_session = db.connect("readonly", settings=s)
    try:
        done = cli("roles", "rotate", "readonly", "--yes", "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["verified"] is True
        # The session opened with the old password is still usable.
        assert open_session.execute("SELECT current_user").fetchone()[0] == role
    finally:
        open_session.close()
    lines = passfile.read_text().splitlines()
    assert lines[:2] == ["# generated", "*:*:*:someone_else:keep:me"]
    new = lines[2].split(":")[4]
    assert new != old and len(new) >= 40
    assert passfile.stat().st_mode & 0o777 == 0o600
    stored = superuser_psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    assert stored.startswith("SCRAM-SHA-256$")
    assert userlist.read_text().splitlines() == ['"someone_else" "x"', f'"{role}" "{stored}"']
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", dbname=env["DB_NAME"], user=role, password=old).close()
    assert new not in (cli.log_file.read_text() + done.stdout + done.stderr)
    # ... nor in what a read-only login sees of the server's statistics.
    with db.connect("readonly", settings=settings) as readonly:
        seen = readonly.execute("SELECT query FROM pg_stat_statements "
                                "WHERE query LIKE %s", [f"%{stored}%"]).fetchall()
    assert seen == [], "the new verifier is readable in pg_stat_statements"


def test_rotate_refuses_unknown_roles(cli):
    done = cli("roles", "rotate", "postgres", "--yes")
    assert done.returncode == 3 and "ROLE must be one of" in done.stderr


def test_rotate_with_a_stale_password_changes_nothing(cli, throwaway):
    role, _old, passfile, _userlist, env = throwaway
    passfile.write_text(f"*:*:*:{role}:stale\n")
    passfile.chmod(0o600)
    done = cli("roles", "rotate", "readonly", "--yes", env=env)
    assert done.returncode == 4 and "password authentication failed" in done.stderr
    assert passfile.read_text() == f"*:*:*:{role}:stale\n"


def test_rotate_dry_run_and_a_no_change_nothing(cli, throwaway):
    role, _old, passfile, userlist, env = throwaway
    before = passfile.read_text(), userlist.read_text()
    dry = cli("roles", "rotate", "readonly", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would set a new random password for {role}" in dry.stdout
    assert str(passfile) in dry.stdout and str(userlist) in dry.stdout
    said_no = cli("roles", "rotate", "readonly", env=env, input="n\n")
    assert said_no.returncode == 130
    assert (passfile.read_text(), userlist.read_text()) == before

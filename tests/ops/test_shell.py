"""`donnactl shell`: the client logs in from the passfile; no password in argv or env."""

import pytest

from donnadb.ops import shell


@pytest.mark.parametrize("client", [["--psql", "--", "-Atc"], ["--", "-c"]])
def test_shell_runs_the_client_as_the_role(cli, settings, client):
    done = cli("shell", "--role", "readonly", *client, "select current_user")
    assert done.returncode == 0, done.stderr
    assert settings.db_role_readonly in done.stdout


def test_command_carries_no_password(settings):
    secret = settings.db_passfile.read_text()
    argv, env = shell.command(settings, "migrator", use_psql=True)
    assert env["PGUSER"] == settings.db_role_migrator
    assert env["PGPASSFILE"] == str(settings.db_passfile) and "PGPASSWORD" not in env
    passwords = [line.split(":", 4)[4] for line in secret.splitlines() if line.count(":") >= 4]
    for password in passwords:
        assert all(password not in arg for arg in argv)
        assert all(password not in value for value in env.values())


def test_shell_refuses_other_roles(cli):
    done = cli("shell", "--role", "backup")
    assert done.returncode == 3 and "--role must be one of app, readonly, migrator" in done.stderr

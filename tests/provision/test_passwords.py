"""The password helper: SCRAM verifiers PostgreSQL accepts, passfile handling, no leaks."""

from __future__ import annotations

import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.provision.deployrun import HELPER
from tests.support import superuser_psql


@pytest.fixture
def scratch_role(settings):
    """A throwaway LOGIN role allowed into the deployed database; dropped afterwards."""
    name = f"donna_t_{uuid.uuid4().hex[:8]}"
    superuser_psql(f'CREATE ROLE "{name}" LOGIN; '
                   f'GRANT CONNECT ON DATABASE "{settings.db_name}" TO "{name}"')
    yield name
    superuser_psql(f'REVOKE ALL ON DATABASE "{settings.db_name}" FROM "{name}"; '
                   f'DROP ROLE IF EXISTS "{name}"')


def _helper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True,
                          text=True, check=False)


def test_verifier_matches_postgresql_format(helper):
    salt = b"0123456789abcdef"
    verifier = helper.scram_verifier("pencil", salt=salt, iterations=4096)
    # Computed independently of PostgreSQL's format: prefix, iterations, base64 salt.
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert helper.verifier_matches(verifier, "pencil")
    assert not helper.verifier_matches(verifier, "pencil2")
    assert not helper.verifier_matches("md5abcdef", "pencil")
    assert not helper.verifier_matches("", "pencil")


def test_passfile_escapes_are_read(helper, tmp_path):
    f = tmp_path / "pgpass"
    f.write_text("# comment\n*:*:*:r1:a\\:b\\\\c\n*:*:*:r2:plain\n")
    assert helper.read_passfile(str(f)) == {"r1": "a:b\\c", "r2": "plain"}


def test_ensure_creates_root_only_file_and_keeps_existing(tmp_path):
    passfile = tmp_path / "secret" / "pgpass"
    done = _helper("ensure", "--passfile", str(passfile), "r_one", "r_two")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["r_one", "r_two"]
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(passfile.parent.stat().st_mode) == 0o700
    first = passfile.read_text()
    again = _helper("ensure", "--passfile", str(passfile), "r_one", "r_two", "r_three")
    assert again.stdout.split() == ["r_three"]
    assert passfile.read_text().startswith(first)
    lines = passfile.read_text().splitlines()
    assert len(lines) == 3 and len({line.split(":")[4] for line in lines}) == 3


def test_bad_role_name_is_refused(tmp_path):
    done = _helper("ensure", "--passfile", str(tmp_path / "p"), "bad;name")
    assert done.returncode == 2
    assert "invalid role name" in done.stderr


def test_apply_sets_a_password_postgresql_accepts_without_leaking(settings, scratch_role,
                                                                   tmp_path):
    passfile = tmp_path / "pgpass"
    assert _helper("ensure", "--passfile", str(passfile), scratch_role).returncode == 0
    password = passfile.read_text().split(":")[4].strip()
    port = str(settings.db_port)

    check = _helper("check", "--passfile", str(passfile), "--port", port, scratch_role)
    assert check.stdout.split() == [scratch_role]  # no password yet: stale

    seen: set[str] = set()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            seen.update(subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                       text=True, check=False).stdout.splitlines())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        applied = _helper("apply", "--passfile", str(passfile), "--port", port, scratch_role)
    finally:
        stop.set()
        sampler.join()
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split() == [scratch_role]
    assert password not in applied.stdout + applied.stderr
    assert not [args for args in seen if password in args]

    stored = superuser_psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{scratch_role}'")
    assert stored.startswith("SCRAM-SHA-256$4096:")
    # PostgreSQL accepts the password over TCP with scram-sha-256 ...
    with psycopg.connect(host="127.0.0.1", port=settings.db_port, dbname=settings.db_name,
                         user=scratch_role, passfile=str(passfile)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == scratch_role
    # ... the check now agrees, and a second apply changes nothing.
    again = _helper("check", "--passfile", str(passfile), "--port", port, scratch_role)
    assert again.stdout.strip() == ""
    assert _helper("apply", "--passfile", str(passfile), "--port", port,
                   scratch_role).stdout.strip() == ""
    # No SQL file is left behind with the verifier in it.
    assert not list(Path(tempfile.gettempdir()).glob("donnadb-pw.*"))


def test_a_drifted_password_is_detected(settings, scratch_role, tmp_path, helper):
    passfile = tmp_path / "pgpass"
    _helper("ensure", "--passfile", str(passfile), scratch_role)
    _helper("apply", "--passfile", str(passfile), "--port", str(settings.db_port), scratch_role)
    # Someone sets another password by hand: the deploy's check must see it.
    other = helper.scram_verifier("something-else")
    superuser_psql(f"ALTER ROLE \"{scratch_role}\" PASSWORD '{other}'")
    check = _helper("check", "--passfile", str(passfile), "--port", str(settings.db_port),
                    scratch_role)
    assert check.stdout.split() == [scratch_role]

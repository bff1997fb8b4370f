"""The deploy's steps from scratch, on a throwaway cluster: create, converge, then idle.

This is the "fresh host" path the shared 15/main cluster can no longer take: the
cluster, roles, passwords, database and schema are all created by the run.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from donnadb.config import Settings
from donnadb.migrate import discover
from tests.provision.deployrun import run_deploy

# Also on CI's machine without systemd, where the new cluster starts by pg_ctlcluster.
pytestmark = [pytest.mark.deploy, pytest.mark.both_hosts]

VERSION, CLUSTER, PORT = 15, "donna_fresh_test", 5472
MIGRATIONS = Path(__file__).resolve().parents[2] / "schema" / "migrations"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    base = tmp_path_factory.mktemp("fresh")
    env_file = base / "etc" / "donnadb.env"
    data = {
        "pg_cluster": CLUSTER,
        "pg_port": PORT,
        "db_passfile": base / "secret" / "pgpass",
        "donnadb_lib_dir": base / "lib",
        "donnadb_env_file": env_file,
    }
    # donnactl (the schema step) reads its settings from the env file the run writes.
    env = {"DONNADB_HOST_ENV": str(env_file)}
    subprocess.run(["pg_dropcluster", "--stop", str(VERSION), CLUSTER], capture_output=True,
                   check=False)
    try:
        first = run_deploy(deploy_file="tests/provision/fresh_deploy.py", data=data, env=env,
                           sample_ps=True)
        second = run_deploy(deploy_file="tests/provision/fresh_deploy.py", data=data, env=env)
        yield first, second, data, env_file, env
    finally:
        subprocess.run(["pg_dropcluster", "--stop", str(VERSION), CLUSTER],
                       capture_output=True, check=False)


def test_first_run_creates_everything(fresh):
    first, _, data, _, _ = fresh
    assert first.returncode == 0, first.output[-4000:]
    changed = " ".join(first.changed_operations())
    # "Start cluster" is systemd's unit where systemd runs, pg_ctlcluster elsewhere.
    for step in ("Create cluster", "Start cluster", "Converge roles",
                 "Generate missing role passwords", "Apply role passwords",
                 "Create database", "Bootstrap", "Write"):
        assert step in changed, step
    status = subprocess.run(["pg_lsclusters", "--no-header", str(VERSION), CLUSTER],
                            capture_output=True, text=True, check=True).stdout.split()
    assert status[3] == "online", status


def test_second_run_changes_nothing(fresh):
    _, second, _, _, _ = fresh
    assert second.returncode == 0, second.output[-4000:]
    assert second.totals["changed"] == 0, second.changed_operations()


def test_generated_passwords_work_and_never_showed(fresh, helper):
    first, second, data, env_file, _ = fresh
    passfile = Path(data["db_passfile"])
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    # The consumers (group donnadb) may enter it to reach their own passfiles.
    assert stat.S_IMODE(passfile.parent.stat().st_mode) == 0o750
    passwords = helper.read_passfile(str(passfile))
    s = Settings(_env_file=str(env_file))
    assert s.db_port == PORT
    assert set(passwords) == {s.db_role_migrator, s.db_role_app, s.db_role_readonly,
                              s.db_role_backup, s.db_role_monitor}
    for role, password in passwords.items():
        assert password not in first.output + second.output, role
        assert not [a for a in first.ps_samples if password in a], role
        with psycopg.connect(host="127.0.0.1", port=PORT, dbname=s.db_name, user=role,
                             passfile=str(passfile)) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role


def test_schema_was_applied_by_the_run(fresh):
    first, _, data, env_file, _ = fresh
    if "has no `migrate` command" in first.output:
        pytest.fail("donnactl migrate is missing: the deploy could not apply the schema")
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-XAt", "-p", str(PORT), "-d", "donna",
         "-c", "SELECT count(*) || ' ' || max(version) FROM public.schema_migrations"],
        capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    shipped = discover(MIGRATIONS)
    assert out == f"{len(shipped)} {shipped[-1].version}"  # every file, up to the latest


def test_a_password_changed_behind_its_back_is_put_back(fresh, helper):
    _, _, data, env_file, env = fresh
    s = Settings(_env_file=str(env_file))
    other = helper.scram_verifier("set-by-hand")
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-p", str(PORT),
                    "-c", f"ALTER ROLE {s.db_role_readonly} PASSWORD '{other}'"],
                   capture_output=True, check=True, cwd="/")
    run = run_deploy(deploy_file="tests/provision/fresh_deploy.py", data=data, env=env)
    assert run.returncode == 0, run.output[-4000:]
    assert [op for op in run.changed_operations() if "Apply role passwords" in op]
    with psycopg.connect(host="127.0.0.1", port=PORT, dbname=s.db_name,
                         user=s.db_role_readonly, passfile=str(data["db_passfile"])) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == s.db_role_readonly

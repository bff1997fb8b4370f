"""The whole deploy on this machine: idempotent, leaves the cluster running, leaks nothing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.provision.deployrun import ROOT
from tests.support import superuser_psql

# Also on CI's machine without systemd: the deploy takes other paths there (cron,
# pg_ctlcluster), and must be as quiet and as secret-free on its second run.
pytestmark = [pytest.mark.deploy, pytest.mark.both_hosts]

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


def test_second_run_reports_no_changes(redeployed):
    totals = redeployed.totals
    assert totals["error"] == 0
    assert totals["changed"] == 0, redeployed.changed_operations()
    assert totals["no_change"] == totals["hosts"] > 10


def test_results_table_parser_sees_changes(deployed):
    # The parser the idempotence test relies on must be able to see a change: the
    # first deploy of a session reports changed operations exactly when it says so.
    totals = deployed.totals
    assert totals["changed"] == len(deployed.changed_operations())


def test_cluster_is_running_after_deploy(deployed):
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                         check=True).stdout
    status = {f"{b[0]}/{b[1]}": b[3] for b in (line.split() for line in out.splitlines())}
    assert status["15/main"].startswith("online")
    assert superuser_psql("SELECT 1") == "1"


MY_DEPLOYS = ("Install PostgreSQL", "Configure postgresql.conf", "Configure pg_hba.conf",
              "PostgreSQL service", "Roles", "Role passwords", "Database",
              "Host settings file", "Schema", "Operations jobs")


def test_every_operation_is_named(deployed):
    # pyinfra names an operation without name= after its function: "files.template".
    auto_name = re.compile(r"^[a-z_]+\.[a-z_]+\b")
    seen = set()
    for line in deployed.output.splitlines():
        if "--> Starting operation:" not in line:
            continue
        deploy_name, _, op_name = line.split("--> Starting operation:")[1].strip().rpartition(" | ")
        if deploy_name in MY_DEPLOYS:
            seen.add(deploy_name)
            assert not auto_name.match(op_name), line
    assert seen == set(MY_DEPLOYS)


def test_no_secret_in_ps_during_deploy(redeployed, passwords):
    assert len(redeployed.ps_samples) > 20, "ps was not sampled while the deploy ran"
    assert any("pgpasswords.py" in args for args in redeployed.ps_samples) or any(
        "pyinfra" in args for args in redeployed.ps_samples
    )
    for role, password in passwords.items():
        leaked = [args for args in redeployed.ps_samples if password in args]
        assert not leaked, f"password of {role} visible in ps"


def test_no_secret_in_pyinfra_output(deployed, redeployed, passwords):
    for role, password in passwords.items():
        assert password not in deployed.output, role
        assert password not in redeployed.output, role


def test_no_secret_in_postgres_log(redeployed, passwords):
    text = PG_LOG.read_text(encoding="utf-8", errors="replace")
    names = ",".join(passwords)
    verifiers = superuser_psql("SELECT rolname || '|' || rolpassword FROM pg_authid "
                               f"WHERE rolname = ANY (string_to_array('{names}', ','))")
    for role, password in passwords.items():
        assert password not in text, role
    for line in verifiers.splitlines():
        role, verifier = line.split("|", 1)
        assert verifier not in text, f"verifier of {role} in the server log"


def test_no_secret_in_repository(passwords):
    for role, password in passwords.items():
        found = subprocess.run(["git", "grep", "--untracked", "-F", "-l", "-e", password],
                               cwd=ROOT, capture_output=True, text=True, check=False)
        assert found.returncode == 1, f"password of {role} in {found.stdout.split()}"


def test_secret_files_are_root_only(deployed, settings):
    import grp
    import pwd

    consumers = grp.getgrnam("donnadb").gr_gid
    postgres = pwd.getpwnam("postgres")
    passfile = Path(settings.db_passfile)
    # (path, mode, owner): secrets are root's, or the backup jobs' user's (the signing
    # key); settings are readable by the consumers.
    for path, mode, owner in ((passfile, 0o600, (0, 0)),
                              (passfile.parent, 0o750, (0, consumers)),
                              (Path("/etc/donnadb/donnadb.env"), 0o640, (0, consumers)),
                              (Path("/etc/donnadb/backup-signing.key"), 0o600,
                               (postgres.pw_uid, postgres.pw_gid)),
                              (Path("/usr/local/lib/donnadb"), 0o700, (0, 0)),
                              # PostgreSQL and PgBouncer (both postgres) read the TLS key.
                              (Path("/etc/donnadb/tls/server.key"), 0o640,
                               (0, postgres.pw_gid))):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode, path
        assert (st.st_uid, st.st_gid) == owner, path


def test_env_file_matches_runtime_settings(deployed):
    from donnadb.config import Settings

    env = Settings(_env_file="/etc/donnadb/donnadb.env")
    defaults = Settings(_env_file=None)
    for field in ("db_host", "db_port", "db_name", "db_passfile", "db_role_owner",
                  "db_role_migrator", "db_role_app", "db_role_readonly", "db_role_backup",
                  "db_role_monitor"):
        assert getattr(env, field) == getattr(defaults, field), field
    lines = Path("/etc/donnadb/donnadb.env").read_text().splitlines()
    settings_lines = [line for line in lines if line and not line.startswith("#")]
    assert not [line for line in settings_lines if "PASSWORD" in line.split("=")[0].upper()]
    assert os.path.exists(env.db_passfile)

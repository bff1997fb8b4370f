"""``donnactl db check --security``: every promise OK on the deployed host, and each one
turns to FAIL, naming the cause, when the fault it guards against is made for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from donnadb.ops import security
from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

DONNACTL = str(Path(sys.executable).parent / "donnactl")


def check(*args: str) -> tuple[int, dict]:
    done = subprocess.run([DONNACTL, "db", "check", "--security", "--json", *args],
                          capture_output=True, text=True, cwd="/", timeout=120,
                          env={**os.environ, "OPS_LOG_FILE": "/dev/null"})
    return done.returncode, json.loads(done.stdout)


def failed(doc: dict) -> dict[str, str]:
    return {f["promise"]: f["detail"] for f in doc["security"] if not f["ok"]}


def test_the_deployed_host_keeps_every_promise(deployed):
    code, doc = check()
    assert code == 0 and doc["ok"], failed(doc)
    assert len(doc["security"]) >= 10


def test_a_superuser_function_without_search_path_fails(deployed, scratch_db):
    superuser_psql("CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql "
                   "SECURITY DEFINER AS 'SELECT 1'", dbname=scratch_db)
    code, doc = check("--dbname", scratch_db)
    assert code == 1
    assert "planted()" in failed(doc)["superuser SECURITY DEFINER functions pin search_path"]


def test_a_search_path_on_the_database_or_the_owner_role_owning_it_fails(
        deployed, scratch_db, settings):
    superuser_psql(f'ALTER DATABASE "{scratch_db}" SET search_path = public, pg_catalog;'
                   f'ALTER DATABASE "{scratch_db}" OWNER TO {settings.db_role_owner}')
    code, doc = check("--dbname", scratch_db)
    bad = failed(doc)
    assert code == 1
    assert "no search_path set on the database" in bad
    assert settings.db_role_owner in bad["database owned by postgres, not the owner role"]


def test_password_text_readable_by_readonly_fails(deployed, scratch_db):
    secret = uuid.uuid4().hex
    role = f"donna_chk_{secret[:8]}"
    superuser_psql(f"CREATE ROLE {role}")
    try:
        superuser_psql("SET pg_stat_statements.track_utility = on;\n"
                       f"ALTER ROLE {role} PASSWORD '{secret}'", dbname=scratch_db)
        _, doc = check("--dbname", scratch_db)
        assert any(p.startswith("no password text visible") for p in failed(doc))
    finally:
        superuser_psql("SELECT pg_stat_statements_reset(0, "
                       f"(SELECT oid FROM pg_database WHERE datname = '{scratch_db}'), 0)",
                       dbname=scratch_db)
        superuser_psql(f"DROP ROLE IF EXISTS {role}")


def test_a_secret_file_opened_to_others_fails(deployed, settings):
    passfile = settings.db_passfile.parent / "pgpass.d" / "donna-app"
    before = passfile.stat().st_mode & 0o777
    passfile.chmod(0o644)
    try:
        code, doc = check()
    finally:
        passfile.chmod(before)
    assert code == 1
    assert str(passfile) in failed(doc)["secret files readable by their owner only"]


def test_a_tcp_line_without_tls_in_pg_hba_fails(deployed, settings):
    hba = Path(f"/etc/postgresql/{settings.pg_version}/{settings.pg_cluster}/pg_hba.conf")
    before = hba.read_text()
    # pg_hba_file_rules reads the file as it is now; the server itself is never reloaded.
    hba.write_text(before + "host all donna_readonly 127.0.0.5/32 scram-sha-256\n")
    try:
        code, doc = check()
    finally:
        hba.write_text(before)
    assert code == 1
    [detail] = [d for p, d in failed(doc).items() if p.startswith("pg_hba:")]
    assert "host for donna_readonly admits TCP without TLS" in detail


def test_an_ops_job_moved_to_root_fails(tmp_path, monkeypatch):
    cron = tmp_path / "donna-ops"
    cron.write_text("* * * * * root cd / && /opt/donnadb/venv/bin/donnactl metrics\n")
    monkeypatch.setattr(security, "CRON_FILES", (cron,))
    monkeypatch.setattr(security, "OPS_UNITS", tmp_path)
    finding = security._jobs_finding()
    assert not finding.ok and "donnactl metrics" in finding.detail

"""pgaudit: role, privilege and DDL changes leave an AUDIT line in the server log; the
passwords and bind values they carry do not."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


def _log_since(offset: int) -> str:
    with PG_LOG.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def test_pgaudit_is_loaded_with_the_deployed_classes(deployed, settings):
    assert "pgaudit" in superuser_psql("SHOW shared_preload_libraries")
    assert superuser_psql("SHOW pgaudit.log") == "role, ddl"
    assert superuser_psql("SHOW pgaudit.log_parameter") == "off"
    assert superuser_psql("SELECT count(*) FROM pg_extension WHERE extname = 'pgaudit'",
                          dbname=settings.db_name) == "1"


@contextmanager
def as_owner(connect_as, dbname: str, settings):
    """A transaction of the migrator acting as the owner role (how migrations run)."""
    conn = connect_as("migrator", dbname=dbname)
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {settings.db_role_owner}")
        yield conn


def test_ddl_and_grants_by_the_migrator_are_audited(connect_as, scratch_db, settings):
    table = f"audit_probe_{uuid.uuid4().hex[:8]}"
    start = PG_LOG.stat().st_size
    with as_owner(connect_as, scratch_db, settings) as conn:
        conn.execute(f"CREATE TABLE public.{table} (id int)")
        conn.execute(f"GRANT SELECT ON public.{table} TO {settings.db_role_readonly}")
    log = _log_since(start)
    assert f"DDL,CREATE TABLE,TABLE,public.{table}" in log, log[-2000:]
    assert f"ROLE,GRANT,TABLE,,GRANT SELECT ON public.{table}" in log, log[-2000:]


def test_a_password_change_is_audited_without_the_password(settings):
    role = f"donna_audit_{uuid.uuid4().hex[:8]}"
    secret = f"SCRAM-SHA-256$4096:{uuid.uuid4().hex}"
    start = PG_LOG.stat().st_size
    superuser_psql(f"CREATE ROLE {role} LOGIN")
    try:
        superuser_psql(f"SET ROLE {role}; ALTER ROLE {role} PASSWORD '{secret}'")
    finally:
        superuser_psql(f"DROP ROLE IF EXISTS {role}")
    log = _log_since(start)
    assert f"ROLE,ALTER ROLE,,,ALTER ROLE {role} PASSWORD <REDACTED>" in log, log[-2000:]
    assert secret not in log


def test_bind_values_stay_out_of_audit_lines(connect_as, scratch_db, settings):
    marker = f"personal-{uuid.uuid4().hex}"
    start = PG_LOG.stat().st_size
    with as_owner(connect_as, scratch_db, settings) as conn:
        # A DDL statement built with a parameter: the audit line shows the text only.
        conn.execute("SELECT set_config('application_name', %s, true)", [marker])
        conn.execute("CREATE TEMP TABLE audit_probe (v text)")
        conn.execute("INSERT INTO audit_probe VALUES (%s)", [marker])
    assert marker not in _log_since(start)

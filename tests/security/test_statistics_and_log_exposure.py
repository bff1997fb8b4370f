"""No password text where a read-only login can see it: pg_stat_statements, the server
log and pg_stat_activity, read as donna_readonly (which holds pg_read_all_stats)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from tests.provision.deployrun import run_deploy
from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")
SEEN_BY_READONLY = """
SELECT query FROM pg_stat_statements WHERE query ILIKE '%password%'
UNION ALL
SELECT query FROM pg_stat_activity WHERE query ILIKE '%password%' AND pid <> pg_backend_pid()
"""


def _visible_to_readonly(connect_as, settings) -> list[str]:
    conn = connect_as("readonly", dbname=settings.db_name)
    return [row[0] for row in conn.execute(SEEN_BY_READONLY)]


@pytest.fixture
def throwaway_role():
    role = f"donna_sec_{uuid.uuid4().hex[:8]}"
    superuser_psql(f"CREATE ROLE {role} LOGIN")
    yield role
    superuser_psql(f"DROP ROLE IF EXISTS {role}")


def test_a_role_changing_its_password_leaves_no_trace_for_readonly(
        connect_as, settings, throwaway_role, deployed):
    # What `donnactl roles rotate` does: the role sends its own new SCRAM verifier.
    verifier = "SCRAM-SHA-256$4096:" + uuid.uuid4().hex  # the text that must not leak
    superuser_psql(f"SET ROLE {throwaway_role}; ALTER ROLE {throwaway_role} "
                   f"PASSWORD '{verifier}'", dbname=settings.db_name)
    seen = _visible_to_readonly(connect_as, settings)
    assert not [q for q in seen if verifier in q], "the verifier is readable by readonly"


def test_the_deploy_forgets_password_statements_kept_from_before(
        connect_as, settings, throwaway_role, deployed):
    secret = f"planted-{uuid.uuid4().hex}"
    # As kept by a server whose track_utility was still on (its default).
    superuser_psql("SET pg_stat_statements.track_utility = on;\n"
                   f"ALTER ROLE {throwaway_role} PASSWORD '{secret}'",
                   dbname=settings.db_name)
    assert [q for q in _visible_to_readonly(connect_as, settings) if secret in q]
    run = run_deploy()
    assert run.returncode == 0, run.output[-3000:]
    assert "Forget statements with passwords" in " ".join(run.changed_operations())
    assert not [q for q in _visible_to_readonly(connect_as, settings) if secret in q]


def test_bind_values_never_reach_the_server_log(connect_as, settings, deployed):
    marker = f"personal-{uuid.uuid4().hex}"
    conn = connect_as("app", dbname=settings.db_name)
    # Slow enough for log_min_duration_statement, which logs the statement's parameters.
    conn.execute("SELECT pg_sleep(%s), %s::text", [_past_slow_threshold(), marker])
    conn.rollback()
    # A failing statement: its log lines may show the parameters (the error itself does
    # not quote the value here; one that fails *on* the value quotes it in its message).
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0 WHERE %s::text IS NOT NULL", [marker])
    conn.rollback()
    assert marker not in PG_LOG.read_text(encoding="utf-8", errors="replace")


def _past_slow_threshold() -> float:
    """Seconds just past log_min_duration_statement (pg_settings gives it in ms)."""
    ms = superuser_psql("SELECT setting FROM pg_settings "
                        "WHERE name = 'log_min_duration_statement'")
    return int(ms) / 1000 + 0.1

"""The database bootstrap and its live check agree with each other."""

from __future__ import annotations

import pytest

from donnadb import db
from donnadb.provision import database
from tests.support import render_database_sql, superuser_psql


def _problems(deploy_settings, dbname: str) -> list[str]:
    _, marker = database.bootstrap_sql(deploy_settings)
    out = superuser_psql(database.check_sql(deploy_settings, marker), dbname=dbname)
    return [line for line in out.splitlines() if line]


@pytest.mark.deploy
def test_deployed_database_passes_the_check(deployed, deploy_settings, settings):
    assert _problems(deploy_settings, settings.db_name) == []
    owner = superuser_psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                           f"WHERE datname = '{settings.db_name}'")
    assert owner == "postgres"  # the owner role owns the schemas, not the database
    extensions = superuser_psql("SELECT string_agg(extname, ',' ORDER BY extname) "
                                "FROM pg_extension", dbname=settings.db_name)
    assert {"pg_partman", "pg_stat_statements"} <= set(extensions.split(","))


def test_check_finds_drift_and_the_bootstrap_clears_it(deploy_settings, empty_db):
    # A scratch database bootstrapped like the deployed one lacks only the marker.
    assert _problems(deploy_settings, empty_db) == [
        "bootstrap marker differs (template or role names changed)"
    ]
    app = deploy_settings.role("app")
    superuser_psql(f'GRANT CREATE ON SCHEMA public TO PUBLIC; '
                   f'CREATE TABLE drifted (id int); REVOKE ALL ON drifted FROM "{app}"; '
                   f'ALTER DEFAULT PRIVILEGES FOR ROLE "{deploy_settings.role("owner")}" '
                   f'IN SCHEMA public REVOKE INSERT ON TABLES FROM "{app}"',
                   dbname=empty_db)
    problems = _problems(deploy_settings, empty_db)
    assert "PUBLIC has privileges on schema public" in problems
    assert f"{app} lacks SELECT on public.drifted" in problems
    assert f"default privilege INSERT on tables for {app} missing" in problems
    sql, _ = database.bootstrap_sql(deploy_settings)
    superuser_psql(sql, dbname=empty_db)
    assert _problems(deploy_settings, empty_db) == []


def test_rendered_bootstrap_is_the_tests_bootstrap(deploy_settings, settings):
    # tests/support renders the same template for scratch databases.
    sql, marker = database.bootstrap_sql(deploy_settings)
    assert render_database_sql(settings).strip() in sql
    assert marker in sql


def test_every_bootstrapped_database_is_reachable_through_pgbouncer(settings, empty_db):
    # The app role's default path (PGBOUNCER_PORT in donnadb.env): PgBouncer's `*` entry
    # logs it into a scratch database with the lookup its bootstrap installed.
    assert settings.pgbouncer_port, "the deploy writes PGBOUNCER_PORT to donnadb.env"
    with db.connect("app", settings=settings, dbname=empty_db, autocommit=True,
                    prepare_threshold=None) as conn:
        assert conn.info.port == settings.pgbouncer_port
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (settings.db_role_app, empty_db)


def test_check_sees_a_missing_pgbouncer_lookup(deploy_settings, empty_db):
    sql, _ = database.bootstrap_sql(deploy_settings)
    superuser_psql(sql, dbname=empty_db)
    superuser_psql("DROP FUNCTION pgbouncer.user_lookup(text)", dbname=empty_db)
    assert _problems(deploy_settings, empty_db) == ["pgbouncer.user_lookup missing or changed"]
    superuser_psql(sql, dbname=empty_db)
    assert _problems(deploy_settings, empty_db) == []

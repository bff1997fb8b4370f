"""Each role can do what it should and is refused the rest; drift is repaired."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from donnadb import db
from donnadb.errors import ConfigError
from donnadb.provision.roles import role_statements
from donnadb.provision.settings import RoleSpec, _role_settings
from tests.provision.deployrun import run_deploy
from tests.support import superuser_psql

DENIED = psycopg.errors.InsufficientPrivilege


def _try(conn: psycopg.Connection, statement: str):
    """Run one statement in its own transaction; re-raise its error, always roll back."""
    with conn.transaction(force_rollback=True):
        conn.execute(statement)


@pytest.fixture
def scratch_table(settings, empty_db):
    """A table made the way migrations make them (migrator, SET ROLE owner)."""
    with db.connection("migrator", settings=settings, dbname=empty_db) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.db_role_owner)))
        conn.execute("CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " body text NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES ('one'), ('two')")
    return empty_db


def test_app_reads_and_writes_rows(settings, connect_as, scratch_table):
    conn = connect_as("app", dbname=scratch_table)
    conn.execute("INSERT INTO notes (body) VALUES ('three')")
    conn.execute("UPDATE notes SET body = 'uno' WHERE body = 'one'")
    conn.execute("DELETE FROM notes WHERE body = 'two'")
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
    conn.commit()


@pytest.mark.parametrize("statement", [
    "CREATE TABLE app_made (id int)",
    "DROP TABLE notes",
    "TRUNCATE notes",
    "ALTER TABLE notes ADD COLUMN x int",
    "CREATE INDEX ON notes (body)",
])
def test_app_has_no_ddl_and_no_truncate(connect_as, scratch_table, statement):
    conn = connect_as("app", dbname=scratch_table)
    with pytest.raises(DENIED):
        _try(conn, statement)


@pytest.mark.parametrize("statement", [
    "INSERT INTO notes (body) VALUES ('x')",
    "UPDATE notes SET body = 'x'",
    "DELETE FROM notes",
    "TRUNCATE notes",
    "CREATE TABLE ro_made (id int)",
])
def test_readonly_cannot_write(connect_as, scratch_table, statement):
    conn = connect_as("readonly", dbname=scratch_table)
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
    with pytest.raises(DENIED):
        _try(conn, statement)


def test_backup_reads_everything_and_writes_nothing(connect_as, scratch_table):
    conn = connect_as("backup", dbname=scratch_table)
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) >= 0 FROM partman.part_config").fetchone()[0]
    with pytest.raises(DENIED):
        _try(conn, "INSERT INTO notes (body) VALUES ('x')")


def test_monitor_reads_statistics_never_data(connect_as, scratch_table):
    conn = connect_as("monitor", dbname=scratch_table)
    # What postgres_exporter and its custom query read (pg_monitor) ...
    assert conn.execute("SELECT count(*) >= 1 FROM pg_stat_activity "
                        "WHERE query IS NOT NULL AND usename IS NOT NULL").fetchone()[0]
    assert conn.execute("SELECT count(*) >= 0 FROM public.pg_stat_statements").fetchone()[0]
    assert conn.execute("SELECT pg_is_in_recovery() IS NOT NULL").fetchone()[0]
    # ... and not one row of a table, nor the password verifiers, nor a write.
    for statement in ("SELECT count(*) FROM notes", "INSERT INTO notes (body) VALUES ('x')",
                      "SELECT * FROM pg_catalog.pg_authid", "CREATE TABLE mon_made (id int)"):
        with pytest.raises(DENIED):
            _try(conn, statement)


def test_migrator_creates_objects_owned_by_owner(settings, connect_as, empty_db):
    conn = connect_as("migrator", dbname=empty_db)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.db_role_owner)))
    conn.execute("CREATE TABLE made_by_migration (id int)")
    owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                         "WHERE relname = 'made_by_migration'").fetchone()[0]
    assert owner == settings.db_role_owner
    conn.commit()
    # ... and the default privileges give the app role its rights on it.
    app = connect_as("app", dbname=empty_db)
    app.execute("INSERT INTO made_by_migration VALUES (1)")


@pytest.mark.parametrize("kind", ["app", "readonly", "backup", "monitor"])
def test_login_roles_cannot_create_in_deployed_database(connect_as, kind):
    conn = connect_as(kind)
    with pytest.raises(DENIED):
        _try(conn, "CREATE TABLE must_not_exist (id int)")


def test_owner_cannot_log_in(settings):
    # A login attempt fails at the password check before PostgreSQL looks at LOGIN, so
    # the role's catalogue row is the proof: NOLOGIN, and no password to guess either.
    row = superuser_psql("SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid "
                         f"WHERE rolname = '{settings.db_role_owner}'")
    assert row == "f|t"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=settings.db_port, dbname=settings.db_name,
                        user=settings.db_role_owner, password="x", passfile="/dev/null",
                        connect_timeout=5)


@pytest.mark.parametrize("password", ["wrong-password", None])
@pytest.mark.parametrize("host", ["127.0.0.1", "/var/run/postgresql"])
def test_no_login_without_the_password(settings, password, host):
    params = dict(host=host, port=settings.db_port, dbname=settings.db_name,
                  user=settings.db_role_app, passfile="/dev/null", connect_timeout=5)
    if password:
        params["password"] = password
    with pytest.raises(psycopg.OperationalError,
                       match="password authentication failed|no password supplied"):
        psycopg.connect(**params)


def test_each_login_role_connects_with_the_passfile(settings, connect_as):
    for kind in ("migrator", "app", "readonly", "backup", "monitor"):
        conn = connect_as(kind)
        assert conn.execute("SELECT current_user").fetchone()[0] == settings.role(kind)


def test_role_statements_fix_only_drift():
    owner = RoleSpec("owner", "o", login=False)
    mig = RoleSpec("migrator", "m", login=True, connlimit=5, member_of=("o",))
    app = RoleSpec("app", "a", login=True)
    base = dict(superuser=False, createdb=False, createrole=False, inherit=True,
                replication=False, bypassrls=False)
    current = {
        "o": {**base, "login": False, "connlimit": -1, "member_of": set()},
        "m": {**base, "login": True, "connlimit": 5, "member_of": {"o"}},
        "a": {**base, "login": True, "connlimit": -1, "member_of": set()},
    }
    assert role_statements([owner, mig, app], current) == []
    current["a"] = {**current["a"], "superuser": True, "login": False, "member_of": {"o"}}
    current["m"] = {**current["m"], "connlimit": 50, "member_of": set()}
    assert role_statements([owner, mig, app], current) == [
        'ALTER ROLE "m" WITH CONNECTION LIMIT 5;',
        'GRANT "o" TO "m";',
        'ALTER ROLE "a" WITH NOSUPERUSER LOGIN;',
        'REVOKE "o" FROM "a";',
    ]
    created = role_statements([owner], None)
    assert created == ['CREATE ROLE "o" WITH NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT '
                       'NOREPLICATION NOBYPASSRLS NOLOGIN CONNECTION LIMIT -1;']


def test_role_settings_are_set_changed_and_reset_only_where_they_differ():
    base = dict(superuser=False, createdb=False, createrole=False, inherit=True,
                replication=False, bypassrls=False, login=True, connlimit=-1,
                member_of=set())
    app = RoleSpec("app", "a", login=True,
                   settings=(("lock_timeout", "5s"), ("statement_timeout", "30s")))
    same = {"a": {**base, "settings": {"statement_timeout": "30s", "lock_timeout": "5s",
                                       "search_path": "x"}}}
    assert role_statements([app], same) == []
    drifted = {"a": {**base, "settings": {"statement_timeout": "0",
                                          "idle_session_timeout": "1h"}}}
    assert role_statements([app], drifted) == [
        """ALTER ROLE "a" SET statement_timeout = '30s';""",
        """ALTER ROLE "a" SET lock_timeout = '5s';""",
        'ALTER ROLE "a" RESET idle_session_timeout;',
    ]


@pytest.mark.parametrize("raw, match", [
    ({"root": {"statement_timeout": "1s"}}, "'root' is not one of"),
    ({"app": {"search_path": "public"}}, "search_path = 'public'"),
    ({"app": {"statement_timeout": "1s'; DROP ROLE x; --"}}, "statement_timeout"),
])
def test_bad_role_settings_are_refused(raw, match):
    with pytest.raises(ConfigError, match=match):
        _role_settings(raw)


@pytest.mark.deploy
def test_deploy_repairs_role_drift(deployed, settings):
    backup, app = settings.db_role_backup, settings.db_role_app
    superuser_psql(f'ALTER ROLE "{backup}" CREATEDB CREATEROLE CONNECTION LIMIT 77')
    try:
        run = run_deploy()
    finally:
        # Whatever happened, leave no drift behind for the other tests.
        fixed = superuser_psql(f"SELECT rolcreatedb FROM pg_roles WHERE rolname = '{backup}'")
        if fixed != "f":
            superuser_psql(f'ALTER ROLE "{backup}" NOCREATEDB NOCREATEROLE CONNECTION LIMIT 5')
    assert run.returncode == 0, run.output[-3000:]
    assert any("Converge roles" in op for op in run.changed_operations())
    row = superuser_psql(
        f"SELECT rolcreatedb, rolcreaterole, rolconnlimit, rolcanlogin FROM pg_roles "
        f"WHERE rolname = '{backup}'"
    )
    assert row == "f|f|5|t"
    assert superuser_psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{app}'") == "f"

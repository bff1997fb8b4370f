"""The audit trail is append-only for the application role: it may insert into system_logs,
never change or delete a row, through the parent or any partition (those that exist, the
default one, and those pg_partman makes later); `users forget` still erases a user's logs
(through the owner's function) and keeps every erasure record."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from donnadb import db
from donnadb.migrate.check import run_checks
from donnadb.ops import partitions, users
from donnadb.provision import bootstrap
from tests.support import render_database_sql, superuser_psql

DENIED = psycopg.errors.InsufficientPrivilege


def _log(conn, user_id: str = "nobody") -> None:
    conn.execute("INSERT INTO system_logs (level, message, context) VALUES "
                 "('info', 'login', jsonb_build_object('user_id', %s::text))", (user_id,))


def _partitions(dbname: str) -> list[str]:
    return superuser_psql("SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                          "ON c.oid = i.inhrelid WHERE i.inhparent = 'system_logs'::regclass "
                          "ORDER BY 1", dbname).split()


def _assert_append_only(settings, dbname: str, tables: list[str]) -> None:
    with db.connect("app", settings=settings, dbname=dbname, autocommit=True) as conn:
        _log(conn)  # inserting still works
        for table in tables:
            name = sql.Identifier("public", table)
            for statement in (sql.SQL("UPDATE {} SET message = 'forged'").format(name),
                              sql.SQL("DELETE FROM {}").format(name),
                              sql.SQL("TRUNCATE {}").format(name)):
                with pytest.raises(DENIED, match="permission denied"):
                    conn.execute(statement)
    assert superuser_psql("SELECT count(*) FROM system_logs WHERE message = 'forged'",
                          dbname) == "0"


def test_the_app_role_may_insert_but_not_change_or_delete_logs(settings, scratch_db):
    parts = _partitions(scratch_db)
    assert "system_logs_default" in parts and len(parts) > 4
    _assert_append_only(settings, scratch_db, ["system_logs", *parts])
    assert int(superuser_psql("SELECT count(*) FROM system_logs", scratch_db)) == 1


def test_partitions_made_later_are_append_only_too(settings, scratch_db, tmp_path):
    before = set(_partitions(scratch_db))
    more = settings.model_copy(update={"partition_premake": 9, "log_archive_dir": tmp_path})
    created = partitions.maintain(more, dbname=scratch_db)["created"]
    assert created and set(created) == set(_partitions(scratch_db)) - before
    _assert_append_only(settings, scratch_db, created)


def test_a_rerun_bootstrap_does_not_give_the_rights_back(settings, scratch_db):
    """What a re-run deploy and every restore do: the bootstrap's grants, then its revokes."""
    superuser_psql(render_database_sql(settings), scratch_db)
    _assert_append_only(settings, scratch_db, ["system_logs", *_partitions(scratch_db)])
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        assert conn.execute("SELECT has_function_privilege("
                            "'public.forget_user_logs(uuid)', 'EXECUTE')").fetchone()[0]


#: Runs after every DDL statement (GRANT and REVOKE included) of the watched database:
#: records each forbidden right the application role holds at that moment.
WATCH = """
CREATE SCHEMA watch;
CREATE TABLE watch.seen (tag text, what text);
CREATE FUNCTION watch.rights() RETURNS event_trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO watch.seen
    SELECT TG_TAG, format('%s on %s', p, t.relid::regclass)
    FROM pg_partition_tree(to_regclass('public.system_logs')) AS t,
         unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p
    WHERE has_table_privilege('{app}', t.relid, p)
    UNION ALL
    SELECT TG_TAG, format('%s on public.schema_migrations', p)
    FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p
    WHERE to_regclass('public.schema_migrations') IS NOT NULL
      AND has_table_privilege('{app}', 'public.schema_migrations'::regclass, p);
    INSERT INTO watch.seen VALUES (TG_TAG, 'checked');
END $$;
CREATE EVENT TRIGGER watch_rights ON ddl_command_end EXECUTE FUNCTION watch.rights();
"""


def test_the_bootstrap_never_gives_the_app_a_forbidden_right_even_for_a_moment(
        settings, scratch_db):
    """Each statement of the bootstrap commits on its own (a deploy, a restore): after
    every one of them, the app role holds no UPDATE/DELETE on the audit trail and nothing
    on the migration ledger; the other tables' rights it lost come back."""
    app = settings.role("app")
    superuser_psql(f"REVOKE ALL ON users, messages FROM {app}", scratch_db)
    superuser_psql(WATCH.format(app=app), scratch_db)
    superuser_psql(render_database_sql(settings), scratch_db)
    superuser_psql("DROP EVENT TRIGGER watch_rights", scratch_db)
    seen = superuser_psql("SELECT tag || ': ' || what FROM watch.seen", scratch_db).splitlines()
    assert seen.count("GRANT: checked") >= 5, seen  # it watched the grants
    assert [s for s in seen if not s.endswith(": checked")] == []
    _assert_append_only(settings, scratch_db, ["system_logs", *_partitions(scratch_db)])
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = name")
        conn.execute("DELETE FROM messages WHERE false")
        with pytest.raises(DENIED):
            conn.execute("SELECT 1 FROM schema_migrations")


def test_forget_erases_the_logs_and_keeps_its_record_out_of_reach(settings, scratch_db):
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        uid = str(conn.execute("INSERT INTO users (clerk_id) VALUES ('u_forget') "
                               "RETURNING id").fetchone()[0])
        _log(conn, uid)
        _log(conn, uid)
    assert users.forget_user(settings, uid, dbname=scratch_db)["logs"] == 2
    left = superuser_psql(f"SELECT message FROM system_logs WHERE context->>'user_id' = '{uid}'",
                          scratch_db)
    assert left == "user erased (GDPR)"
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        # The erasure record cannot be deleted directly, nor through the function by
        # bringing the user back under the same id.
        with pytest.raises(DENIED):
            conn.execute("DELETE FROM system_logs WHERE context->>'user_id' = %s", (uid,))
        conn.execute("INSERT INTO users (id, clerk_id) VALUES (%s, 'u_again')", (uid,))
        assert conn.execute("SELECT public.forget_user_logs(%s)", (uid,)).fetchone()[0] == 0
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute("SELECT public.forget_user_logs(gen_random_uuid())")
    assert superuser_psql(f"SELECT count(*) FROM system_logs WHERE context->>'user_id' = '{uid}'",
                          scratch_db) == "1"


def test_only_the_app_role_may_run_the_erasing_function(settings, scratch_db):
    with db.connect("readonly", settings=settings, dbname=scratch_db, autocommit=True) as conn, \
            pytest.raises(DENIED, match="permission denied for function forget_user_logs"):
        conn.execute("SELECT public.forget_user_logs(gen_random_uuid())")
    assert superuser_psql("SELECT has_function_privilege('public', "
                          "'public.forget_user_logs(uuid)', 'EXECUTE')", scratch_db) == "f"
    config = superuser_psql("SELECT p.prosecdef, p.proconfig FROM pg_proc p "
                            "WHERE p.oid = 'public.forget_user_logs(uuid)'::regprocedure",
                            scratch_db)
    assert config == 't|{"search_path=pg_catalog, pg_temp"}'


def _deploy_check(settings, dbname: str) -> list[str]:
    """The deploy's live check of the bootstrap (database_check.sql.j2), marker aside."""
    roles = {kind: settings.role(kind) for kind in bootstrap.ROLE_KINDS}
    lookup = bootstrap.lookup_values(bootstrap.AUTH_USER,
                                     [roles[k] for k in bootstrap.LOOKUP_KINDS])
    check = bootstrap.render("database_check.sql.j2", marker="", **roles,
                             auth_user=lookup["auth_user"], lookup_marker=lookup["marker"])
    return [r for r in superuser_psql(check, dbname).splitlines() if "marker" not in r]


def test_the_checks_report_a_right_given_back(settings, scratch_db):
    assert _deploy_check(settings, scratch_db) == []
    assert next(c for c in run_checks(settings=settings, dbname=scratch_db).checks
                if c.name == "role privileges").ok
    app = settings.role("app")
    superuser_psql(f"GRANT DELETE ON system_logs_default TO {app}; "
                   f"GRANT UPDATE ON system_logs TO {app}; "
                   "GRANT EXECUTE ON FUNCTION forget_user_logs(uuid) TO PUBLIC", scratch_db)
    assert sorted(_deploy_check(settings, scratch_db)) == sorted([
        f"{app} may UPDATE public.system_logs", f"{app} may DELETE public.system_logs_default",
        f"public.forget_user_logs(uuid): PUBLIC may run it or {app} may not"])
    privileges = next(c for c in run_checks(settings=settings, dbname=scratch_db).checks
                      if c.name == "role privileges")
    assert not privileges.ok and f"{app} may UPDATE system_logs" in privileges.detail


def test_the_erasure_ledger_is_append_only_for_the_app_role_even_after_a_bootstrap(
        settings, scratch_db):
    """A deleted erasure record would let a restore bring a forgotten user back."""
    for rerun in (False, True):
        if rerun:  # what a re-run deploy and every restore do
            superuser_psql(render_database_sql(settings), scratch_db)
        with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
            conn.execute("INSERT INTO erasures (user_id) VALUES (gen_random_uuid())")
            for statement in ("UPDATE erasures SET erased_at = now()", "DELETE FROM erasures",
                              "TRUNCATE erasures"):
                with pytest.raises(DENIED, match="permission denied"):
                    conn.execute(statement)
    assert superuser_psql("SELECT count(*) FROM erasures", scratch_db) == "2"


def test_the_checks_report_an_app_role_that_may_delete_erasure_records(settings, scratch_db):
    assert _deploy_check(settings, scratch_db) == []
    app = settings.role("app")
    superuser_psql(f"GRANT DELETE ON erasures TO {app}", scratch_db)
    assert _deploy_check(settings, scratch_db) == [f"{app} may DELETE public.erasures"]
    privileges = next(c for c in run_checks(settings=settings, dbname=scratch_db).checks
                      if c.name == "role privileges")
    assert not privileges.ok and f"{app} may DELETE erasures" in privileges.detail

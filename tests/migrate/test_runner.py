"""The runner against real scratch databases: apply, history, refusal, lock, dry run."""

from __future__ import annotations

import shutil
import threading

import psycopg
import pytest

from donnadb.errors import DatabaseError, MigrationError
from donnadb.migrate import apply_migrations, discover, get_status, plan
from donnadb.migrate.runner import LOCK_KEY

PUBLIC_RELATIONS = """
SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'i', 'S', 'v')
   -- pg_stat_statements' views belong to the extension (and postgres), not to us.
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
"""


@pytest.fixture
def schema_copy(tmp_path, settings):
    """A private copy of schema/migrations and settings pointing at it."""
    target = tmp_path / "migrations"
    shutil.copytree(settings.schema_dir, target)
    return target, settings.model_copy(update={"schema_dir": target})


def test_apply_records_history_and_is_idempotent(settings, empty_db, connect_as):
    files = discover(settings.schema_dir)
    applied = apply_migrations(settings=settings, dbname=empty_db)
    assert [m.version for m in applied] == [f.version for f in files]
    assert apply_migrations(settings=settings, dbname=empty_db) == []
    rows = connect_as("migrator", dbname=empty_db).execute(
        "SELECT version, checksum, duration_ms >= 0, applied_at <= now(), applied_by"
        " FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(f.version, f.checksum, True, True, settings.db_role_migrator) for f in files]
    status = get_status(settings=settings, dbname=empty_db)
    assert status.current_version == files[-1].version and not status.pending


def test_every_object_is_owned_by_the_owner_role(settings, scratch_db, connect_as):
    owners = {owner for _, owner in
              connect_as("migrator", dbname=scratch_db).execute(PUBLIC_RELATIONS).fetchall()}
    assert owners == {settings.db_role_owner}


def test_app_cannot_touch_the_history_readonly_can_read_it(scratch_db, connect_as):
    app = connect_as("app", dbname=scratch_db, autocommit=True)
    for stmt in ("SELECT * FROM schema_migrations",
                 "DELETE FROM schema_migrations",
                 "INSERT INTO schema_migrations (version, name, checksum, duration_ms)"
                 " VALUES ('9999', 'x', 'x', 0)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(stmt)
    ro = connect_as("readonly", dbname=scratch_db)
    assert ro.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1


def test_an_edited_applied_migration_is_refused(schema_copy, empty_db):
    target, s = schema_copy
    apply_migrations(settings=s, dbname=empty_db)
    first = sorted(target.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- a harmless-looking edit\n")
    (target / "9999_new_table.sql").write_text("CREATE TABLE must_not_exist (id int);\n")
    for call in (apply_migrations, plan):
        with pytest.raises(MigrationError, match=f"{first.name} was edited after it was applied"):
            call(settings=s, dbname=empty_db)
    assert get_status(settings=s, dbname=empty_db).problems
    first.unlink()
    with pytest.raises(MigrationError, match="was removed from disk"):
        apply_migrations(settings=s, dbname=empty_db)


def test_a_failing_migration_rolls_back_alone(schema_copy, empty_db, connect_as):
    target, s = schema_copy
    (target / "9998_half_done.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n")
    with pytest.raises(MigrationError, match="9998_half_done.sql failed and was rolled back"):
        apply_migrations(settings=s, dbname=empty_db)
    conn = connect_as("migrator", dbname=empty_db)
    assert conn.execute("SELECT to_regclass('public.half_done')").fetchone()[0] is None
    status = get_status(settings=s, dbname=empty_db)
    assert [p.version for p in status.pending] == ["9998"]
    assert status.current_version == discover(target)[-2].version


def test_two_concurrent_runners_apply_once(schema_copy, empty_db, connect_as):
    target, s = schema_copy
    # A slow last migration keeps the lock held long enough for the runners to collide.
    (target / "9999_slow.sql").write_text("SELECT pg_sleep(0.5);\n")
    results: list[list] = []
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def runner() -> None:
        try:
            go.wait()
            results.append(apply_migrations(settings=s, dbname=empty_db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, len(discover(target))]
    count = connect_as("migrator", dbname=empty_db).execute(
        "SELECT count(*), count(DISTINCT version) FROM schema_migrations").fetchone()
    assert count == (len(discover(target)),) * 2


def test_a_runner_gives_up_when_the_lock_stays_taken(settings, empty_db, connect_as):
    holder = connect_as("migrator", dbname=empty_db, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    with pytest.raises(MigrationError, match="another migration runner held the lock"):
        apply_migrations(settings=settings, dbname=empty_db, lock_wait_s=1)
    assert get_status(settings=settings, dbname=empty_db).current_version is None


def test_plan_executes_nothing(schema_copy, empty_db, connect_as):
    target, s = schema_copy
    conn = connect_as("migrator", dbname=empty_db, autocommit=True)
    before = conn.execute(PUBLIC_RELATIONS).fetchall()
    assert [m.version for m in plan(settings=s, dbname=empty_db)] == [
        f.version for f in discover(target)]
    # Not even the history table is created by a dry run.
    assert conn.execute(PUBLIC_RELATIONS).fetchall() == before == []
    apply_migrations(settings=s, dbname=empty_db)
    (target / "9999_later.sql").write_text("CREATE TABLE later (id int);\n")
    assert [m.name for m in plan(settings=s, dbname=empty_db)] == ["later"]
    assert conn.execute("SELECT to_regclass('public.later')").fetchone()[0] is None


def test_dead_database_is_a_database_error(settings, empty_db):
    dead = settings.model_copy(update={"db_port": 1})
    with pytest.raises(DatabaseError, match="cannot connect"):
        apply_migrations(settings=dead, dbname=empty_db)


def test_a_no_transaction_migration_runs_statement_by_statement_and_reruns(
        schema_copy, empty_db, connect_as):
    """CREATE INDEX CONCURRENTLY is refused inside a transaction: a file marked
    ``-- donnadb: no-transaction`` runs its statements one by one, as the owner, and is
    recorded only after the last, so a failure half-way leaves the statements before it
    applied and the whole file is rerun once the cause is fixed."""
    target, s = schema_copy
    apply_migrations(settings=s, dbname=empty_db)
    migrator = connect_as("migrator", dbname=empty_db, autocommit=True)
    migrator.execute("CREATE TABLE gate (id int)")  # the migrator's, not the owner's
    (target / "9999_concurrent.sql").write_text(
        "-- donnadb: no-transaction\n"
        "-- one statement\n-- over two lines\n"
        "DROP INDEX CONCURRENTLY IF EXISTS idx_users_name_test;\n"
        "CREATE INDEX CONCURRENTLY idx_users_name_test\n    ON users (name);\n"
        "INSERT INTO gate VALUES (1);\n")
    with pytest.raises(MigrationError, match="outside a transaction.*rerun"):
        apply_migrations(settings=s, dbname=empty_db)
    assert migrator.execute("SELECT to_regclass('public.idx_users_name_test')"
                            ).fetchone()[0] == "idx_users_name_test"
    assert [p.version for p in get_status(settings=s, dbname=empty_db).pending] == ["9999"]
    # The session's role and lock timeout are put back after the failure.
    migrator.execute(f"GRANT INSERT ON gate TO {s.db_role_owner}")
    assert [m.version for m in apply_migrations(settings=s, dbname=empty_db)] == ["9999"]
    assert migrator.execute("SELECT count(*) FROM gate").fetchone()[0] == 1
    owner = migrator.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                             "WHERE relname = 'idx_users_name_test'").fetchone()[0]
    assert owner == s.db_role_owner


def test_a_no_transaction_file_without_a_final_semicolon_is_refused(schema_copy, empty_db):
    target, s = schema_copy
    (target / "9999_unended.sql").write_text(
        "-- donnadb: no-transaction\nCREATE INDEX CONCURRENTLY i ON users (name)\n")
    with pytest.raises(MigrationError, match="does not end with ';'"):
        apply_migrations(settings=s, dbname=empty_db)


def test_the_search_index_migration_replaces_an_interrupted_build(
        settings, empty_db, connect_as, tmp_path):
    """A concurrent build killed half-way leaves an INVALID index under the new name:
    the migration drops it and builds the real one (and drops the plan's index)."""
    for f in discover(settings.schema_dir):
        if f.version < "0006":
            shutil.copy(f.path, tmp_path / f.path.name)
    apply_migrations(settings=settings.model_copy(update={"schema_dir": tmp_path}),
                     dbname=empty_db)
    migrator = connect_as("migrator", dbname=empty_db, autocommit=True)
    owner = connect_as("migrator", dbname=empty_db, autocommit=True)
    owner.execute(f"SET ROLE {settings.db_role_owner}")
    owner.execute("INSERT INTO chat_sessions (chat_id) VALUES ('c1')")
    owner.execute("INSERT INTO messages (chat_session_id, role, content, sequence_number) "
                  "SELECT id, 'user', 'x', n FROM chat_sessions, generate_series(1, 2) n")
    with pytest.raises(psycopg.errors.UniqueViolation):
        owner.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_messages_chat_fts "
                      "ON messages (role)")
    assert migrator.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                            "'idx_messages_chat_fts'::regclass").fetchone()[0] is False
    apply_migrations(settings=settings, dbname=empty_db)
    row = migrator.execute(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indexrelid = 'idx_messages_chat_fts'::regclass").fetchone()
    assert row[0] is True
    assert "USING gin (chat_session_id, to_tsvector('english'::regconfig, content))" in row[1]
    assert migrator.execute("SELECT to_regclass('public.idx_messages_content_fts')"
                            ).fetchone()[0] is None

"""Each user's wrapped data key in the users row (migration 0014): the keys of a database
made before it move over intact, nothing about the users changes, and an erasure in a
restored copy of that older layout still destroys the key."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.types.json import Jsonb

from donnadb.crypto import keyfile, rotation
from donnadb.dal import PostgresDataAccess
from donnadb.dal.sealed import Sealer
from donnadb.migrate import apply_migrations, discover
from donnadb.ops import users

#: The old layout's sealed insert (0013), one user with its key in user_keys.
OLD_CREATE = """
SELECT create_sealed_user(%(id)s, %(clerk_id)s, %(email_sealed)s, %(name_sealed)s,
                          %(email_hmac)s, %(profile)s, %(preferences)s, NULL, NULL,
                          %(kek_id)s, %(wrapped_key)s)
"""
STAMPS = "SELECT id::text, updated_at FROM users ORDER BY id"


@pytest.fixture
def before_0014(settings, empty_db, tmp_path):
    """``empty_db`` migrated up to the layout with a user_keys table (0013)."""
    for f in discover(settings.schema_dir):
        if f.version < "0014":
            shutil.copy(f.path, tmp_path / f.path.name)
    apply_migrations(settings=settings.model_copy(update={"schema_dir": tmp_path}),
                     dbname=empty_db)
    return empty_db


def _old_user(conn, sealer: Sealer, clerk: str) -> str:
    uid = str(uuid.uuid4())
    dk = sealer.new_key(uid)
    cols = sealer.user_columns(dk, {"email": f"{clerk}@example.org", "name": clerk.title(),
                                    "profile": {"city": f"{clerk}-city"}, "preferences": {}})
    conn.execute(OLD_CREATE, {**cols, "id": uid, "clerk_id": clerk,
                              "profile": Jsonb(cols["profile"]),
                              "preferences": Jsonb(cols["preferences"]),
                              "kek_id": dk.kek_id, "wrapped_key": dk.wrapped})
    return uid


def test_the_migration_moves_every_key_into_its_row_and_changes_no_user(
        settings, sealed_settings, kek_file, before_0014, connect_as):
    app = connect_as("app", dbname=before_0014, autocommit=True)
    sealer = Sealer(sealed_settings)
    ids = [_old_user(app, sealer, f"user{n}") for n in range(5)]
    app.execute("INSERT INTO users (clerk_id) VALUES ('bare')")
    rewrapped = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    app.execute("UPDATE user_keys SET rewrapped_at = %s WHERE user_id = %s",
                (rewrapped, ids[0]))
    old_keys = dict(app.execute("SELECT user_id::text, (kek_id, wrapped_key, created_at) "
                                "FROM user_keys").fetchall())
    stamps = app.execute(STAMPS).fetchall()

    apply_migrations(settings=settings, dbname=before_0014)

    assert app.execute("SELECT to_regclass('public.user_keys')").fetchone()[0] is None
    moved = dict(app.execute("SELECT id::text, (kek_id, wrapped_key, key_created_at) FROM "
                             "users WHERE wrapped_key IS NOT NULL").fetchall())
    assert moved == old_keys and len(moved) == 5
    assert app.execute("SELECT key_rewrapped_at FROM users WHERE id = %s",
                       (ids[0],)).fetchone()[0] == rewrapped
    assert app.execute(STAMPS).fetchall() == stamps  # the copy is no change of a user
    # A half-written key is refused.
    with pytest.raises(psycopg.errors.CheckViolation, match="users_data_key_check"):
        app.execute("UPDATE users SET wrapped_key = NULL WHERE id = %s", (ids[1],))

    with PostgresDataAccess(sealed_settings, dbname=before_0014) as dal:
        for n, uid in enumerate(ids):
            user = dal.get_user_by_id(uid)
            assert (user["email"], user["profile"]) == (f"user{n}@example.org",
                                                        {"city": f"user{n}-city"})
        # The bare user's first personal value gives it a key, in its row.
        bare = dal.get_user_by_clerk_id("bare")["id"]
        assert dal.set_user_memory(bare, "context", "pet", "cat")
        assert dal.get_user_memory(bare, "context") == {"pet": "cat"}

    # A rotation re-wraps every key (in batches smaller than the users) and marks no
    # user as changed.
    stamps = app.execute(STAMPS).fetchall()
    new = keyfile.add_kek(kek_file).kek_id
    done = rotation.rotate(sealed_settings, dbname=before_0014, batch=2)
    assert (done["rewrapped"], done["left"]) == (6, 0)
    assert app.execute("SELECT count(*) FROM users WHERE kek_id = %s",
                       (new,)).fetchone()[0] == 6
    assert app.execute(STAMPS).fetchall() == stamps
    with PostgresDataAccess(sealed_settings, dbname=before_0014) as dal:
        assert dal.get_user_by_id(ids[4])["name"] == "User4"
        assert dal.get_user_memory(bare, "context") == {"pet": "cat"}


def test_an_erasure_in_a_copy_of_the_older_layout_destroys_the_key(
        settings, sealed_settings, before_0014, connect_as):
    """A restored backup (or a PITR copy) from before the migration keeps user_keys: the
    ledger's erasures are applied there too, key included."""
    app = connect_as("app", dbname=before_0014, autocommit=True)
    sealer = Sealer(sealed_settings)
    alice, bob = _old_user(app, sealer, "alice"), _old_user(app, sealer, "bob")

    erased = users.apply_ledger(settings, [{"id": alice, "erased_at": None}], before_0014)

    assert erased == [alice]
    left = app.execute("SELECT user_id::text FROM user_keys").fetchall()
    assert left == [(bob,)]
    record = app.execute("SELECT context FROM system_logs WHERE message = "
                         "'user erased again (restored backup)'").fetchone()[0]
    assert record["user_id"] == alice and record["data_key"] == 1

"""Sealed writes and reads with the data keys a process keeps unwrapped
(donnadb/crypto/keycache.py): one statement when the key is cached, and never a value
sealed under a key that is no longer the user's: another process erased the user and
made the same id again with a new key, or re-wrapped every key (`keys rotate`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from donnadb.crypto import keyfile
from donnadb.dal import ConflictError, PostgresDataAccess
from donnadb.dal.sealed import Sealer
from donnadb.ops import users
from tests.dal.conftest import sent_messages, traced_messages
from tests.support import crypto_settings, superuser_psql

DONNACTL = str(Path(sys.executable).parent / "donnactl")

# Process B making a user id again, with a new data key, as the importer would.
RECREATE = """
import sys
from donnadb import db
from donnadb.config import load_settings
from donnadb.dal.sealed import Sealer
settings = load_settings()
uid, dbname = sys.argv[1:3]
sealer = Sealer(settings)
dk = sealer.new_key(uid)
with db.connection("app", settings=settings, dbname=dbname) as conn:
    conn.execute("INSERT INTO users (id, clerk_id) VALUES (%s, 'made-again')", (uid,))
    sealer.save_key(conn, dk)
"""

#: The sealed writes, each as the value it writes and how a reader sees it.
WRITES = {
    "memory": (lambda dal, uid, v: dal.set_user_memory(uid, "context", "note", v),
               lambda dal, uid: dal.get_user_memory(uid, "context").get("note")),
    "profile": (lambda dal, uid, v: dal.set_user_memory(uid, "profile", "city", v),
                lambda dal, uid: dal.get_user_by_id(uid)["profile"].get("city")),
    "user": (lambda dal, uid, v: dal.update_user(uid, {"name": v}),
             lambda dal, uid: dal.get_user_by_id(uid)["name"]),
}


@pytest.fixture
def own_kek_file(tmp_path):
    """A key file of this test's own (a rotation adds a KEK to it)."""
    path = tmp_path / "fields.key"
    keyfile.generate(path)
    return path


def _env(kek_file: Path, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": str(kek_file),
            "OPS_LOG_FILE": str(tmp_path / "donnactl.jsonl"), "COLUMNS": "200"}


def _run(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd="/",
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def _wrapped(dbname: str, uid: str) -> bytes:
    return bytes.fromhex(superuser_psql(
        f"SELECT encode(wrapped_key, 'hex') FROM users WHERE id = '{uid}'", dbname))


def _user_with_cached_key(dal: PostgresDataAccess) -> str:
    uid = dal.create_user({"clerk_id": "kc", "email": "kc@example.org", "name": "Before",
                           "profile": {"city": "Before"}})
    dal.set_user_memory(uid, "context", "note", "before")
    assert dal.get_user_memory(uid, "context") == {"note": "before"}
    assert dal._sealer.cached_key(uid) is not None
    return uid


@pytest.mark.parametrize("write", WRITES)
def test_a_user_erased_and_made_again_elsewhere_gets_no_value_under_the_old_key(
        settings, pg_db, kek_file, tmp_path, write):
    sealed = crypto_settings(settings, kek_file)
    env = _env(kek_file, tmp_path)
    put, get = WRITES[write]
    with PostgresDataAccess(sealed, dbname=pg_db) as a:
        uid = _user_with_cached_key(a)
        old = a._sealer.cached_key(uid).wrapped
        # Process B: `users forget`, then the same id made again with a new key.
        _run([DONNACTL, "users", "forget", uid, "--yes", "--dbname", pg_db], env)
        _run([sys.executable, "-c", RECREATE, uid, pg_db], env)
        new = _wrapped(pg_db, uid)
        assert new != old and a._sealer.cached_key(uid).wrapped == old

        put(a, uid, "after")
        with PostgresDataAccess(sealed, dbname=pg_db) as reader:
            assert get(reader, uid) == "after"
        assert a._sealer.cached_key(uid).wrapped == new  # the stale key was replaced


def test_a_read_meeting_another_wrapped_key_than_the_cached_one_unwraps_it(
        settings, pg_db, kek_file, tmp_path):
    sealed = crypto_settings(settings, kek_file)
    env = _env(kek_file, tmp_path)
    with PostgresDataAccess(sealed, dbname=pg_db) as a:
        uid = _user_with_cached_key(a)
        _run([DONNACTL, "users", "forget", uid, "--yes", "--dbname", pg_db], env)
        _run([sys.executable, "-c", RECREATE, uid, pg_db], env)
        with PostgresDataAccess(sealed, dbname=pg_db) as writer:
            for put, _ in WRITES.values():
                put(writer, uid, "new key")
        assert [get(a, uid) for _, get in WRITES.values()] == ["new key"] * 3
        assert a._sealer.cached_key(uid).wrapped == _wrapped(pg_db, uid)


@pytest.mark.parametrize("route", ["pgbouncer", "direct"])
@pytest.mark.parametrize("write", ["memory", "user"])
def test_a_write_racing_an_erasure_that_makes_the_id_again_is_not_sealed_under_the_old_key(
        settings, pg_db, kek_file, connect_as, write, route):
    """B's erasure is in flight (its users row locked and deleted, the id made again with
    a new key) when A's cached-key write starts: A waits for it, then must not write
    under the old key, though the foreign key's check (a fresh snapshot) finds the new
    users row. Through PgBouncer the memory write is a function (0012), direct a CTE."""
    sealed = crypto_settings(settings, kek_file)
    if route == "direct":
        sealed = sealed.model_copy(update={"pgbouncer_port": None})
    else:
        assert sealed.pgbouncer_port is not None
    put, get = WRITES[write]
    with PostgresDataAccess(sealed, dbname=pg_db) as a:
        uid = _user_with_cached_key(a)
        b = connect_as("app", dbname=pg_db)
        done: list[object] = []
        with b.transaction():
            b.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (uid,))
            for table, column in (("user_memory", "user_id"), ("users", "id")):
                b.execute(f"DELETE FROM {table} WHERE {column} = %s", (uid,))
            b.execute("INSERT INTO users (id, clerk_id) VALUES (%s, 'made-again')", (uid,))
            Sealer.save_key(b, Sealer(sealed).new_key(uid))
            writer = threading.Thread(target=lambda: done.append(put(a, uid, "raced")))
            writer.start()
            _wait_for_a_lock_wait(pg_db)
        writer.join(timeout=30)
        assert done == [True], done
    with PostgresDataAccess(sealed, dbname=pg_db) as reader:
        assert get(reader, uid) == "raced"


def _wait_for_a_lock_wait(dbname: str) -> None:
    deadline = time.monotonic() + 30
    while superuser_psql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         f"'{dbname}' AND wait_event_type = 'Lock'", dbname) == "0":
        assert time.monotonic() < deadline, "the write never waited for the erasure"
        time.sleep(0.05)


def test_writes_after_and_during_a_rotation_stay_readable(settings, pg_db, own_kek_file,
                                                          tmp_path):
    sealed = crypto_settings(settings, own_kek_file)
    with PostgresDataAccess(sealed, dbname=pg_db) as a:
        ids = [a.create_user({"clerk_id": f"r{n}", "name": f"Name {n}"}) for n in range(20)]
        for uid in ids:
            a.set_user_memory(uid, "context", "note", f"before {uid}")
        old = {uid: a._sealer.cached_key(uid).wrapped for uid in ids}
        keyfile.add_kek(own_kek_file)

        # Process B re-wraps every key, one per transaction, while A keeps writing.
        rotate = subprocess.Popen(
            [DONNACTL, "keys", "rotate", "--batch", "1", "--dbname", pg_db],
            env=_env(own_kek_file, tmp_path), cwd="/", stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        rounds = 0
        while rotate.poll() is None or rounds == 0:
            for uid in ids:
                a.set_user_memory(uid, "context", "note", f"during {uid}")
            rounds += 1
        assert rotate.returncode == 0, rotate.stderr.read()
        assert all(_wrapped(pg_db, uid) != old[uid] for uid in ids)

        for uid in ids:
            for put, _ in WRITES.values():
                put(a, uid, f"after {uid}")
            assert a._sealer.cached_key(uid).wrapped == _wrapped(pg_db, uid)
    with PostgresDataAccess(sealed, dbname=pg_db) as reader:
        for uid in ids:
            assert [get(reader, uid) for _, get in WRITES.values()] == [f"after {uid}"] * 3


def test_a_cached_sealed_write_is_one_statement(settings, pg_db, kek_file, tmp_path):
    """Like the plain store's one-statement writes (test_postgres.py): no BEGIN/COMMIT
    and one Sync each; the first write of a user this process has not met reads the key
    first, in a transaction."""
    one = crypto_settings(settings, kek_file).model_copy(
        update={"db_max_connections": 1, "pgbouncer_port": None})
    with PostgresDataAccess(one, dbname=pg_db) as dal:
        made: list[str] = []
        # A new user and its data key: one statement too.
        sent = sent_messages(dal, tmp_path / "create.trace", lambda: made.append(
            dal.create_user({"clerk_id": "rt", "email": "rt@example.org"})))
        assert "Query" not in sent and sent.count("Sync") == 1, sent
        uid = made[0]
        assert _wrapped(pg_db, uid) == dal._sealer.cached_key(uid).wrapped
        dal._sealer.drop_key(dal._sealer.cached_key(uid))

        cold = sent_messages(dal, tmp_path / "cold.trace",
                             lambda: dal.set_user_memory(uid, "context", "a", 1))
        assert "Query" in cold and cold.count("Sync") >= 2, cold

        def writes() -> None:
            dal.set_user_memory(uid, "context", "b", 2)
            dal.update_user(uid, {"name": "Round Trip"})

        sent = sent_messages(dal, tmp_path / "warm.trace", writes)
        assert "Query" not in sent, sent  # BEGIN and COMMIT go as simple queries
        assert sent.count("Sync") == 2, sent
        assert dal.get_user_memory(uid, "context") == {"a": 1, "b": 2}
        assert dal.get_user_by_id(uid)["name"] == "Round Trip"


def test_a_read_with_the_cached_key_is_the_plain_query(settings, pg_db, kek_file, tmp_path):
    """A user this process has met is read with one statement that does not read the
    wrapped key. For one it has not met, a read by id reads the key too; a memory read,
    one more statement reads it; a read by clerk id always reads the key, in its one
    statement."""
    one = crypto_settings(settings, kek_file).model_copy(
        update={"db_max_connections": 1, "pgbouncer_port": None})
    with PostgresDataAccess(one, dbname=pg_db) as dal:
        uid = _user_with_cached_key(dal)

        def reads() -> None:
            assert dal.get_user_by_id(uid)["email"] == "kc@example.org"
            assert dal.get_user_memory(uid, "context") == {"note": "before"}

        def traced(name: str, work) -> tuple[int, str]:
            """The Syncs sent, and the text of the statements parsed (not the rows'
            descriptions, which name the columns too)."""
            sent = traced_messages(dal, tmp_path / f"{name}.trace", work)
            return ([kind for kind, _ in sent].count("Sync"),
                    "\n".join(text for kind, text in sent if kind == "Parse"))

        syncs, text = traced("warm", reads)
        assert syncs == 2 and "Parse" in text and "kek_id" not in text

        for cold in (reads, lambda: dal.get_user_memory(uid, "context")):
            dal._sealer.drop_key(dal._sealer.cached_key(uid))
            syncs, text = traced("cold", cold)
            assert text.count("kek_id") == 1  # read by the first read only
            assert syncs == (2 if cold is reads else 1)

        # By clerk id the row brings its key, met or not: one statement either way.
        dal._sealer.drop_key(dal._sealer.cached_key(uid))
        syncs, text = traced("clerk", lambda: dal.get_user_by_clerk_id("kc"))
        assert syncs == 1 and text.count("kek_id") == 1
        assert dal._sealer.cached_key(uid) is not None
        syncs, text = traced("clerk-warm", lambda: dal.get_user_by_clerk_id("kc"))
        assert syncs == 1


def test_a_read_with_the_cached_key_unwraps_nothing(settings, pg_db, kek_file, monkeypatch):
    sealed = crypto_settings(settings, kek_file)
    with PostgresDataAccess(sealed, dbname=pg_db) as dal:
        uid = _user_with_cached_key(dal)
        from donnadb.crypto import envelope

        def refuse(*args):
            raise AssertionError("unwrapped a cached key")

        monkeypatch.setattr(envelope, "unwrap", refuse)
        assert dal.get_user_by_id(uid)["email"] == "kc@example.org"
        assert dal.get_user_memory(uid, "context") == {"note": "before"}


def test_forget_in_this_process_drops_the_key_and_a_late_read_does_not_bring_it_back(
        settings, pg_db, kek_file):
    sealed = crypto_settings(settings, kek_file)
    with PostgresDataAccess(sealed, dbname=pg_db) as dal:
        uid = _user_with_cached_key(dal)
        dk = dal._sealer.cached_key(uid)
        users.forget_user(sealed, uid, dbname=pg_db)
        assert dal._sealer.cached_key(uid) is None
        # A read that fetched the rows before the erasure committed opens them now.
        assert dal._sealer.key_of(uid, dk.kek_id, dk.wrapped).wrapped == dk.wrapped
        assert dal._sealer.cached_key(uid) is None
        assert dal.get_user_by_id(uid) is None


@pytest.mark.parametrize("route", ["pgbouncer", "direct"])
def test_a_new_user_and_its_key_are_written_together_or_not_at_all(settings, pg_db, kek_file,
                                                                   route):
    """Through PgBouncer the sealed insert is a function (0013), direct one statement:
    either way the users row with its data key, and a taken clerk id leaves neither."""
    sealed = crypto_settings(settings, kek_file)
    if route == "direct":
        sealed = sealed.model_copy(update={"pgbouncer_port": None})
    with PostgresDataAccess(sealed, dbname=pg_db) as dal:
        assert dal.via_pgbouncer is (route == "pgbouncer")
        uid = dal.create_user({"clerk_id": f"new-{route}", "email": "ann@example.com",
                               "name": "Ann", "status": "trial"})
        with pytest.raises(ConflictError, match="already exists"):
            dal.create_user({"clerk_id": f"new-{route}", "name": "Other"})
    row = superuser_psql(
        "SELECT u.email IS NULL AND u.name IS NULL AND u.email_sealed IS NOT NULL, "
        "u.status, (u.wrapped_key IS NOT NULL)::int, "
        "(SELECT count(*) FROM users WHERE wrapped_key IS NOT NULL) "
        f"FROM users u WHERE u.clerk_id = 'new-{route}'",
        pg_db)
    assert row.split("|") == ["t", "trial", "1", "1"]
    with PostgresDataAccess(sealed, dbname=pg_db) as reader:
        user = reader.get_user_by_id(uid)
    assert (user["email"], user["name"]) == ("ann@example.com", "Ann")

"""Fixtures of the DAL tests: one ``dal`` fixture per store, real PostgreSQL for three
(one of them with the Redis cache on)."""

from __future__ import annotations

import re

import pytest

from donnadb import db
from donnadb.crypto import keyfile
from donnadb.dal import (
    DualWriteDataAccess,
    FileDataAccess,
    MixedDataAccess,
    PostgresDataAccess,
)
from donnadb.migrate import apply_migrations
from tests.dal import replicas
from tests.dal.redisserver import RedisServer, cache_settings
from tests.support import (
    create_scratch_database,
    crypto_settings,
    drop_database,
    plain_settings,
    superuser_psql,
)

#: Stores per entity the contract also holds for: (users, memory, chats, messages, logs)
#: phases and the primary store. The plan's pilot, reading memory from either store; a
#: middle step reading from PostgreSQL; a late step with every session in PostgreSQL
#: and messages still copied.
MIXED = {
    "mixed-pilot": (("file", "dual", "file", "file", "file"), "file"),
    "mixed-pilot-pg": (("file", "dual", "file", "file", "file"), "postgresql"),
    "mixed-middle": (("dual", "dual", "dual", "dual", "postgresql"), "postgresql"),
    "mixed-late": (("postgresql", "postgresql", "postgresql", "dual", "file"), "file"),
}
STORES = ["file", "postgresql", "postgresql+cache", "postgresql+crypto", "postgresql+crypto+cache",
          "dual-file", "dual-postgresql", *MIXED]
#: What the test fixtures empty between tests (erasures: the ledger of `users forget`).
TABLES = "users, erasures, chat_sessions, messages, user_memory, system_logs"
ENTITIES = ("users", "memory", "chats", "messages", "logs")


def make_mixed(settings, dbname, data_dir, kind: str) -> MixedDataAccess:
    phases, primary = MIXED[kind]
    return MixedDataAccess(FileDataAccess(data_dir), make_pg(settings, dbname),
                           phases=dict(zip(ENTITIES, phases, strict=True)), primary=primary)


def make_pg(settings, dbname, **kwargs) -> PostgresDataAccess:
    return PostgresDataAccess(settings, dbname=dbname, **kwargs)


#: Where a libpq trace's next message starts (a statement's text may span lines).
TRACE_MESSAGE = re.compile(r"\n(?=\d{4}-\d\d-\d\d )")


def traced_messages(dal: PostgresDataAccess, trace_file, work) -> list[tuple[str, str]]:
    """(type, whole text) of each protocol message ("Parse", "Sync", "Query", ...) the
    client sent while ``work()`` ran, from a libpq trace of the pool's connection (give
    the DAL one)."""
    with trace_file.open("w") as out:
        with dal._pool.connection() as conn:
            conn.pgconn.trace(out.fileno())
        work()
        with dal._pool.connection() as conn:
            conn.pgconn.untrace()
    fields = [(m.split("\t"), m) for m in TRACE_MESSAGE.split(trace_file.read_text())]
    return [(f[3], m) for f, m in fields if f[1:2] == ["F"]]


def sent_messages(dal: PostgresDataAccess, trace_file, work) -> list[str]:
    """The types of :func:`traced_messages`."""
    return [kind for kind, _ in traced_messages(dal, trace_file, work)]


@pytest.fixture(scope="session")
def settings(settings):
    """The host's settings with field encryption off, whatever its settings file says: a
    store named ``postgresql`` here is the store in clear (``+crypto`` turns it on)."""
    return plain_settings(settings)


@pytest.fixture(scope="session")
def dal_db(settings):
    """One migrated scratch database for every DAL test (made like ``scratch_db``, but
    once: creating ~60 databases would cost more than the whole DAL suite's budget)."""
    name = create_scratch_database(settings, prefix="donna_dal")
    apply_migrations(settings=settings, dbname=name)
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def replica_set(settings):
    """A throwaway primary with two streaming standbys (tests/dal/replicas.py)."""
    rs = replicas.build(settings)
    yield rs
    replicas.drop(rs)


@pytest.fixture
def replica_db(settings, replica_set):
    """``replica_set``'s database emptied for this test, the standbys caught up."""
    replica_set.empty(replica_set.settings(settings))
    return replica_set


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory):
    """A redis-server for the session's cache tests (tests/dal/redisserver.py)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session):
    """``redis_session`` running and empty for this test (a test may kill or pause it)."""
    if redis_session.proc.poll() is not None:
        redis_session.start()
    redis_session.resume()
    redis_session.flush()
    return redis_session


@pytest.fixture
def pg_db(settings, dal_db):
    """``dal_db`` emptied for this test."""
    with db.connection("migrator", settings=settings, dbname=dal_db) as conn:
        conn.execute(f"TRUNCATE {TABLES}")
    return dal_db


@pytest.fixture
def no_inserts_into_messages(settings, pg_db):
    """The application role loses INSERT on messages in ``pg_db`` (given back after):
    PostgreSQL refuses every copy of a message, and nothing else."""
    role = settings.db_role_app
    superuser_psql(f"REVOKE INSERT ON messages FROM {role}", pg_db)
    yield
    superuser_psql(f"GRANT INSERT ON messages TO {role}", pg_db)


@pytest.fixture(scope="session")
def kek_file(tmp_path_factory):
    """A field-encryption key file (0600) for the session (tests/conftest.py's, once)."""
    path = tmp_path_factory.mktemp("keys") / "fields.key"
    keyfile.generate(path)
    return path


@pytest.fixture(params=STORES)
def dal(request, tmp_path, settings):
    """Each store, empty. PostgreSQL-backed ones get a fresh migrated database."""
    kind = request.param
    if kind == "file":
        store = FileDataAccess(tmp_path / "data")
    else:
        dbname = request.getfixturevalue("pg_db")
        if "+crypto" in kind:
            settings = crypto_settings(settings, request.getfixturevalue("kek_file"))
        if kind.endswith("+cache"):
            settings = cache_settings(settings, request.getfixturevalue("redis_server"))
        pg = make_pg(settings, dbname)
        if kind.startswith("postgresql"):
            store = pg
        elif kind in MIXED:
            pg.close()
            store = make_mixed(settings, dbname, tmp_path / "data", kind)
        else:
            store = DualWriteDataAccess(FileDataAccess(tmp_path / "data"), pg,
                                        primary=kind.removeprefix("dual-"))
    yield store
    if isinstance(store, DualWriteDataAccess):
        # A contract test never expects dual-write to fall behind.
        assert store.queue.count() == 0
    if kind.endswith("+cache"):
        # The cache answered without a failure, and was used.
        health = store.health_check()["cache"]
        assert health["status"] == "ok" and health["errors"] == 0, health
    store.close()

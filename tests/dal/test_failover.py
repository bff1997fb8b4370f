"""What the DAL does when the leader goes away under it (donnadb/dal/postgres.py,
docs/dal.md "During a failover"): real servers, real faults."""

from __future__ import annotations

import threading
import time

import pytest

from donnadb import db
from donnadb.dal import FailoverError, PostgresDataAccess
from tests.dal import replicas
from tests.support import superuser_psql, wait_for

WHERE = "SELECT pg_backend_pid() AS pid, inet_server_addr()::text AS addr, " \
        "pg_is_in_recovery() AS standby"


def soon(what: str, probe):
    """:func:`tests.support.wait_for` polled every 50 ms, for up to 15 s."""
    return wait_for(what, probe, timeout=15.0, interval=0.05)


def waiting_pids(dbname: str) -> set[int]:
    """The DAL's backends of ``dbname`` that wait for a lock (deployed cluster)."""
    out = superuser_psql("SELECT pid FROM pg_stat_activity WHERE datname = "
                         f"'{dbname}' AND application_name = 'donnadb-app' "
                         "AND wait_event_type = 'Lock'")
    return {int(p) for p in out.split()}


def in_thread(work):
    """Run ``work`` in a thread; ``result()`` joins it and returns or raises its outcome."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except Exception as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def result():
        thread.join(30)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


@pytest.fixture
def direct(settings):
    """One connection straight to PostgreSQL (no PgBouncer), so the test can kill it."""
    return settings.model_copy(update={"db_max_connections": 1, "pgbouncer_port": None})


def test_a_write_on_a_demoted_leader_discards_the_connection_and_the_next_reaches_the_new(
        settings, replica_db):
    rs = replica_db
    s = rs.multi_host_settings(settings, db_max_connections=2)
    try:
        with PostgresDataAccess(s, dbname=rs.dbname) as dal:
            dal.create_chat_session("c_1", None, {})
            old = dal._one(WHERE)
            assert old["addr"].startswith("127.0.0.1") and not old["standby"]
            rs.wait_replayed(rs.twin)
            # The switchover: the old leader turns read-only under the pooled connection
            # (as a demoted leader behind its PgBouncer looks to clients: SQLSTATE 25006)
            # and its twin standby is promoted.
            rs.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
            rs.primary.sql("SELECT pg_reload_conf()")
            rs.twin.ctl("promote")
            soon("the promotion", lambda: rs.twin.sql("SELECT pg_is_in_recovery()") == "f")
            time.sleep(0.3)  # the reload reaches the idle backend
            with pytest.raises(FailoverError, match=r"^the database is read-only: a "
                               r"failover/switchover is in progress; retry"):
                dal.add_message("c_1", "user", "refused")
            soon("the old leader's connection dropped", lambda: str(old["pid"]) not in
                 rs.primary.sql("SELECT pid FROM pg_stat_activity").split())
            dal.add_message("c_1", "user", "accepted")
            new = dal._one(WHERE)
            assert new["addr"].startswith("::1") and not new["standby"]
        assert rs.twin.sql("SELECT string_agg(content, ',') FROM messages",
                           dbname=rs.dbname) == "accepted"
    finally:
        rs.primary.sql("ALTER SYSTEM RESET default_transaction_read_only")
        rs.primary.sql("SELECT pg_reload_conf()")
        replicas.rebuild_twin(rs)


def test_a_write_whose_connection_dies_fails_clearly_and_is_not_retried(direct, pg_db):
    with PostgresDataAccess(direct, dbname=pg_db) as dal, \
            db.connection("migrator", settings=direct, dbname=pg_db) as locker:
        dal.create_chat_session("c_1", None, {})
        pid = dal._one(WHERE)["pid"]
        with locker.transaction():
            locker.execute("SELECT 1 FROM chat_sessions WHERE chat_id = 'c_1' FOR UPDATE")
            write = in_thread(lambda: dal.add_message("c_1", "user", "hello"))
            soon("the write waiting", lambda: pid in waiting_pids(pg_db))
            superuser_psql(f"SELECT pg_terminate_backend({int(pid)})")
            with pytest.raises(FailoverError, match=r"^the database connection was lost "
                               r"during a write .* it may have been applied"):
                write()
        # Not retried behind the caller's back: nothing was written.
        assert dal.get_message_count("c_1") == 0
        dal.add_message("c_1", "user", "again")
        assert dal._one(WHERE)["pid"] != pid
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["again"]


def test_a_read_whose_connection_dies_is_retried_once_on_a_fresh_one(direct, pg_db):
    with PostgresDataAccess(direct, dbname=pg_db) as dal, \
            db.connection("migrator", settings=direct, dbname=pg_db) as locker:
        dal.create_chat_session("c_1", None, {})
        dal.add_message("c_1", "user", "hello")
        pid = dal._one(WHERE)["pid"]
        with locker.transaction():
            db.set_local_role(locker, direct.db_role_owner)
            locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            read = in_thread(lambda: dal.get_chat_history("c_1"))
            soon("the read waiting", lambda: pid in waiting_pids(pg_db))
            superuser_psql(f"SELECT pg_terminate_backend({int(pid)})")
            retried = soon("the retry", lambda: waiting_pids(pg_db) - {pid})
        assert [m["content"] for m in read()] == ["hello"]
        assert dal._one(WHERE)["pid"] in retried

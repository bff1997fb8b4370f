"""Reads from replicas (donnadb/dal/routing.py) against a real primary and streaming hot
standbys: where reads go, read-your-writes, the lag bound."""

from __future__ import annotations

import time

import pytest
from psycopg.conninfo import conninfo_to_dict

from donnadb.dal import PostgresDataAccess, routing
from donnadb.dal import postgres_sql as q
from donnadb.errors import ConfigError

#: A line of the history read as pg_stat_activity shows it.
HISTORY = "ORDER BY m.sequence_number DESC"
assert HISTORY in q.SELECT_HISTORY


def activity(node, dbname: str) -> list[str]:
    """The last statement of every client session of ``dbname`` on ``node``."""
    return node.sql("SELECT query FROM pg_stat_activity WHERE datname = "
                    f"'{dbname}' AND backend_type = 'client backend'").splitlines()


def ran_history(node, dbname: str) -> bool:
    return any(HISTORY in line for line in activity(node, dbname))


@pytest.fixture
def paused(replica_db):
    """Stop the standby replaying WAL (it still receives it); resumed after the test."""
    replica_db.standby.sql("SELECT pg_wal_replay_pause()")
    yield replica_db
    replica_db.standby.sql("SELECT pg_wal_replay_resume()")


@pytest.mark.parametrize("mode", ["read port", "multi-host"])
def test_reads_go_to_a_standby_and_writes_to_the_primary(settings, replica_db, mode):
    rs = replica_db
    s = (rs.settings(settings) if mode == "read port" else rs.multi_host_settings(settings))
    standby = rs.standby if mode == "read port" else rs.twin
    with PostgresDataAccess(s.model_copy(update={"db_read_your_writes_seconds": 0}),
                            dbname=rs.dbname) as dal:
        dal.create_chat_session("c_1", None, {})
        dal.add_message("c_1", "user", "hello")
        assert not dal._one("SELECT pg_is_in_recovery() AS r")["r"]  # the write pool
        rs.wait_replayed(standby)
        with dal._router.pool.connection() as conn:
            assert conn.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["hello"]
        assert ran_history(standby, rs.dbname)
        assert not ran_history(rs.primary, rs.dbname)


def test_primary_mode_keeps_one_pool_on_the_primary(settings, replica_db):
    rs = replica_db
    with PostgresDataAccess(rs.settings(settings, db_read_from="primary"),
                            dbname=rs.dbname) as dal:
        assert dal._router is None
        dal.get_chat_history("c_1")
        assert ran_history(rs.primary, rs.dbname)
        assert not ran_history(rs.standby, rs.dbname)


def test_read_your_writes_while_the_standby_replays_nothing(settings, paused):
    rs = paused
    s = rs.settings(settings, db_read_your_writes_seconds=1.0, db_read_max_lag_seconds=3600)
    with PostgresDataAccess(s, dbname=rs.dbname) as dal:
        uid = dal.create_user({"clerk_id": "user_ana"})
        dal.create_chat_session("c_1", uid, {})
        dal.add_message("c_1", "user", "just written")
        dal.set_user_memory(uid, "context", "pet", "cat")
        # The standby has none of it ...
        assert rs.standby.sql("SELECT count(*) FROM messages", dbname=rs.dbname) == "0"
        # ... yet this instance reads its own writes (from the primary).
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["just written"]
        assert dal.get_message_count("c_1") == 1
        assert dal.get_user_by_clerk_id("user_ana")["id"] == uid
        assert [c["chat_id"] for c in dal.list_chat_sessions(uid)] == ["c_1"]
        assert [m["content"] for m in dal.search_messages(uid, "written")] == ["just written"]
        assert dal.get_user_memory(uid, "context") == {"pet": "cat"}
        with dal.transaction():  # inside a transaction: always the primary
            assert dal.get_chat_session("c_1") is not None
        time.sleep(1.1)
        # The window is over: reads go to the (paused) standby again, which is behind.
        assert dal.get_chat_history("c_1") == []
        assert dal.get_user_by_clerk_id("user_ana") is None


def test_a_write_inside_a_transaction_counts_from_its_commit(settings, paused):
    rs = paused
    s = rs.settings(settings, db_read_your_writes_seconds=1.0, db_read_max_lag_seconds=3600)
    with PostgresDataAccess(s, dbname=rs.dbname) as dal:
        with dal.transaction():
            dal.create_chat_session("c_1", None, {})
            time.sleep(1.1)
        assert dal.get_chat_session("c_1") is not None


def test_a_lagging_standby_sends_reads_to_the_primary_until_it_catches_up(settings, paused):
    rs = paused
    s = rs.settings(settings, db_read_your_writes_seconds=0, db_read_max_lag_seconds=1.0,
                    db_read_lag_check_seconds=0.2)
    with PostgresDataAccess(s, dbname=rs.dbname) as dal:
        assert dal.get_chat_session("c_1") is None
        assert not dal._router.lagging  # paused, but nothing new to replay: no lag
        dal.create_chat_session("c_1", None, {})  # the standby receives it, replays nothing
        assert dal.get_chat_session("c_1") is None  # from the standby (read-your-writes off)
        time.sleep(1.3)
        assert dal.get_chat_session("c_1") is not None  # from the primary
        assert dal._router.lagging and dal._router.lag > 1.0
        assert dal.health_check()["replicas"]["reads_to"] == "leader"
        rs.standby.sql("SELECT pg_wal_replay_resume()")
        rs.wait_replayed(rs.standby)
        time.sleep(0.3)
        assert dal.get_chat_session("c_1") is not None
        assert not dal._router.lagging and dal._router.lag == 0
        assert dal.health_check()["replicas"] == {"lag_seconds": 0, "reads_to": "replicas"}


def test_the_lag_is_measured_at_most_once_per_interval(settings, replica_db, tmp_path):
    rs = replica_db
    s = rs.settings(settings, db_read_your_writes_seconds=0, db_read_lag_check_seconds=60,
                    db_max_connections=1)
    with PostgresDataAccess(s, dbname=rs.dbname) as dal:
        dal.get_chat_history("c_1")  # the first read measures

        def reads() -> None:
            for _ in range(5):
                dal.get_chat_history("c_1")

        trace = tmp_path / "libpq.trace"
        with trace.open("w") as out:
            with dal._router.pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
            reads()
            with dal._router.pool.connection() as conn:
                conn.pgconn.untrace()
        sent = [line.split("\t")[3] for line in trace.read_text().splitlines()
                if line.split("\t")[1:2] == ["F"]]
    assert sent.count("Execute") == 5
    assert "Query" not in sent


def test_replicas_need_a_read_port_or_a_host_list(settings):
    s = settings.model_copy(update={"db_read_from": "replicas", "db_read_port": None,
                                    "db_host": "127.0.0.1"})
    with pytest.raises(ConfigError, match=r"^DB_READ_FROM=replicas needs DB_READ_PORT"):
        PostgresDataAccess(s)


def test_libpq_chooses_among_a_host_list_and_one_host_is_left_alone(settings):
    fleet = settings.model_copy(update={"db_host": "db.donna.internal", "pgbouncer_port": 5000,
                                        "db_read_port": 5001})
    write = conninfo_to_dict(routing.write_conninfo(fleet, None))
    read = conninfo_to_dict(routing.read_conninfo(fleet, None))
    assert "target_session_attrs" not in write and write["port"] == "5000"
    assert "target_session_attrs" not in read and read["port"] == "5001"
    assert read["host"] == write["host"] == "db.donna.internal"
    listed = settings.model_copy(update={"db_host": "db1,db2,db3"})
    assert conninfo_to_dict(routing.write_conninfo(listed, None))[
        "target_session_attrs"] == "read-write"
    assert conninfo_to_dict(routing.read_conninfo(listed, None))[
        "target_session_attrs"] == "prefer-standby"

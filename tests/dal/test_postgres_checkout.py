"""PostgresDataAccess's cheap pool checkout and JSON loading (the history read's hot path)."""

from __future__ import annotations

import time

from donnadb.dal import PostgresDataAccess
from tests.dal.conftest import sent_messages
from tests.support import superuser_psql

PID = "SELECT pg_backend_pid() AS pid"


def _terminate(pid: int) -> None:
    superuser_psql(f"SELECT pg_terminate_backend({int(pid)})")
    deadline = time.monotonic() + 10
    while superuser_psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(pid)}") != "0":
        assert time.monotonic() < deadline, "the backend did not exit"
        time.sleep(0.05)


def test_a_connection_the_server_closed_is_replaced_on_checkout(settings, pg_db):
    one = settings.model_copy(update={"db_max_connections": 1, "pgbouncer_port": None})
    with PostgresDataAccess(one, dbname=pg_db) as dal:
        dal.create_chat_session("c_1", None, {})
        dal.add_message("c_1", "user", "hello")
        pid = dal._one(PID)["pid"]
        _terminate(pid)
        # The caller never sees the dead connection: the checkout check notices it.
        assert [m["content"] for m in dal.get_chat_history("c_1")] == ["hello"]
        assert dal._one(PID)["pid"] != pid


def test_a_healthy_checkout_costs_no_round_trip(settings, pg_db, tmp_path):
    """Every message the client sends is traced: checkouts add no query of their own
    (``ConnectionPool.check_connection`` would send an empty simple Query each time)."""
    one = settings.model_copy(update={"db_max_connections": 1, "pgbouncer_port": None})

    def reads() -> None:
        for _ in range(3):
            assert dal.get_chat_history("c_none") == []

    with PostgresDataAccess(one, dbname=pg_db) as dal:
        dal.get_chat_history("c_none")
        sent = sent_messages(dal, tmp_path / "libpq.trace", reads)
    assert sent.count("Execute") == 3
    assert "Query" not in sent


def test_json_values_read_back_exactly(settings, pg_db):
    """orjson reads big integers as floats; the DAL's loader must not."""
    big = {"n": 2**70, "neg": -(2**64), "f": 0.1, "text": "é\n\u2028", "nested": [1, {"a": None}]}
    with PostgresDataAccess(settings, dbname=pg_db) as dal:
        dal.create_chat_session("c_1", None, big)
        dal.add_message("c_1", "assistant", "x", big)
        assert dal.get_chat_history("c_1")[0]["metadata"] == big
        got = dal.get_chat_history("c_1")[0]["metadata"]["n"]
        assert type(got) is int and got == 2**70
        assert dal.get_chat_session("c_1")["metadata"] == big

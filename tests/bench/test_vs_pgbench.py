"""bench/vs_pgbench.py: every side runs the DAL's own statement with the same values."""

from __future__ import annotations

import re

import pytest

from donnadb.dal import postgres_sql as q


@pytest.fixture
def vs(bench_script):
    return bench_script("vs_pgbench")


@pytest.mark.parametrize("kind", ["history", "append"])
def test_pgbench_and_the_floor_run_the_dal_statement_with_every_parameter(vs, kind):
    work = vs.Workload(kind, "lt-x-", 4, 10)
    assert work.query == (q.SELECT_HISTORY if kind == "history" else q.ADD_MESSAGE)
    script = work.pgbench_script()
    assert script.startswith("\\set n random(0, 9)\n") and "%(" not in script
    assert "'lt-x-' || lpad(:n::text, 4, '0')" in script
    statement, names = work.positional()
    assert b"%(" not in statement and names == list(work.params("lt-x-0001"))
    assert set(re.findall(rb"\$(\d+)", statement)) == {
        str(n).encode() for n in range(1, len(names) + 1)}
    values = work.text_values("lt-x-0001")
    assert values[0] == b"lt-x-0001" and len(values) == len(names)


def test_the_append_sends_sql_literals_and_text_values(vs):
    work = vs.Workload("append", vs.APPEND_PREFIX, 4, vs.APPEND_CHATS)
    assert work.chats[0].startswith("lt-run-") and len(work.chats) == vs.APPEND_CHATS
    script = work.pgbench_script()
    assert "'user'" in script and "NULL" in script and "false" in script
    assert work.text_values(work.chats[0])[3:] == [b"{}", None, b"f"]


def test_the_api_floor_returns_the_dal_rows_as_dicts_from_a_shared_pool(
        vs, settings, scratch_db):
    from donnadb.dal import PostgresDataAccess

    plain = settings.model_copy(update={"pgbouncer_port": None, "crypto_enabled": False})
    with PostgresDataAccess(plain, dbname=scratch_db) as dal:
        for n in range(2):
            dal.create_chat_session(f"lt-x-{n:04d}", None, {})
            for i in range(3):
                dal.add_message(f"lt-x-{n:04d}", "user", f"message {n}.{i}")
        expected = {f"lt-x-{n:04d}": [m["content"] for m in dal.get_chat_history(
            f"lt-x-{n:04d}", 20)] for n in range(2)}
    work = vs.Workload("history", "lt-x-", 4, 2)
    call, close = vs._api_floor(plain, scratch_db, 1, work)
    try:
        for seed in range(6):  # past fastpath.PREPARE_AFTER: the prepared statement too
            rng = vs.random.Random(seed)
            chat = vs.random.Random(seed).choice(work.chats)
            rows = call(rng)
            assert all(isinstance(r, dict) for r in rows)
            assert [r["content"] for r in reversed(rows)] == expected[chat]
    finally:
        close()

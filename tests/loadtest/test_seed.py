"""Seeding through COPY into a scratch database: counts, skew, idempotence."""

from __future__ import annotations

import random

import pytest

from donnadb.errors import UsageError
from donnadb.loadtest import seed
from tests.loadtest.conftest import TEST_SCALE


def test_seed_loads_the_scale_with_a_power_law_then_is_a_no_op(settings, scratch_db,
                                                              connect_as):
    first = seed.seed(settings, TEST_SCALE, dbname=scratch_db)
    assert first["seeded"] is True
    assert first["rows"]["chat_sessions"] == TEST_SCALE.sessions
    assert first["rows"]["messages"] == TEST_SCALE.messages

    conn = connect_as("readonly", dbname=scratch_db)
    per_user = [r[0] for r in conn.execute(
        "SELECT count(*) FROM chat_sessions GROUP BY user_id ORDER BY 1 DESC")]
    assert len(per_user) == TEST_SCALE.users  # every user has a chat
    mean = TEST_SCALE.sessions / TEST_SCALE.users
    assert per_user[0] > 3 * mean  # a heavy user ...
    assert per_user[len(per_user) // 2] <= mean  # ... and a long tail of light ones
    counts = [r[0] for r in conn.execute(
        "SELECT message_count FROM chat_sessions ORDER BY 1 DESC")]
    assert sum(counts) == TEST_SCALE.messages  # the triggers kept message_count
    assert min(counts) >= 2 and max(counts) > 5 * (TEST_SCALE.messages / TEST_SCALE.sessions)
    user_len, assistant_len = conn.execute(
        "SELECT avg(length(content)) FILTER (WHERE role = 'user'), "
        "avg(length(content)) FILTER (WHERE role = 'assistant') FROM messages").fetchone()
    assert assistant_len > 2 * user_len
    analyzed = conn.execute(
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY (%s) "
        "AND last_analyze IS NOT NULL", (list(seed.TABLES),)).fetchone()[0]
    assert analyzed == len(seed.TABLES)

    again = seed.seed(settings, TEST_SCALE, dbname=scratch_db)
    assert again["seeded"] is False
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == TEST_SCALE.messages


def test_a_different_scale_replaces_the_seeded_rows(settings, scratch_db, connect_as):
    seed.seed(settings, TEST_SCALE, dbname=scratch_db)
    smaller = seed.Scale(users=20, sessions=40, messages=400)
    assert seed.seed(settings, smaller, dbname=scratch_db)["seeded"] is True
    conn = connect_as("readonly", dbname=scratch_db)
    assert conn.execute("SELECT count(*) FROM chat_sessions").fetchone()[0] == 40
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 400


@pytest.mark.parametrize("bad", [seed.Scale(0, 10, 100), seed.Scale(10, 5, 100),
                                 seed.Scale(10, 10, 10)])
def test_impossible_scales_are_refused(settings, bad):
    with pytest.raises(UsageError, match="bad scale"):
        seed.seed(settings, bad)


def test_message_counts_are_bounded_and_exact():
    counts = seed._message_counts(random.Random(1), 1000, 50_000)  # noqa: S311
    assert sum(counts) == 50_000
    assert min(counts) >= 2 and max(counts) <= seed.MAX_PER_CHAT

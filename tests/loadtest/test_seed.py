"""Seeding through COPY into a scratch database: counts, skew, text, idempotence."""

from __future__ import annotations

import random

import pytest

from donnadb.dal import PostgresDataAccess
from donnadb.errors import UsageError
from donnadb.loadtest import chattext, seed, workload
from tests.loadtest.conftest import TEST_SCALE

LEXEMES = "SELECT count(*) FROM ts_stat('SELECT to_tsvector(''english'', content) FROM messages')"
MATCHES = """
SELECT count(*) FROM messages
 WHERE to_tsvector('english', content) @@ plainto_tsquery('english', %s)
"""


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
    assert 3 * user_len < assistant_len < 8 * user_len
    long = conn.execute("SELECT count(*) FROM messages WHERE role = 'assistant' "
                        "AND length(content) >= 5000").fetchone()[0]
    assert long >= 1
    analyzed = conn.execute(
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY (%s) "
        "AND last_analyze IS NOT NULL", (list(seed.TABLES),)).fetchone()[0]
    assert analyzed == len(seed.TABLES)

    again = seed.seed(settings, TEST_SCALE, dbname=scratch_db)
    assert again["seeded"] is False
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == TEST_SCALE.messages

    # A database seeded with an older text (its marker names no text version) is
    # seeded again at the same scale.
    old = f"{seed.USER_PREFIX}scale-{TEST_SCALE.users}-{TEST_SCALE.sessions}-{TEST_SCALE.messages}"
    assert seed.marker_for(TEST_SCALE) == f"{old}-text{chattext.TEXT_VERSION}"
    with connect_as("migrator", dbname=scratch_db, autocommit=True) as owner:
        owner.execute("UPDATE users SET clerk_id = %s WHERE clerk_id = %s",
                      (old, seed.marker_for(TEST_SCALE)))
    assert seed.seed(settings, TEST_SCALE, dbname=scratch_db)["seeded"] is True
    assert conn.execute("SELECT count(*) FROM users WHERE clerk_id = %s",
                        (seed.marker_for(TEST_SCALE),)).fetchone()[0] == 1


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


def test_search_words_are_selective_and_found_in_users_chats(settings, seeded_db, connect_as):
    conn = connect_as("readonly", dbname=seeded_db)
    assert conn.execute(LEXEMES).fetchone()[0] >= 15_000
    rng = random.Random(11)  # noqa: S311
    words = sorted({w for _ in range(40) for w in workload.search_words(rng).split()})
    shares = [conn.execute(MATCHES, (w,)).fetchone()[0] / TEST_SCALE.messages for w in words]
    assert max(shares) < 0.02  # the old vocabulary's words were in 13-25% of messages
    assert sum(s > 0 for s in shares) > 0.9 * len(shares)  # and nearly all are there

    # The load test's search: the heaviest users' 5 most recent chats.
    heavy = [r[0] for r in conn.execute(
        "SELECT user_id::text FROM chat_sessions GROUP BY user_id ORDER BY count(*) DESC, "
        "user_id LIMIT 10")]
    dal = PostgresDataAccess(settings, dbname=seeded_db, min_size=1)
    try:
        found = sum(bool(dal.search_messages(user, workload.search_words(rng), limit=20,
                                             recent_chats=workload.SEARCH_CHATS))
                    for user in heavy for _ in range(20))
    finally:
        dal.close()
    # Some searches find messages; most two-word ones do not (with the old vocabulary
    # nearly all did).
    assert 5 <= found <= 150

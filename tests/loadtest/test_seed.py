"""Seeding through COPY into a scratch database: counts, skew, text, idempotence."""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from donnadb.crypto.envelope import TEXT_PREFIX
from donnadb.crypto.errors import KeyFileError
from donnadb.dal import PostgresDataAccess
from donnadb.errors import UsageError
from donnadb.loadtest import chattext, seed, workload
from tests.loadtest.conftest import TEST_SCALE
from tests.support import crypto_settings

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
    marker = seed.marker_for(TEST_SCALE, sealed=settings.crypto_enabled)  # the host's mode
    with connect_as("migrator", dbname=scratch_db, autocommit=True) as owner:
        owner.execute("UPDATE users SET clerk_id = %s WHERE clerk_id = %s", (old, marker))
    assert seed.seed(settings, TEST_SCALE, dbname=scratch_db)["seeded"] is True
    assert conn.execute("SELECT count(*) FROM users WHERE clerk_id = %s",
                        (marker,)).fetchone()[0] == 1


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


def _dump(dbname: str) -> str:
    """pg_dump's plain SQL: what a stolen backup shows, no key file."""
    return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dump", "-d", dbname],
                          capture_output=True, text=True, check=True, cwd="/").stdout


def _copied_rows(dump: str, table: str) -> list[dict[str, str]]:
    """The rows of ``table``'s COPY block in a plain dump, by column name."""
    lines = dump.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"COPY public.{table} "))
    columns = lines[start].split("(", 1)[1].split(")", 1)[0].split(", ")
    end = lines.index("\\.", start)
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[start + 1:end]]


def test_a_sealed_seed_holds_no_personal_plaintext_and_the_dal_reads_it(
        clear_settings, sealed_settings, scratch_db, connect_as):
    ci = seed.SCALES["ci"]
    first = seed.seed(sealed_settings, ci, dbname=scratch_db)
    # The marker names the mode: a seed made the other way is replaced, each time.
    clear = seed.seed(clear_settings, ci, dbname=scratch_db)
    sealed = seed.seed(sealed_settings, ci, dbname=scratch_db)
    assert first["sealed"] and clear["seeded"] and not clear["sealed"]
    assert sealed["seeded"] is True and sealed["sealed"] is True
    # The seed times, for the record (not a timed test): the last two each replace a seed.
    print(f"\nseed ci scale: sealed {first['seconds']:.2f} s into an empty database; "
          f"replacing a seed: in clear {clear['seconds']:.2f} s, sealed "
          f"{sealed['seconds']:.2f} s")
    assert seed.seed(sealed_settings, ci, dbname=scratch_db)["seeded"] is False

    conn = connect_as("readonly", dbname=scratch_db)
    keyed = conn.execute("SELECT count(*) FILTER (WHERE wrapped_key IS NOT NULL), count(*) "
                         "FROM users").fetchone()
    assert keyed == (ci.users + 1, ci.users + 1)  # every user has a key, the marker too
    clear_rows = conn.execute(
        "SELECT count(*) FROM users WHERE email IS NOT NULL OR name IS NOT NULL"
        ).fetchone()[0]
    assert clear_rows == 0
    control = conn.execute(
        "SELECT content FROM messages WHERE length(content) > 60 AND content !~ '[\\t\\n\\\\]' "
        "ORDER BY id LIMIT 1").fetchone()[0]

    with PostgresDataAccess(sealed_settings, dbname=scratch_db, min_size=1) as dal:
        readers = [dal.get_user_by_clerk_id(f"{seed.USER_PREFIX}{i:07d}")
                   for i in (0, 1, ci.users - 1)]
        memories = [dal.get_user_memory(u["id"], "context") for u in readers]
    for i, user in zip((0, 1, ci.users - 1), readers, strict=True):
        assert user["email"] == f"user{i}@example.test" and user["name"] == f"Load User {i}"
        assert user["preferences"]["language"] in ("en", "fr", "de", "es")
    notes = [note for memory in memories for note in memory.values()]
    assert notes and all(isinstance(n, str) and len(n.split()) >= 4 for n in notes)

    dump = _dump(scratch_db)
    assert control in dump  # the dump does show text stored in clear
    for i in (0, 1, ci.users - 1):
        assert f"user{i}@example.test" not in dump and f"Load User {i}" not in dump
    memory_rows = _copied_rows(dump, "user_memory")
    assert len(memory_rows) >= ci.users
    assert all(r["value"].startswith(f'"{TEXT_PREFIX}') for r in memory_rows)
    # Notes are cut from the messages' text: only the memory's own rows are searched.
    memory_block = "\n".join("\t".join(r.values()) for r in memory_rows)
    assert not [n for n in notes if n in memory_block]
    for lang in ("en", "fr", "de", "es"):
        assert f'"language": "{lang}"' not in dump


def test_a_bad_key_file_stops_the_seed_before_anything_is_written(clear_settings, scratch_db,
                                                                   kek_file, connect_as):
    seed.seed(clear_settings, TEST_SCALE, dbname=scratch_db)
    os.chmod(kek_file, 0o644)  # a key file others may read is refused
    with pytest.raises(KeyFileError, match="chmod 600"):
        seed.seed(crypto_settings(clear_settings, kek_file), TEST_SCALE, dbname=scratch_db)
    missing = crypto_settings(clear_settings, kek_file.with_name("absent.key"))
    with pytest.raises(KeyFileError, match="cannot open the key file"):
        seed.seed(missing, TEST_SCALE, dbname=scratch_db)
    # The seed in clear is still there, whole.
    conn = connect_as("readonly", dbname=scratch_db)
    assert conn.execute("SELECT count(*) FROM users WHERE clerk_id = %s",
                        (seed.marker_for(TEST_SCALE),)).fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == TEST_SCALE.messages

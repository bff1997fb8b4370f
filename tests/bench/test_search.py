"""bench/search.py: the variants search the same chats as the DAL and differ from it only
where they mean to; the figures' helpers."""

from __future__ import annotations

import random

import pytest

from donnadb.dal import postgres_sql as q


@pytest.fixture
def bench_search(bench_script):
    return bench_script("search")


def test_variant_a_is_the_dal_search_and_every_variant_has_a_schema(bench_search):
    variants = {v.key: v for v in bench_search.VARIANTS}
    assert variants["A"].query == q.SEARCH_MESSAGES
    assert {v.schema for v in variants.values()} == {s.key for s in bench_search.SCHEMAS}


def test_the_recent_chats_are_the_dal_ones(bench_search):
    recent = bench_search.RECENT
    assert recent in q.SEARCH_MESSAGES
    assert "%(user_id)s" in recent and "LIMIT %(chats)s" in recent


def test_the_column_queries_match_on_the_stored_column_only(bench_search):
    for v in bench_search.VARIANTS:
        if v.schema.startswith("C"):
            assert bench_search.EXPRESSION not in v.query and bench_search.COLUMN in v.query
        else:
            assert bench_search.EXPRESSION in v.query


def test_each_schema_keeps_one_full_text_index_that_its_migration_makes(bench_search):
    for schema in bench_search.SCHEMAS[1:]:
        made = " ".join(statement for _, statement in schema.steps)
        assert all(f"INDEX CONCURRENTLY {i} " in made for i in schema.indexes)


def test_percentile_is_nearest_rank(bench_search):
    values = [float(v) for v in range(1, 101)]
    assert bench_search.percentile(values, 95) == 95.0
    assert bench_search.percentile(values, 50) == 50.0
    assert bench_search.percentile([3.0], 95) == 3.0


def test_the_order_rotates_each_round(bench_search):
    assert bench_search.rotated(("a", "b", "c"), 1) == ("a", "b", "c")
    assert bench_search.rotated(("a", "b", "c"), 2) == ("b", "c", "a")
    assert bench_search.rotated(("a", "b", "c"), 4) == ("a", "b", "c")


def test_the_written_messages_alternate_user_and_assistant(bench_search):
    messages = bench_search.texts(random.Random(1), 4)
    assert [role for role, _ in messages] == ["user", "assistant"] * 2
    assert len(messages[1][1]) > len(messages[0][1])


def test_the_base_schema_is_the_migrations_own(bench_search, settings):
    """B, seeded first, is what the migrations make; the others are derived from it."""
    from donnadb.migrate import discover

    text = "\n".join(f.read_sql() for f in discover(settings.schema_dir))
    base = bench_search.SCHEMAS[0]
    assert base.base is None and base.indexes == ("idx_messages_chat_fts",)
    assert ("CREATE INDEX CONCURRENTLY idx_messages_chat_fts\n    ON messages USING gin "
            "(chat_session_id, to_tsvector('english', content));") in text

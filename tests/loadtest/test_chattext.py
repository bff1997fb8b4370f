"""The seed's text: vocabulary, Zipf shape, lengths, search words."""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import Counter
from datetime import UTC, datetime

from donnadb.loadtest import chattext, seed, workload
from tests.loadtest.conftest import TEST_SCALE


def _messages(scale: seed.Scale) -> list[tuple]:
    rows = seed._rows(scale, datetime(2026, 1, 1, tzinfo=UTC))
    for table in ("users", "chat_sessions"):  # the generator's order: they come first
        for _ in rows[table]:
            pass
    return list(rows["messages"])


def _slope(counts: list[int], first: int, last: int) -> float:
    """Least-squares slope of log(frequency) over log(rank), ranks first..last."""
    xs = [math.log(r) for r in range(first, last + 1)]
    ys = [math.log(counts[r - 1]) for r in range(first, last + 1)]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
            / sum((x - mx) ** 2 for x in xs))


def test_the_vocabulary_is_large_fixed_and_free_of_duplicates():
    words = chattext.vocabulary()
    assert len(words) == len(set(words)) >= 20_000
    assert words[:3] == ("the", "be", "to")  # common English words lead
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)
    chattext.vocabulary.cache_clear()
    assert chattext.vocabulary() == words  # from a fixed seed, not from a host's files


def test_most_words_are_distinct_lexemes_of_the_english_configuration(connect_as):
    words = chattext.vocabulary()
    conn = connect_as("readonly")
    lexemes = conn.execute("SELECT length(to_tsvector('english', %s))",
                           (" ".join(words),)).fetchone()[0]
    assert lexemes >= 0.99 * len(words)


def test_a_scale_always_gives_the_same_text():
    first = _messages(TEST_SCALE)
    assert [m[2] for m in first] == [m[2] for m in _messages(TEST_SCALE)]


def test_word_frequencies_follow_zipfs_law():
    tokens = Counter()
    for m in _messages(TEST_SCALE):
        tokens.update(re.findall(r"[a-z]+", m[2].lower()))
    counts = sorted(tokens.values(), reverse=True)
    assert len(counts) >= 15_000  # a few hundred words repeated would not do
    assert -1.15 < _slope(counts, 1, 1000) < -0.85
    assert counts[0] / sum(counts) < 0.1  # no word is a tenth of the text


def test_answers_are_several_times_longer_than_questions_and_a_few_are_very_long():
    rng = random.Random(7)  # noqa: S311
    text = chattext.ChatText(rng, 200_000)
    user = [len(text.message(rng, "user")) for _ in range(20_000)]
    answers = [len(text.message(rng, "assistant")) for _ in range(20_000)]
    assert 80 < statistics.fmean(user) < 160 and statistics.median(user) < 100
    assert 3 < statistics.fmean(answers) / statistics.fmean(user) < 8
    assert 3 < statistics.median(answers) / statistics.median(user) < 10
    long = [n for n in answers if n >= chattext.LONG_CHARS[0]]
    assert 0.0005 < len(long) / len(answers) < 0.005
    assert max(answers) < chattext.LONG_CHARS[1] * 1.1


def test_search_words_are_middle_frequency_content_words(connect_as):
    rng = random.Random(3)  # noqa: S311
    ranks = {w: r for r, w in enumerate(chattext.vocabulary())}
    terms = [w for _ in range(500) for w in workload.search_words(rng).split()]
    assert 500 < len(terms) < 1000  # one word or two
    first, stop = chattext.SEARCH_RANKS
    assert all(first <= ranks[w] < stop for w in terms)
    # Zipf's law within the band: the band's first tenth is drawn more than its last half.
    low = sum(ranks[w] < first + (stop - first) // 10 for w in terms)
    assert low > sum(ranks[w] >= (first + stop) // 2 for w in terms)
    conn = connect_as("readonly")
    stopped = conn.execute("SELECT count(*) FROM unnest(%s::text[]) AS w "
                           "WHERE length(to_tsvector('english', w)) = 0", (terms,)).fetchone()[0]
    assert stopped == 0

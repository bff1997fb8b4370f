"""The load test's message text: a Zipf-distributed vocabulary, chat-like lengths.

Full-text search plans depend on how selective the searched words are, so the seed's
text must spread its words like real text does:

* a vocabulary of :data:`VOCABULARY_SIZE` words: common English words (function words
  first) as the head, then pronounceable made-up words (syllables from a generator
  with a fixed seed). It needs no word list on the host, and the made-up words end in
  ``a``, ``o`` or ``u``, which PostgreSQL's ``english`` stemmer leaves alone: each one
  is a lexeme of its own;
* word frequencies follow Zipf's law, P(rank r) ~ 1/(r + 1), so a few words are in
  most messages and most words in very few;
* message lengths are log-normal: user messages ~120 characters, assistant answers
  ~600; :data:`LONG_SHARE` of the answers are 5-20 kB.

Drawing every word of millions of messages one by one would make Python, not COPY, the
seed's bottleneck. :class:`ChatText` draws one stream of Zipf words cut into sentences
once, and each message is a window of that stream starting at a sentence.

:func:`search_terms` draws words the way people search: content words of middle
frequency, neither stop words nor words found in almost every message.
"""

from __future__ import annotations

import functools
import itertools
import math
import random

#: Part of the seed's marker: a change of the text below must make seeded databases
#: seed again.
TEXT_VERSION = 2
VOCABULARY_SIZE = 25_000
#: P(rank r) ~ 1/(r + ZIPF_OFFSET), ranks from 1: a head a little flatter than pure
#: Zipf, so "the" is ~5% of the words, as in English.
ZIPF_OFFSET = 1.0
#: Ranks (0-based) search words come from. Below: words in more than ~1.5% of the
#: messages; above: words too rare to be in a small data set at all.
SEARCH_RANKS = (500, 5_000)
#: Mean message lengths in characters (log-normal, sigma below), and the long answers.
USER_CHARS, USER_SIGMA = 120, 1.0
ASSISTANT_CHARS, ASSISTANT_SIGMA = 600, 0.8
LONG_SHARE = 0.001
LONG_CHARS = (5_000, 20_000)

_VOCABULARY_SEED = 20261203

COMMON_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the be to of and a in that have it for not on with as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us recipe travel budget meeting schedule email draft summary project "
    "deadline python database invoice flight hotel weather garden workout dinner report "
    "letter birthday gift holiday translate explain compare plan review remind calendar "
    "doctor appointment insurance mortgage contract lease interview resume salary tax "
    "postgres query index backup restore migration latency pool connection transaction "
    "vacation museum concert ticket train station airport coffee breakfast lunch groceries"
).split()

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "ch", "sh", "br", "dr", "gr", "kr", "pr", "st", "tr", "pl", "bl", "fl", "sk")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k")
# Endings the english stemmer keeps as they are (no suffix of it ends in a, o or u).
_FINALS = ("a", "o", "u")


def _made_up_word(rng: random.Random) -> str:
    syllables = rng.choices((2, 3, 4), weights=(45, 40, 15))[0]
    middle = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                     for _ in range(syllables - 1))
    return middle + rng.choice(_ONSETS) + rng.choice(_FINALS)


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """The words, most frequent first; the same on every host and every call."""
    rng = random.Random(_VOCABULARY_SEED)  # noqa: S311 - a reproducible data set
    words = list(COMMON_WORDS)
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        word = _made_up_word(rng)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return tuple(words)


@functools.cache
def _cum_weights(first: int, stop: int) -> tuple[float, ...]:
    # r counts from 0 here.
    return tuple(itertools.accumulate(1.0 / (r + 1 + ZIPF_OFFSET) for r in range(first, stop)))


def zipf_words(rng: random.Random, k: int) -> list[str]:
    """``k`` words drawn from the whole vocabulary with Zipf's law."""
    return rng.choices(vocabulary(), cum_weights=_cum_weights(0, VOCABULARY_SIZE), k=k)


def search_terms(rng: random.Random, k: int = 1) -> list[str]:
    """``k`` distinct words someone would search for: a rank in :data:`SEARCH_RANKS`,
    the more frequent words the likelier (Zipf's law within the band)."""
    first, stop = SEARCH_RANKS
    band = vocabulary()[first:stop]
    terms: list[str] = []
    while len(terms) < k:
        word = rng.choices(band, cum_weights=_cum_weights(first, stop))[0]
        if word not in terms:
            terms.append(word)
    return terms


class ChatText:
    """Messages, titles and notes cut from one stream of ``tokens`` Zipf words.

    Everything comes from ``rng``, so the same generator state gives the same text.
    """

    def __init__(self, rng: random.Random, tokens: int) -> None:
        words = zipf_words(rng, tokens)
        starts = []
        i = 0
        while i < tokens:
            starts.append(i)
            end = min(tokens, i + rng.randint(3, 18))
            words[i] = words[i].capitalize()
            words[end - 1] += rng.choice((".", ".", ".", "?", "!"))
            i = end
        self._chars_per_word = (sum(map(len, words)) + tokens) / tokens
        self._longest = int(LONG_CHARS[1] / self._chars_per_word) + 1
        # The stream's head again at its end: a window from any sentence start fits.
        self._words = words + words[: self._longest]
        self._starts = starts

    def words(self, rng: random.Random, n: int) -> str:
        """``n`` words (at most the longest message's) from a random sentence start."""
        i = self._starts[int(rng.random() * len(self._starts))]
        return " ".join(self._words[i: i + min(max(1, n), self._longest)])

    def _chars(self, rng: random.Random, mean: float, sigma: float) -> float:
        return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)

    def message(self, rng: random.Random, role: str) -> str:
        if role == "user":
            chars = self._chars(rng, USER_CHARS, USER_SIGMA)
        elif rng.random() < LONG_SHARE:
            chars = rng.uniform(*LONG_CHARS)
        else:
            chars = self._chars(rng, ASSISTANT_CHARS, ASSISTANT_SIGMA)
        return self.words(rng, round(chars / self._chars_per_word))

    def title(self, rng: random.Random) -> str:
        return self.words(rng, rng.randint(2, 7)).rstrip(".?!")

    def note(self, rng: random.Random) -> str:
        return self.words(rng, rng.randint(4, 16))


"""Search ranking and snippets: PostgreSQL's ``ts_rank_cd``/``ts_headline`` options, and
the file store's reading of the same rules on whole words.

Both stores order hits by cover density (how many times the query's words appear close
together: ``ts_rank_cd``), then newest first, and mark the query's words in a snippet
of the message with :data:`MARK` on each side. Markdown's bold, not HTML: a snippet
holds the user's own text unescaped, and a chat client renders Markdown safely.
"""

from __future__ import annotations

import re

#: Put before and after each word of the query in a snippet.
MARK = "**"
#: A snippet's length in words: a message this short is its own snippet.
MAX_WORDS = 24
#: ``ts_headline``'s options: the same length as the file store's snippet (one
#: fragment from the best cover on; fragments would cut the end off a short message).
HEADLINE_OPTIONS = f'StartSel="{MARK}", StopSel="{MARK}", MaxWords={MAX_WORDS}, MinWords=8'
#: ``ts_rank_cd``'s weight of a lexeme without a weight label (label D).
WEIGHT = 0.1

_WORD_RE = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """The file store's search terms: lower-cased runs of letters and digits (no stemming,
    no stop words; PostgreSQL's english configuration also finds other forms)."""
    return set(_WORD_RE.findall(text.lower()))


def covers(positions: list[str], terms: set[str]) -> list[tuple[int, int]]:
    """The minimal spans of ``positions`` (a message's words in order) that hold every
    term, as ``ts_rank_cd`` finds them: the first end that completes the set, then the
    latest start that still does; the next search starts after that start."""
    found: list[tuple[int, int]] = []
    start = 0
    while True:
        end, seen = None, set()
        for i in range(start, len(positions)):
            if positions[i] in terms:
                seen.add(positions[i])
                if seen == terms:
                    end = i
                    break
        if end is None:
            return found
        seen = set()
        begin = end
        for i in range(end, start - 1, -1):
            if positions[i] in terms:
                seen.add(positions[i])
                if seen == terms:
                    begin = i
                    break
        found.append((begin, end))
        start = begin + 1


def cover_density(text: str, terms: set[str]) -> float:
    """``ts_rank_cd`` of ``text`` on whole words: each cover adds the (harmonic) mean
    weight of the query words in it, divided by one plus the other words it spans."""
    positions = _WORD_RE.findall(text.lower())
    rank = 0.0
    for begin, end in covers(positions, terms):
        hits = sum(1 for w in positions[begin:end + 1] if w in terms)
        rank += WEIGHT / (1 + (end - begin + 1) - hits)
    return rank


def snippet(text: str, terms: set[str]) -> str:
    """The query's words marked in the whole text when it has at most :data:`MAX_WORDS`
    words; otherwise in the :data:`MAX_WORDS` words from the start of its shortest cover
    (moved back when the text ends sooner), as ``ts_headline`` picks them."""
    spans = [m.span() for m in _WORD_RE.finditer(text)]
    lowered = [text[a:b].lower() for a, b in spans]
    if len(spans) <= MAX_WORDS:
        start, stop, window = 0, len(text), range(len(spans))
    else:
        found = covers(lowered, terms)
        begin = min(found, key=lambda c: c[1] - c[0])[0] if found else 0
        first = min(begin, len(spans) - MAX_WORDS)
        window = range(first, first + MAX_WORDS)
        start, stop = spans[window[0]][0], spans[window[-1]][1]
    parts, at = [], start
    for i in window:
        if lowered[i] in terms:
            a, b = spans[i]
            parts += [text[at:a], MARK, text[a:b], MARK]
            at = b
    parts.append(text[at:stop])
    return "".join(parts)

"""Seed a realistic data set for the load test, through COPY.

The shape follows a chat assistant's traffic: a few heavy users own many chats and
most users few (Zipf), most chats are short and a few very long (Pareto), user
messages are short and assistant answers several times longer (log-normal lengths),
and their words follow Zipf's law over a vocabulary of 25,000 words
(:mod:`donnadb.loadtest.chattext`). Everything comes from one seeded random generator,
so a given scale always produces the same rows, and re-seeding the same scale is a
no-op (the seeded rows are recognised by their ``lt-`` ids and a marker row naming the
scale and the text's version). A different scale, or a seed of an older text version,
replaces the seeded rows. VACUUM ANALYZE runs at the end so the planner sees the new
tables at once.

With CRYPTO_ENABLED the personal fields are written sealed, exactly as the DAL writes
them (:mod:`donnadb.dal.sealed`): each seeded user gets a data key (in its users
row), e-mail and name go to their sealed columns, and
each preferences and memory value is a sealed JSON string. The marker names the mode,
so turning encryption on (or off) and seeding again replaces a seed written the other
way, which the application could not read (or would read as ciphertext).

Seeding is a bulk administrative load, not application traffic: it runs as the
migrator role, directly (not through PgBouncer).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import UsageError
from donnadb.loadtest import chattext

if TYPE_CHECKING:
    from donnadb.dal.sealed import DataKey, Sealer

log = logging.getLogger(__name__)

#: Prefixes of the ids the seed writes; the load test's own writes use ``lt-run-``.
USER_PREFIX = "lt-u-"
CHAT_PREFIX = "lt-s-"
RUN_CHAT_PREFIX = "lt-run-"
SEED = 20261125
#: The longest chat: a long tail, but no chat the size of a whole table.
MAX_PER_CHAT = 1000
#: Bounds of the number of words in the text stream messages are cut from.
STREAM_TOKENS = (200_000, 4_000_000)


@dataclass(frozen=True)
class Scale:
    users: int
    sessions: int
    messages: int

    def check(self) -> None:
        """:raises UsageError: the numbers cannot make a data set."""
        if self.users < 1 or self.sessions < self.users or self.messages < 2 * self.sessions:
            raise UsageError(
                f"bad scale {self.users}/{self.sessions}/{self.messages}: need users >= 1, "
                "sessions >= users and messages >= 2 x sessions"
            )


#: Named scales: the default, a small one and the CI's tiny one.
SCALES = {
    "default": Scale(users=10_000, sessions=50_000, messages=2_000_000),
    "small": Scale(users=1_000, sessions=5_000, messages=200_000),
    "ci": Scale(users=200, sessions=1_000, messages=20_000),
}

COUNT_SEEDED = """
SELECT (SELECT count(*) FROM users WHERE clerk_id LIKE 'lt-u-%%') AS users,
       (SELECT count(*) FROM chat_sessions WHERE chat_id LIKE 'lt-s-%%') AS sessions,
       (SELECT coalesce(sum(message_count), 0) FROM chat_sessions
         WHERE chat_id LIKE 'lt-s-%%') AS messages,
       (SELECT count(*) FROM users WHERE clerk_id = %(marker)s) AS marker
"""
# The load test's own chats go first: they belong to seeded users.
DELETE_SEEDED = (
    "DELETE FROM chat_sessions WHERE chat_id LIKE 'lt-%'",
    "DELETE FROM users WHERE clerk_id LIKE 'lt-%'",
)
# Uses no parameters: COPY cannot take any.
COPY_USERS = ("COPY users (id, clerk_id, email, name, preferences, created_at, "
              "last_active_at) FROM STDIN")
COPY_SESSIONS = ("COPY chat_sessions (id, chat_id, user_id, title, profile, created_at) "
                 "FROM STDIN")
COPY_MESSAGES = ("COPY messages (chat_session_id, role, content, created_at, "
                 "sequence_number, token_count) FROM STDIN")
COPY_MEMORY = "COPY user_memory (user_id, memory_type, key, value) FROM STDIN"
# With CRYPTO_ENABLED: the plain email and name columns stay NULL, as the DAL leaves them,
# and the data key is in the users row (made with the user, so key_created_at is the
# user's created_at).
COPY_SEALED_USERS = ("COPY users (id, clerk_id, email_sealed, name_sealed, email_hmac, "
                     "preferences, created_at, last_active_at, kek_id, wrapped_key, "
                     "key_created_at) FROM STDIN")
#: The COPYs in order (memory after its user's key is known).
PLAIN_LOAD = (("users", COPY_USERS), ("chat_sessions", COPY_SESSIONS),
              ("messages", COPY_MESSAGES), ("user_memory", COPY_MEMORY))
SEALED_LOAD = (("users", COPY_SEALED_USERS), *PLAIN_LOAD[1:])
#: The tables every seed loads (and then analyzes).
TABLES = tuple(table for table, _ in PLAIN_LOAD)


def marker_for(scale: Scale, *, sealed: bool = False) -> str:
    """The clerk_id of the row that says which scale (and text, and whether sealed) is
    seeded."""
    return (f"{USER_PREFIX}scale-{scale.users}-{scale.sessions}-{scale.messages}"
            f"-text{chattext.TEXT_VERSION}{'-sealed' if sealed else ''}")


def _stream_tokens(scale: Scale) -> int:
    """How many words the text stream holds: about two per message, so at larger
    scales a window of it is repeated fewer times."""
    return min(STREAM_TOKENS[1], max(STREAM_TOKENS[0], 2 * scale.messages))


def zipf_picker(rng: random.Random, n: int, s: float = 1.0, offset: int = 10
                ) -> Callable[[], int]:
    """A function returning 0..n-1 with P(k) ~ 1/(k+offset)^s (index 0 the most likely).

    The offset flattens the head: the heaviest user of 10,000 owns ~1.4% of the chats,
    not the 13% a pure Zipf law would give one account.
    """
    cum = list(itertools.accumulate(1.0 / (k + offset) ** s for k in range(n)))
    total = cum[-1]
    return lambda: bisect.bisect_left(cum, rng.random() * total)


def _message_counts(rng: random.Random, sessions: int, messages: int) -> list[int]:
    """Messages per chat: Pareto-distributed, 2 to MAX_PER_CHAT, summing to ``messages``."""
    raw = [rng.paretovariate(1.5) for _ in range(sessions)]
    spare = messages - 2 * sessions
    total = sum(raw)
    counts = [min(MAX_PER_CHAT, 2 + int(spare * r / total)) for r in raw]
    # Rounding left a few messages over: give them to the first chats, two at a time
    # keeps user/assistant pairs.
    short = messages - sum(counts)
    i = 0
    while short > 0:
        if counts[i % sessions] < MAX_PER_CHAT:
            step = min(short, 2)
            counts[i % sessions] += step
            short -= step
        i += 1
    return counts


def seeded_state(conn: psycopg.Connection, scale: Scale, *, sealed: bool = False
                 ) -> tuple[int, int, int, int]:
    """(seeded users incl. the marker, seeded chats, their messages, marker rows)."""
    marker = marker_for(scale, sealed=sealed)
    return tuple(conn.execute(COUNT_SEEDED, {"marker": marker}).fetchone())


def is_seeded(state: tuple[int, int, int, int], scale: Scale) -> bool:
    users, sessions, messages, marker = state
    # The load test appends messages to seeded chats, hence >=.
    return (marker == 1 and users == scale.users + 1 and sessions == scale.sessions
            and messages >= scale.messages)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _rows(scale: Scale, now: datetime, *, sealed: bool = False) -> dict[str, Iterator[tuple]]:
    """Generators of each table's rows, all from one seeded generator; users' preferences
    and memory values as Python values (:func:`_plain` or :func:`_sealed` turns them
    into COPY rows)."""
    rng = random.Random(SEED)  # noqa: S311 - a reproducible data set, not a secret
    text = chattext.ChatText(rng, _stream_tokens(scale))
    user_ids = [_uuid(rng) for _ in range(scale.users)]
    session_ids = [_uuid(rng) for _ in range(scale.sessions)]
    pick_user = zipf_picker(rng, scale.users)
    owners = [user_ids[pick_user()] for _ in range(scale.sessions)]
    # Every user gets at least one chat (the load test logs any of them in).
    for i, uid in enumerate(user_ids[: min(scale.users, scale.sessions)]):
        owners[-(i + 1)] = uid
    counts = _message_counts(rng, scale.sessions, scale.messages)
    horizon = timedelta(days=90)

    def users() -> Iterator[tuple]:
        yield (uuid.uuid4(), marker_for(scale, sealed=sealed), None, "load-test scale marker",
               {}, now, None)
        for i, uid in enumerate(user_ids):
            created = now - horizon * rng.random()
            lang = rng.choice(("en", "en", "en", "fr", "de", "es"))
            yield (uid, f"{USER_PREFIX}{i:07d}", f"user{i}@example.test", f"Load User {i}",
                   {"language": lang}, created, now - timedelta(hours=rng.random() * 72))

    def sessions() -> Iterator[tuple]:
        for i, (sid, uid) in enumerate(zip(session_ids, owners, strict=True)):
            yield (sid, f"{CHAT_PREFIX}{i:07d}", uid, text.title(rng)[:200],
                   rng.choice(("general", "general", "coding", "travel")),
                   now - horizon * rng.random())

    def messages() -> Iterator[tuple]:
        for sid, n in zip(session_ids, counts, strict=True):
            start = now - horizon * rng.random()
            for seq in range(1, n + 1):
                role = "user" if seq % 2 else "assistant"
                content = text.message(rng, role)
                yield (sid, role, content, start + timedelta(seconds=30 * seq), seq,
                       len(content) // 4)

    def memory() -> Iterator[tuple]:
        for uid in user_ids:
            for k in range(rng.randint(1, 4)):
                yield (uid, "context", f"fact_{k}", text.note(rng))

    return {"users": users(), "chat_sessions": sessions(), "messages": messages(),
            "user_memory": memory()}


def _plain(rows: dict[str, Iterator[tuple]]) -> dict[str, Iterator[tuple]]:
    """The COPY rows with the personal fields in clear (CRYPTO_ENABLED off)."""
    users = ((uid, clerk, email, name, json.dumps(prefs), *times)
             for uid, clerk, email, name, prefs, *times in rows["users"])
    memory = ((uid, memory_type, key, json.dumps(value))
              for uid, memory_type, key, value in rows["user_memory"])
    return {**rows, "users": users, "user_memory": memory}


def _sealed(rows: dict[str, Iterator[tuple]], sealer: Sealer) -> dict[str, Iterator[tuple]]:
    """The COPY rows with the personal fields sealed as the DAL seals them, and each
    user's new data key in its row (CRYPTO_ENABLED on)."""
    keys: dict[uuid.UUID, DataKey] = {}

    def users() -> Iterator[tuple]:
        for uid, clerk, email, name, prefs, *times in rows["users"]:
            dk = keys[uid] = sealer.new_key(str(uid))
            cols = sealer.user_columns(dk, {"email": email, "name": name,
                                            "preferences": prefs})
            yield (uid, clerk, cols["email_sealed"], cols["name_sealed"], cols["email_hmac"],
                   json.dumps(cols["preferences"]), *times, dk.kek_id, dk.wrapped, times[0])

    def memory() -> Iterator[tuple]:
        for uid, memory_type, key, value in rows["user_memory"]:
            yield (uid, memory_type, key,
                   json.dumps(keys[uid].seal_value(memory_type, key, value)))

    return {**rows, "users": users(), "user_memory": memory()}


def _sealer(settings: Settings) -> Sealer | None:
    """The DAL's sealer when CRYPTO_ENABLED is on, else None.

    :raises KeyFileError: CRYPTO_KEK_FILE unset, unreadable, open to others or malformed.
    """
    if not settings.crypto_enabled:
        return None
    # Imported only when on, as the DAL does.
    from donnadb.dal.sealed import Sealer

    return Sealer(settings)


def seed(
    settings: Settings,
    scale: Scale,
    *,
    dbname: str | None = None,
    force: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, object]:
    """Load ``scale`` into the database (``dbname`` or DB_NAME); no-op if already there.

    ``progress(table, rows_so_far)`` is called every 10,000 rows.

    :returns: ``{"seeded": bool, "sealed": bool, "seconds": float, "rows": {table: n}}``.
    :raises UsageError: the scale is impossible.
    :raises KeyFileError: CRYPTO_ENABLED with no usable key file (nothing written).
    :raises DatabaseError: the database cannot be reached.
    """
    scale.check()
    sealer = _sealer(settings)  # before the database: a bad key file changes nothing
    sealed = sealer is not None
    started = time.perf_counter()
    with db.connection("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        if not force and is_seeded(seeded_state(conn, scale, sealed=sealed), scale):
            return {"seeded": False, "sealed": sealed,
                    "seconds": time.perf_counter() - started, "rows": {}}
        rows: dict[str, int] = {}
        now = datetime.now(UTC).replace(microsecond=0)
        generators = _rows(scale, now, sealed=sealed)
        generators = _sealed(generators, sealer) if sealer else _plain(generators)
        with conn.transaction():
            for statement in DELETE_SEEDED:
                conn.execute(statement)
            for table, copy_sql in SEALED_LOAD if sealed else PLAIN_LOAD:
                n = 0
                with conn.cursor().copy(copy_sql) as copy:
                    for row in generators[table]:
                        copy.write_row(row)
                        n += 1
                        if progress and n % 10_000 == 0:
                            progress(table, n)
                rows[table] = n
                if progress:
                    progress(table, n)
        # Outside the load's transaction: VACUUM cannot run inside one.
        for table in rows:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    return {"seeded": True, "sealed": sealed, "seconds": time.perf_counter() - started,
            "rows": rows}

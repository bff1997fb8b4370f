"""What one load-test process shares between its simulated users.

* the DAL (:class:`donnadb.dal.PostgresDataAccess`), through PgBouncer unless told
  otherwise: every query of the chat workload is a DAL call, so the load test measures
  the code the application runs;
* a small pool with exactly the DAL's connection settings for the gevent smoke test's
  ``pg_sleep`` (not an application query);
* the catalogue of seeded users and their chats, drawn with the seed's power law, so
  the busiest users are also the most active ones;
* the words of new messages and searches, from the seeded text's vocabulary
  (:mod:`donnadb.loadtest.chattext`).

Import this module after gevent's monkey patching (``import locust`` does it): psycopg
picks its gevent-friendly wait function at import time.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from donnadb import db
from donnadb.config import Settings, load_settings
from donnadb.dal import PostgresDataAccess
from donnadb.errors import DataError, DonnaError
from donnadb.loadtest import chattext
from donnadb.loadtest.seed import CHAT_PREFIX, RUN_CHAT_PREFIX, USER_PREFIX, zipf_picker

log = logging.getLogger(__name__)

CATALOGUE_SQL = """
SELECT u.id::text AS user_id, array_agg(s.chat_id ORDER BY s.chat_id) AS chats
  FROM users AS u JOIN chat_sessions AS s ON s.user_id = u.id
 WHERE u.clerk_id LIKE %(users)s AND s.chat_id LIKE %(chats)s
 GROUP BY u.id, u.clerk_id
 ORDER BY u.clerk_id
"""

SLEEP_SQL = "SELECT pg_sleep(%(seconds)s)"
#: Chats in the sidebar, and the most recent chats the search box looks in.
RECENT_CHATS = 20
SEARCH_CHATS = 5
#: Seconds for a process's pool to open all its connections before the users start.
WARM_TIMEOUT = 60.0


@dataclass
class Catalogue:
    """Seeded users (heaviest first) and their chats."""

    user_ids: list[str]
    chats: dict[str, list[str]]
    _pick: Any = field(repr=False, default=None)

    def pick_user(self) -> str:
        return self.user_ids[self._pick()]


@dataclass
class Workload:
    """Everything one process's users share. Thread- (and greenlet-) safe."""

    settings: Settings
    dbname: str | None
    dal: PostgresDataAccess
    pool: ConnectionPool
    catalogue: Catalogue

    # --- the chat app's calls that take more than the DAL's arguments ---------------
    def recent_sessions(self, user_id: str) -> list[dict[str, Any]]:
        return self.dal.list_chat_sessions(user_id, RECENT_CHATS)

    def search(self, user_id: str, words: str) -> list[dict[str, Any]]:
        """Search the user's few most recent chats, as the app's search box does."""
        return self.dal.search_messages(user_id, words, limit=20, recent_chats=SEARCH_CHATS)

    def write_log(self, level: str, message: str, context: dict[str, Any]) -> None:
        self.dal.write_log(level, message, context, trace_id=uuid.uuid4().hex,
                           ip_address="127.0.0.1", user_agent="donnadb-loadtest",
                           request_uri="/api/chat")

    def sleep(self, seconds: float) -> None:
        with self.pool.connection() as conn:
            conn.execute(SLEEP_SQL, {"seconds": seconds})

    def close(self) -> None:
        self.pool.close()
        self.dal.close()


def new_chat_id() -> str:
    return f"{RUN_CHAT_PREFIX}{uuid.uuid4().hex}"


def search_words(rng: random.Random) -> str:
    """What a user types in the search box: one or two middle-frequency words."""
    return " ".join(chattext.search_terms(rng, 1 if rng.random() < 0.6 else 2))


def answer_words(rng: random.Random, k: int) -> str:
    """``k`` words of an answer, with the seeded text's word frequencies."""
    return " ".join(chattext.zipf_words(rng, k))


def load_catalogue(settings: Settings, dbname: str | None, rng: random.Random) -> Catalogue:
    """:raises DataError: the database holds no seeded data (run the seed first)."""
    # The role the load itself uses: an application host holds no other credential.
    with db.connection("app", settings=settings, dbname=dbname,
                       row_factory=dict_row) as conn:
        rows = conn.execute(CATALOGUE_SQL, {"users": USER_PREFIX + "0%",
                                            "chats": CHAT_PREFIX + "%"}).fetchall()
    if not rows:
        raise DataError("no seeded users in the database: run `donnactl loadtest seed` first")
    return Catalogue(
        user_ids=[r["user_id"] for r in rows],
        chats={r["user_id"]: list(r["chats"]) for r in rows},
        _pick=zipf_picker(rng, len(rows)),
    )


def open_workload(
    *,
    dbname: str | None = None,
    pgbouncer_port: int | None = None,
    pool_size: int = 50,
    rng: random.Random | None = None,
) -> Workload:
    """Open the DAL, the smoke test's pool (no connection until used) and the catalogue.

    ``pgbouncer_port`` None or 0 connects directly to PostgreSQL. Through PgBouncer the
    DAL's ``pool_size`` connections are all open when this returns.

    :raises DataError: nothing seeded. :raises DatabaseError: cannot connect.
    """
    rng = rng or random.Random()  # noqa: S311 - picks users, not secrets
    settings = load_settings(pgbouncer_port=pgbouncer_port or None,
                             db_max_connections=pool_size, data_storage_type="postgresql")
    if not pgbouncer_port:
        # load_settings ignores None, so an env PGBOUNCER_PORT would survive: drop it.
        settings = settings.model_copy(update={"pgbouncer_port": None})
    catalogue = load_catalogue(settings, dbname, rng)
    # Behind PgBouncer a client connection holds no server backend: open them all now,
    # as a running service holds its pool, so that no request waits for a connection's
    # TLS and SCRAM set-up. Direct, each is a backend: the pool grows as the load needs.
    warm = pool_size if settings.pgbouncer_port else min(pool_size, 4)
    dal = PostgresDataAccess(settings, dbname=dbname, min_size=warm)
    try:
        dal.wait_ready(timeout=WARM_TIMEOUT)
    except DonnaError:
        dal.close()
        raise
    kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
    if settings.pgbouncer_port:
        kwargs["prepare_threshold"] = None  # as the DAL does behind PgBouncer
    # Only the smoke test's SleepUser uses it: min_size 0 opens no connection for chat runs.
    pool = ConnectionPool(
        db.conninfo("app", settings=settings, dbname=dbname),
        min_size=0, max_size=max(2, pool_size // 2), kwargs=kwargs,
        name="donnadb-loadtest-extra", open=True, timeout=30.0,
    )
    return Workload(settings=settings, dbname=dbname, dal=dal, pool=pool, catalogue=catalogue)


_shared: Workload | None = None
_lock = threading.Lock()


def shared_workload(**kwargs: Any) -> Workload:
    """The process's one :class:`Workload`, opened on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = open_workload(**kwargs)
        return _shared


def close_shared() -> None:
    global _shared
    with _lock:
        if _shared is not None:
            _shared.close()
            _shared = None

"""Locust scenarios: a chat assistant's users, driving PostgreSQL through the DAL.

Run it through ``donnactl loadtest run`` (which adds the SLO gate), or directly::

    .venv/bin/locust -f donnadb/loadtest/locustfile.py --headless -u 150 -r 25 -t 5m \
        --donna-pgbouncer-port 6432

Each query is timed with ``time.perf_counter`` around the DAL call (pool checkout
included: that wait is part of what a user feels) and reported through
``events.request.fire`` under its own name; an exception is a failure of that name.
Locust's contrib PostgresUser is not used: it rounds to whole milliseconds and names
every query alike.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent

# locust before psycopg: it monkey-patches for gevent, and psycopg must be imported after to
# choose its gevent-cooperative wait function (psycopg >= 3.1.14).
import locust  # noqa: I001
from locust import User, between, events, task
from locust.runners import MasterRunner

from donnadb.loadtest import workload as wl  # noqa: E402
from donnadb.loadtest.names import QUERY_NAMES  # noqa: E402

REQUEST_TYPE = "sql"
logger = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    # Custom options travel from a master to its workers.
    parser.add_argument("--donna-dbname", type=str, env_var="DONNADB_LT_DBNAME", default="",
                        help="database to load (default: DB_NAME)")
    parser.add_argument("--donna-pgbouncer-port", type=int, env_var="DONNADB_LT_PGBOUNCER_PORT",
                        default=0, help="PgBouncer port; 0 connects directly to PostgreSQL")
    parser.add_argument("--donna-pool-size", type=int, env_var="DONNADB_LT_POOL_SIZE",
                        default=50, help="client connections per Locust process")
    parser.add_argument("--donna-warmup", type=float, env_var="DONNADB_LT_WARMUP", default=0.0,
                        help="seconds at full load after the ramp-up before the statistics "
                        "restart (with --reset-stats): the verdict leaves the warm-up out")
    parser.add_argument("--donna-request-log", type=str, env_var="DONNADB_LT_REQUEST_LOG",
                        default="", help="append one line per request (end time, failed, "
                        "ms, name) to this file; the failure drill splits latencies by time")


_request_log: Any = None  # the open --donna-request-log file, once the test starts


@events.test_start.add_listener
def _open_request_log(environment, **_kw) -> None:
    global _request_log
    path = getattr(environment.parsed_options, "donna_request_log", "")
    if path and _request_log is None:
        _request_log = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115


@events.request.add_listener
def _log_request(name: str, response_time: float, exception: BaseException | None = None,
                 **_kw: Any) -> None:
    if _request_log is not None:
        _request_log.write(f"{time.time():.3f} {int(exception is not None)} "
                           f"{response_time:.2f} {name}\n")


@events.test_start.add_listener
def _open_workload(environment, **_kw) -> None:
    # Before the first user starts (a worker fires test_start before it spawns): else
    # the first requests wait for the pool's connections to be set up, and those still
    # running when --reset-stats clears the ramp-up count against the verdict.
    if isinstance(environment.runner, MasterRunner):  # a master runs no users
        return
    if any(issubclass(cls, ChatActions) for cls in environment.user_classes):
        _workload(environment)


@events.init.add_listener
def _measure_after_warmup(environment, **_kw) -> None:
    # Every process resets its own statistics, as Locust's --reset-stats does: a worker
    # drops what it has not reported yet, the master what it has summed. The option is
    # read at spawning_complete: a worker gets its master's options with the first spawn.
    def reset_later(**_kw: Any) -> None:
        warmup = getattr(environment.parsed_options, "donna_warmup", 0.0) or 0.0
        if warmup > 0 and environment.runner is not None:
            gevent.spawn_later(warmup, _restart_statistics, environment, warmup)

    environment.events.spawning_complete.add_listener(reset_later)


def _restart_statistics(environment, warmup: float) -> None:
    logger.info("warm-up of %gs over: statistics restart", warmup)
    environment.runner.stats.reset_all()


@events.quitting.add_listener
def _close(environment, **_kw) -> None:
    wl.close_shared()


def _workload(environment) -> wl.Workload:
    opts = environment.parsed_options
    return wl.shared_workload(
        dbname=(opts.donna_dbname or None) if opts else None,
        pgbouncer_port=opts.donna_pgbouncer_port if opts else None,
        pool_size=opts.donna_pool_size if opts else 50,
    )


class DonnaUser(User):
    """A load-test user: each call it times is reported under its own name."""

    abstract = True

    def timed(self, name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``call`` and report it under ``name``; exceptions become failures."""
        exception: BaseException | None = None
        result: Any = None
        start = time.perf_counter()
        try:
            result = call(*args, **kwargs)
        except Exception as exc:  # reported as a failure of this query, the user goes on
            exception = exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        size = len(result) if isinstance(result, list | dict | str) else 1
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=elapsed_ms,
            response_length=size, exception=exception, context={},
        )
        return result


class ChatActions(DonnaUser):
    """What a chat user does; each mix below gives the actions their weights.

    The actions carry no ``@task``: Locust adds a base class's tasks to a subclass's
    own, so a mix built on another mix would also run all of the other's tasks."""

    abstract = True
    wait_time = between(1.0, 3.0)  # reading and typing between actions

    def on_start(self) -> None:
        self.rng = random.Random()  # noqa: S311 - picks users and words, not secrets
        self.work = _workload(self.environment)
        self.user_id = self.work.catalogue.pick_user()
        self.chats = self.work.catalogue.chats[self.user_id]
        self.chat_id = self.rng.choice(self.chats)

    def _open_some_chat(self) -> None:
        # Recent chats are opened far more often than old ones.
        k = min(len(self.chats), 5)
        self.chat_id = self.rng.choice(self.chats[-k:]) if self.rng.random() < 0.8 else (
            self.rng.choice(self.chats))

    def read_history(self) -> None:
        self._open_some_chat()
        self.timed("history.read_last_20", self.work.dal.get_chat_history, self.chat_id, 20)

    def converse(self) -> None:
        dal = self.work.dal
        self.timed("message.add_user", dal.add_message, self.chat_id, "user",
                   "Could you " + wl.search_words(self.rng) + " for me tomorrow?",
                   token_count=12)
        self.timed("message.add_assistant", dal.add_message, self.chat_id, "assistant",
                   "Sure. " + wl.answer_words(self.rng, 60) + ".",
                   token_count=90)

    def list_sessions(self) -> None:
        self.timed("sessions.list_recent", self.work.recent_sessions, self.user_id)

    def get_memory(self) -> None:
        self.timed("memory.get", self.work.dal.get_user_memory, self.user_id, "context")

    def set_memory(self) -> None:
        self.timed("memory.set", self.work.dal.set_user_memory, self.user_id, "context",
                   f"fact_{self.rng.randint(0, 5)}", {"text": wl.search_words(self.rng)})

    def new_session(self) -> None:
        chat_id = wl.new_chat_id()
        created = self.timed("session.create", self.work.dal.create_chat_session, chat_id,
                             self.user_id, {"source": "loadtest"}, title="New chat")
        if created:
            self.chats.append(chat_id)
            self.chat_id = chat_id

    def search(self) -> None:
        self.timed("search.fulltext", self.work.search, self.user_id,
                   wl.search_words(self.rng))

    def write_log(self) -> None:
        self.timed("logs.write", self.work.write_log, "info", "chat request served",
                   {"user_id": self.user_id, "chat_id": self.chat_id})


class ChatUser(ChatActions):
    """The default mix: one person chatting, opening chats, writing, reading memory,
    sometimes searching."""

    tasks = {ChatActions.read_history: 10, ChatActions.converse: 4,
             ChatActions.list_sessions: 3, ChatActions.get_memory: 3,
             ChatActions.write_log: 2, ChatActions.set_memory: 1,
             ChatActions.new_session: 1, ChatActions.search: 1}


class ReaderUser(ChatActions):
    """The read-heavy mix: people scrolling back through their chats and the assistant
    reading their memory far more often than anything is written (where a cache pays)."""

    tasks = {ChatActions.read_history: 30, ChatActions.get_memory: 6,
             ChatActions.list_sessions: 3, ChatActions.converse: 1,
             ChatActions.set_memory: 1}


class SleepUser(DonnaUser):
    """The gevent smoke test: each user runs ``pg_sleep(1)`` once (``--class-picker``
    or ``SleepUser`` on the command line); with cooperation N users take ~1 s, not N s."""

    wait_time = between(3600, 3600)

    @task
    def sleep(self) -> None:
        self.timed("smoke.pg_sleep_1", _workload(self.environment).sleep, 1.0)


__all__ = ["ChatUser", "ReaderUser", "SleepUser", "QUERY_NAMES", "locust"]

"""Where PostgresDataAccess sends a read on a replicated cluster (``DB_READ_FROM``).

Writes, reads inside ``transaction()``, and reads of a chat or user this instance wrote
less than ``DB_READ_YOUR_WRITES_SECONDS`` ago go to the leader; other reads go to a
second pool that reaches the replicas, unless the replica it reaches lags more than
``DB_READ_MAX_LAG_SECONDS`` (checked at most once per ``DB_READ_LAG_CHECK_SECONDS``).
The replicas are reached either through the routing layer's read port
(``DB_READ_PORT``, HAProxy checking Patroni's ``/replica?lag=``) or, when ``DB_HOST``
is a libpq multi-host list, by libpq itself (``target_session_attrs``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable

import psycopg
from psycopg_pool import ConnectionPool

from donnadb import db
from donnadb.config import Settings
from donnadb.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds the replica's replay is behind. Replay caught up with what the WAL receiver
#: got while it streams: 0 (an idle leader sends nothing, so the last replayed commit's
#: age alone would grow forever). Otherwise the age of the last replayed commit, an
#: over-estimate on the safe side; infinite when nothing was ever replayed. On the
#: leader (the read port's backup server, or libpq falling back to it): 0.
REPLICA_LAG = """
SELECT CASE
         WHEN NOT pg_is_in_recovery() THEN 0
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
              AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) THEN 0
         ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()),
                       'Infinity')
       END::float8 AS lag
"""


def multi_host(settings: Settings) -> bool:
    """True when DB_HOST is a libpq multi-host list (libpq picks the server)."""
    return "," in settings.db_host


def write_conninfo(settings: Settings, dbname: str | None) -> str:
    """The leader's pool: as ever for one host; libpq keeps to a read-write server
    among a multi-host list.

    :raises CredentialsError: no password for the application role.
    """
    if multi_host(settings):
        return db.conninfo("app", settings=settings, dbname=dbname,
                           target_session_attrs="read-write")
    return db.conninfo("app", settings=settings, dbname=dbname)


def read_conninfo(settings: Settings, dbname: str | None) -> str:
    """The replicas' pool: libpq prefers a standby among a multi-host list; otherwise
    the same host on the routing layer's read port.

    :raises ConfigError: neither a multi-host DB_HOST nor DB_READ_PORT.
    :raises CredentialsError: no password for the application role.
    """
    if multi_host(settings):
        return db.conninfo("app", settings=settings, dbname=dbname,
                           target_session_attrs="prefer-standby",
                           application_name="donnadb-app-read")
    if settings.db_read_port is None:
        raise ConfigError(
            "DB_READ_FROM=replicas needs DB_READ_PORT (the routing layer's replica port, "
            "5001 on the HA fleet) or a comma-separated DB_HOST; or set DB_READ_FROM=primary")
    return db.conninfo("app", settings=settings, dbname=dbname, port=settings.db_read_port,
                       application_name="donnadb-app-read")


class ReadRouter:
    """The replicas' pool and the two reasons to avoid it: this instance's recent writes
    and a lagging replica. Thread-safe."""

    def __init__(self, settings: Settings, pool: ConnectionPool) -> None:
        self.pool = pool
        self.window = settings.db_read_your_writes_seconds
        self.max_lag = settings.db_read_max_lag_seconds
        self.check_every = settings.db_read_lag_check_seconds
        self._written: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._checking = threading.Lock()
        self._checked_at = -math.inf
        self.lag: float | None = None
        self.lagging = False

    # ------------------------------------------------------------- read-your-writes
    def wrote(self, keys: Iterable[tuple[str, str]]) -> None:
        """Reads of ``keys`` (("chat", id), ("user", id), ("clerk", id)) go to the leader
        for the next DB_READ_YOUR_WRITES_SECONDS."""
        until = time.monotonic() + self.window
        with self._lock:
            for key in keys:
                self._written[key] = until
            if len(self._written) > 10_000:
                now = time.monotonic()
                self._written = {k: t for k, t in self._written.items() if t > now}

    def written_recently(self, keys: Iterable[tuple[str, str]]) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(self._written.get(key, -math.inf) > now for key in keys)

    # ------------------------------------------------------------- lag bound
    def replicas_usable(self) -> bool:
        """False while the replica the pool reaches lags over DB_READ_MAX_LAG_SECONDS or
        cannot be asked. One thread measures, at most once per DB_READ_LAG_CHECK_SECONDS;
        the others use the last verdict meanwhile."""
        if time.monotonic() - self._checked_at >= self.check_every and \
                self._checking.acquire(blocking=False):
            try:
                self._measure()
            finally:
                self._checked_at = time.monotonic()
                self._checking.release()
        return not self.lagging

    def _measure(self) -> None:
        try:
            with self.pool.connection(timeout=min(self.pool.timeout, 5.0)) as conn:
                row = conn.execute(REPLICA_LAG).fetchone()
            lag = float(row["lag"] if isinstance(row, dict) else row[0])
        except psycopg.Error as exc:
            lag = math.inf
            log.warning("cannot measure the replica's lag (reads go to the leader): %s",
                        " ".join(str(exc).split()))
        lagging = lag > self.max_lag
        if lagging != self.lagging:
            log.warning("replica lag %.1fs is %s DB_READ_MAX_LAG_SECONDS=%g: reads go to the %s",
                        lag, "over" if lagging else "back under", self.max_lag,
                        "leader" if lagging else "replicas")
        self.lag, self.lagging = lag, lagging

    def close(self) -> None:
        self.pool.close()

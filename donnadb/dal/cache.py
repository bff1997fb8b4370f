"""The PostgreSQL DAL's read-through cache in Redis (``CACHE_*``; docs/dal.md, "Cache").

Cached: a chat's session and the last page of its history, a user's memory. Each chat
and each user has a **version key** in Redis holding a random token; a cached value
lives under the token of its chat or user (``<base>d:<token>:<item>``), so a write
invalidates everything of a chat or user at once by giving it a new token.

- A read runs one Lua script (EVALSHA: one round trip) that returns the current token
  and the value stored under it. On a miss the value is read from PostgreSQL and
  stored under the token fetched *before* that read, and only while it is still
  current (a second script checks it): a write that committed in between has changed
  the token, so the older value is stored where nobody looks, or not at all.
- Every write sets new tokens for what it changed once it is visible: at once after a
  single statement, at commit for a write inside ``transaction()`` (nothing on
  rollback). A missing version key (expired, evicted, Redis restarted) gets a fresh
  random token, so a value is never found under a reused version.
- Values live ``CACHE_TTL_SECONDS`` counted from *before* the PostgreSQL read that
  produced them, which bounds how stale a value can be when a write could not set its
  new token (Redis unreachable): never older than the TTL on any host. The host that
  failed to set it also stops reading the cache for the TTL, so its own writes are
  never hidden from it.

Why version keys and not PostgreSQL's LISTEN/NOTIFY: a notification reaches only the
sessions listening at that moment; an application host that is reconnecting, or whose
listener fell behind, misses it and keeps serving what it cached, with no bound. It
would also need one more long-lived connection per process (through PgBouncer's
transaction pooling LISTEN does not work at all), and a reader that filled the cache
just after a notification passed would store the older value for good. A version
token in Redis is checked on every read, by every host, in the same round trip as the
value; the only unbounded case, a lost invalidation, is bounded by the TTL.

Redis down or slow: every call has a short socket timeout (``CACHE_TIMEOUT_SECONDS``);
after a failure the cache is left alone for ``CACHE_RETRY_SECONDS`` and then tried
again; reads go to PostgreSQL meanwhile, one warning is logged per outage, and
:meth:`Cache.health` says ``down``. The cache never fails a call.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis

from donnadb.config import Settings
from donnadb.dal import cachecodec
from donnadb.errors import ConfigError

log = logging.getLogger(__name__)

#: What has a version key: a write names these (a clerk id is never cached).
VERSIONED = ("chat", "user")
#: Bumped when the stored format changes: a new deploy never reads an older format.
FORMAT = "c1"

# KEYS[1]: the version key. ARGV: value-key prefix, item, a fresh token, TTL (ms).
READ_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return {ARGV[3], false}
end
return {v, redis.call('GET', ARGV[1] .. v .. ':' .. ARGV[2])}
"""

# KEYS[1]: the version key. ARGV: value-key prefix, token read, item, value, its
# lifetime (ms), the version key's lifetime (ms). Stores only under the current token.
STORE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('SET', ARGV[1] .. ARGV[2] .. ':' .. ARGV[3], ARGV[4], 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""


class Entry(NamedTuple):
    """One cached value: guarded by the version of ``kind`` ``ident``; ``item`` says
    which value of it; ``lifetime(value)`` may shorten its life (seconds; memory
    entries that expire)."""

    kind: str
    ident: str
    item: tuple
    lifetime: Callable[[Any], float | None] | None = None


class Cache:
    """A read-through cache on one Redis; safe to share between threads."""

    def __init__(self, client: redis.Redis, *, base: str, ttl: float, retry: float) -> None:
        self._client = client
        self._base = base
        self._ttl_ms = max(1, int(ttl * 1000))
        self._ttl = ttl
        self._retry = retry
        self._read_script = client.register_script(READ_SCRIPT)
        self._store_script = client.register_script(STORE_SCRIPT)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._paused_until = 0.0
        self._last_failed_bump = float("-inf")
        self.hits = self.misses = self.errors = self.bypassed = self.failed_bumps = 0

    # ------------------------------------------------------------------ reads
    def read_through(self, entry: Entry, load: Callable[[], Any]) -> Any:
        """The cached value of ``entry``, else ``load()`` (then cached).

        :raises: whatever ``load`` raises; never a Redis error.
        """
        if not self._reads_allowed():
            self._count("bypassed")
            return load()
        started = time.monotonic()
        found = self._lookup(entry)
        if found is None:
            return load()
        token, payload = found
        if payload is not None:
            try:
                value = cachecodec.decode(payload)
            except ValueError as exc:
                log.warning("ignoring an unreadable cached value of %s %s: %s",
                            entry.kind, entry.ident, exc)
            else:
                self._count("hits")
                return value
        self._count("misses")
        value = load()
        self._store(entry, token, value, started)
        return value

    def _lookup(self, entry: Entry) -> tuple[bytes, bytes | None] | None:
        try:
            token, payload = self._read_script(
                keys=[self._version_key(entry.kind, entry.ident)],
                args=[self._data_prefix(), _item(entry.item), secrets.token_hex(16),
                      self._ttl_ms])
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return token, payload

    def _store(self, entry: Entry, token: bytes, value: Any, started: float) -> None:
        lifetime = self._ttl
        if entry.lifetime is not None:
            shorter = entry.lifetime(value)
            if shorter is not None:
                lifetime = min(lifetime, shorter)
        # Counted from before the PostgreSQL read: no value outlives the TTL from the
        # moment it was read, whatever happened to the writes meanwhile.
        left_ms = int((lifetime - (time.monotonic() - started)) * 1000)
        if left_ms < 1 or self._last_failed_bump >= started:
            return  # a write's new token may be missing: this value may predate it
        try:
            payload = cachecodec.encode(value)
        except cachecodec.CodecError as exc:
            log.debug("not cached: %s", exc)
            return
        try:
            self._store_script(keys=[self._version_key(entry.kind, entry.ident)],
                               args=[self._data_prefix(), token, _item(entry.item), payload,
                                     left_ms, self._ttl_ms])
        except redis.RedisError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    # ------------------------------------------------------------------ writes
    def bump(self, keys: Iterable[tuple[str, str]]) -> None:
        """Give each (kind, id) a new version: what was cached of it is not read again.
        On failure (Redis unreachable) this process stops reading the cache for the TTL;
        other hosts may serve what they cached for at most the TTL."""
        names = {self._version_key(kind, ident) for kind, ident in keys if kind in VERSIONED}
        if not names:
            return
        if not self._available():
            self._bump_failed(None)
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for name in sorted(names):
                    pipe.set(name, secrets.token_hex(16), px=self._ttl_ms)
                pipe.execute()
        except redis.RedisError as exc:
            self._bump_failed(exc)
        else:
            self._succeeded()

    def _bump_failed(self, exc: redis.RedisError | None) -> None:
        now = time.monotonic()
        with self._lock:
            self.failed_bumps += 1
            self._last_failed_bump = now
            self._paused_until = max(self._paused_until, now + self._ttl)
        if exc is not None:
            self._failed(exc)

    # ------------------------------------------------------------------ state
    def _count(self, name: str) -> None:
        # Under the lock: `+=` on an attribute can lose counts between threads.
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _reads_allowed(self) -> bool:
        return time.monotonic() >= self._paused_until and self._available()

    def _available(self) -> bool:
        """False while Redis is known down; once per CACHE_RETRY_SECONDS one caller
        gets True to try it again."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at:
                return False
            self._retry_at = now + self._retry  # the others wait for this one's verdict
            return True

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self._retry_at = now + self._retry
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:  # once per outage, not once per call
            log.warning("the cache (Redis) is unreachable: serving from PostgreSQL and "
                        "trying it again every %gs (%s: %s)", self._retry,
                        type(exc).__name__, exc)

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("the cache (Redis) answers again after %.1fs", time.monotonic() - since)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"down", "hits": n, "misses": n, "errors": n, ...}``; pings
        Redis unless it is known down and not yet due for another try. Never raises."""
        if self._available():
            try:
                self._client.ping()
            except redis.RedisError as exc:
                self._failed(exc)
            else:
                self._succeeded()
        result: dict[str, Any] = {
            "status": "down" if self._down_since is not None else "ok",
            "hits": self.hits, "misses": self.misses, "errors": self.errors,
            "bypassed": self.bypassed, "failed_bumps": self.failed_bumps,
        }
        paused = self._paused_until - time.monotonic()
        if paused > 0:
            result["reads_paused_seconds"] = round(paused, 1)
        return result

    def close(self) -> None:
        self._client.close()
        self._client.connection_pool.disconnect()

    # ------------------------------------------------------------------ keys
    def _version_key(self, kind: str, ident: str) -> str:
        return f"{self._base}v:{kind}:{ident}"

    def _data_prefix(self) -> str:
        return f"{self._base}d:"


def _item(item: tuple) -> str:
    # JSON keeps items apart that plain joining would not (a memory key holding ':').
    return json.dumps(item, separators=(",", ":"))


def open_cache(settings: Settings, dbname: str) -> Cache | None:
    """The cache CACHE_* describe, or None when CACHE_ENABLED is false. Connects lazily:
    Redis down at start-up is an outage like any other.

    :raises ConfigError: CACHE_PASSWORD_FILE is unreadable or readable by others.
    """
    if not settings.cache_enabled:
        return None
    url = settings.cache_url
    timeout = settings.cache_timeout_seconds
    kwargs: dict[str, Any] = {
        "username": settings.cache_username,
        "password": read_password(settings.cache_password_file),
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        # No retry inside redis-py: the caller falls back to PostgreSQL at once.
        "retry_on_timeout": False,
        # Two round trips saved per new connection (CLIENT SETINFO).
        "lib_name": None, "lib_version": None,
    }
    if urlsplit(url).scheme == "rediss":
        kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True,
                      ssl_ca_certs=str(settings.cache_sslrootcert)
                      if settings.cache_sslrootcert else None)
    client = redis.Redis.from_url(url, **kwargs)
    return Cache(client, base=f"donnadb:{dbname}:{FORMAT}:", ttl=settings.cache_ttl_seconds,
                 retry=settings.cache_retry_seconds)


def forget(settings: Settings, dbname: str, keys: Iterable[tuple[str, str]]) -> bool:
    """New versions for ``keys`` ((kind, id) pairs) changed outside the DAL (`donnactl
    users forget`), so that no application host serves their cached values. True when
    done or the cache is off; False (and a warning) when Redis could not be reached:
    the values then expire within CACHE_TTL_SECONDS.

    :raises ConfigError: CACHE_PASSWORD_FILE is unreadable or readable by others.
    """
    store = open_cache(settings, dbname)
    if store is None:
        return True
    try:
        store.bump(keys)
        if store.failed_bumps:
            log.warning("could not drop the cached values of what was changed: they "
                        "expire within %gs (CACHE_TTL_SECONDS)", settings.cache_ttl_seconds)
        return store.failed_bumps == 0
    finally:
        store.close()


def read_password(path: Path | None) -> str | None:
    """The password in ``path`` (its first line), None without a file.

    :raises ConfigError: unreadable, or readable by group or others.
    """
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read CACHE_PASSWORD_FILE {path} "
                          f"({type(exc).__name__})") from None
    if mode & 0o077:
        raise ConfigError(f"CACHE_PASSWORD_FILE {path} is readable by others; chmod 600 it")
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"CACHE_PASSWORD_FILE {path} is empty")
    return lines[0]

"""The Redis read-through cache of PostgresDataAccess (donnadb/dal/cache.py) beyond the
contract suite (which runs with it on as "postgresql+cache"): a real redis-server per
session (tests/dal/redisserver.py) and the real PostgreSQL; nothing mocked."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from donnadb.config import load_settings
from donnadb.dal import PostgresDataAccess, cache, cachecodec
from donnadb.errors import ConfigError
from tests.dal import cacherace
from tests.dal.conftest import sent_messages
from tests.dal.redisserver import cache_settings
from tests.support import crypto_settings

DONNACTL = Path(sys.executable).with_name("donnactl")
#: What one call may cost with Redis dead or hung: the socket timeout (0.1 s) plus the
#: PostgreSQL read, with room for a busy machine.
CALL_BOUND = 1.0


@pytest.fixture
def fast(settings, redis_server):
    """Settings with the cache on, a short TTL and a short retry interval."""
    return cache_settings(settings, redis_server, cache_ttl_seconds=2.0,
                          cache_retry_seconds=0.2, cache_timeout_seconds=0.1)


def open_dal(s, dbname) -> PostgresDataAccess:
    return PostgresDataAccess(s, dbname=dbname)


def counts(dal) -> dict:
    c = dal._cache
    return {"hits": c.hits, "misses": c.misses, "bypassed": c.bypassed}


def seed(dal) -> str:
    uid = dal.create_user({"clerk_id": "user_ana"})
    dal.create_chat_session("c_1", uid, {"m": 1}, title="one")
    dal.add_message("c_1", "user", "hello")
    dal.set_user_memory(uid, "context", "k", 1)
    return uid


# ---------------------------------------------------------------- values
def test_values_come_back_exactly():
    lisbon = ZoneInfo("Europe/Lisbon")
    value = [{
        "at": datetime(2026, 7, 1, 12, 30, 1, 123456, tzinfo=lisbon),
        "utc": datetime(2026, 1, 2, tzinfo=ZoneInfo("Etc/UTC")),
        "fixed": datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=-3))),
        "metadata": {"$dt": "not a date", "$$x": 1, "$": [None, True, 1.5, 2**70],
                     "nested": {"$tz": "x", "ok": "ünï \\ \" ✓"}},
        "n": 0, "flag": False, "none": None,
    }, None, "text"]
    back = cachecodec.decode(cachecodec.encode(value))
    assert back == value
    assert back[0]["at"].tzinfo == lisbon and back[0]["at"].utcoffset() == timedelta(hours=1)
    assert back[0]["utc"].tzinfo == ZoneInfo("Etc/UTC")
    assert back[0]["fixed"].utcoffset() == timedelta(hours=-3)
    assert type(back[0]["metadata"]["$"][3]) is int
    for bad in (datetime(2026, 1, 1), ("a", "tuple"), {1: "int key"}, b"bytes"):
        with pytest.raises(cachecodec.CodecError):
            cachecodec.encode(bad)


# ---------------------------------------------------------------- settings
def test_the_password_is_a_private_file_never_a_url(tmp_path, monkeypatch):
    secret = tmp_path / "redis.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        cache.read_password(secret)
    secret.chmod(0o600)
    assert cache.read_password(secret) == "s3cret"
    with pytest.raises(ConfigError, match="cannot read"):
        cache.read_password(tmp_path / "missing")
    monkeypatch.setenv("CACHE_URL", "redis://:s3cret@127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="CACHE_URL"):
        load_settings()
    monkeypatch.setenv("CACHE_URL", "rediss://redis.internal:6380/2")
    assert load_settings().cache_url == "rediss://redis.internal:6380/2"


def test_off_by_default(settings, pg_db):
    assert load_settings().cache_enabled is False
    with open_dal(settings, pg_db) as dal:
        assert dal._cache is None and "cache" not in dal.health_check()


# ---------------------------------------------------------------- reads and versions
def test_a_hit_is_one_round_trip_and_no_query(fast, pg_db, redis_server, tmp_path):
    one = fast.model_copy(update={"db_max_connections": 1})  # sent_messages traces it
    with open_dal(one, pg_db) as dal:
        uid = seed(dal)

        def read():
            return (dal.get_chat_history("c_1"), dal.get_chat_session("c_1"),
                    dal.get_user_memory(uid, "context"))

        first = read()
        assert counts(dal) == {"hits": 0, "misses": 3, "bypassed": 0}
        admin = redis_server.admin()
        admin.config_resetstat()
        again = []
        sent = sent_messages(dal, tmp_path / "trace", lambda: again.append(read()))
        assert again == [first]
        assert counts(dal)["hits"] == 3
        assert sent == []  # nothing reached PostgreSQL
        stats = {k: v["calls"] for k, v in admin.info("commandstats").items()
                 if not k.startswith(("cmdstat_config", "cmdstat_info"))}
        # Each read: one EVALSHA; the GETs are the script's own, inside it.
        assert stats == {"cmdstat_evalsha": 3, "cmdstat_get": 6}, stats


def test_what_is_cached_and_what_is_not(fast, pg_db):
    with open_dal(fast, pg_db) as dal:
        seed(dal)
        for _ in range(2):
            dal.get_chat_history("c_1", limit=5, offset=1)  # an older page
            dal.get_chat_history("c_1", limit=fast.cache_history_max_limit + 1)
            dal.get_message_count("c_1")
        assert counts(dal) == {"hits": 0, "misses": 0, "bypassed": 0}
        with dal.transaction():  # a transaction reads its own writes, never the cache
            dal.add_message("c_1", "user", "inside")
            assert [m["content"] for m in dal.get_chat_history("c_1")] == ["hello", "inside"]
        assert counts(dal) == {"hits": 0, "misses": 0, "bypassed": 0}


def test_another_hosts_write_invalidates_this_hosts_copy(fast, pg_db):
    """Two DAL instances sharing Redis and PostgreSQL, as two application hosts."""
    with open_dal(fast, pg_db) as here, open_dal(fast, pg_db) as there:
        uid = seed(here)
        for _ in range(2):
            here.get_chat_session("c_1")
            here.get_chat_history("c_1")
            here.get_user_memory(uid, "context")
        assert counts(here)["hits"] == 3
        there.update_chat_session("c_1", {"title": "two"})
        there.add_message("c_1", "assistant", "hi there")
        there.set_user_memory(uid, "context", "k", 2)
        assert here.get_chat_session("c_1")["title"] == "two"
        assert [m["content"] for m in here.get_chat_history("c_1")] == ["hello", "hi there"]
        assert here.get_user_memory(uid, "context") == {"k": 2}
        assert counts(here)["hits"] == 3  # all three were misses
        assert here.get_chat_session("c_1")["message_count"] == 2
        assert counts(here)["hits"] == 4  # and cached again


def test_a_transaction_invalidates_at_commit_and_not_on_rollback(fast, pg_db):
    with open_dal(fast, pg_db) as here, open_dal(fast, pg_db) as there:
        uid = seed(here)
        there.get_user_memory(uid, "context")
        with here.transaction():
            here.set_user_memory(uid, "context", "k", 2)
            # Not committed: the other host still reads (and may cache) the old value.
            assert there.get_user_memory(uid, "context") == {"k": 1}
        assert there.get_user_memory(uid, "context") == {"k": 2}
        hits = counts(there)["hits"]
        with pytest.raises(RuntimeError), here.transaction():
            here.set_user_memory(uid, "context", "k", 3)
            raise RuntimeError("abort")
        assert there.get_user_memory(uid, "context") == {"k": 2}
        assert counts(there)["hits"] == hits + 1  # the version did not move


def test_an_expiring_memory_entry_leaves_the_cache_when_it_expires(fast, pg_db):
    s = fast.model_copy(update={"cache_ttl_seconds": 60.0})
    with open_dal(s, pg_db) as dal:
        uid = seed(dal)
        dal.set_user_memory(uid, "context", "soon", 2,
                            expires_at=datetime.now(UTC) + timedelta(seconds=1))
        assert dal.get_user_memory(uid, "context") == {"k": 1, "soon": 2}
        assert dal.get_user_memory(uid, "context") == {"k": 1, "soon": 2}
        assert counts(dal)["hits"] == 1
        time.sleep(1.2)
        assert dal.get_user_memory(uid, "context") == {"k": 1}


# ---------------------------------------------------------------- staleness
def test_no_read_started_after_a_write_returned_sees_an_older_value(fast, pg_db):
    """Writers and readers in separate processes: after a write returns, no read that
    starts later returns the value it replaced (through the cache, on a miss or a hit)."""
    s = fast.model_copy(update={"cache_ttl_seconds": 60.0})
    writers, readers = 2, 3
    with open_dal(s, pg_db) as dal:
        uid = dal.create_user({"clerk_id": "user_race"})
        chats = [f"c_race_{n}" for n in range(writers)]
        for chat in chats:
            dal.create_chat_session(chat, uid, {})
    ctx = multiprocessing.get_context("spawn")
    start_at = time.monotonic() + 8.0  # every process connected and waiting by then
    jobs = [("writer", n) for n in range(writers)] + [("reader", n) for n in range(readers)]
    with ctx.Pool(len(jobs)) as pool:
        results = pool.starmap(cacherace.run, [
            (role, n, s, pg_db, uid, chats, start_at, 3.0) for role, n in jobs])
    written = sorted(r for res in results if res["role"] == "writer" for r in res["records"])
    reads = [r for res in results if res["role"] == "reader" for r in res["records"]]
    assert len(written) > 100 and len(reads) > 300
    stale = []
    for kind, w, seen, started in reads:
        newest = max((v for k, n, v, at in written if (k, n) == (kind, w) and at < started),
                     default=0)
        if seen < newest:
            stale.append((kind, w, seen, newest))
    assert stale == []
    for res in results:
        assert res["cache"]["errors"] == 0, res["cache"]
    # The cache was really used by the readers.
    assert sum(res["cache"]["hits"] for res in results if res["role"] == "reader") > 100


# ---------------------------------------------------------------- Redis down or slow
def timed(call):
    started = time.monotonic()
    value = call()
    elapsed = time.monotonic() - started
    assert elapsed < CALL_BOUND, elapsed
    return value


def cache_log(caplog, text):
    return [r for r in caplog.records if r.name == "donnadb.dal.cache" and text in r.getMessage()]


def wait_until_cached(dal, read, timeout):
    """Read until a read is a cache hit; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        hits = dal._cache.hits
        read()
        if dal._cache.hits > hits:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"the cache was not used again within {timeout}s")


def test_a_dead_redis_is_served_by_postgresql_and_used_again(fast, pg_db, redis_server,
                                                            caplog):
    caplog.set_level(logging.INFO, logger="donnadb.dal.cache")
    with open_dal(fast, pg_db) as dal:
        uid = seed(dal)
        dal.get_chat_history("c_1")
        redis_server.kill()
        for i in range(20):
            timed(lambda i=i: dal.add_message("c_1", "user", f"m{i}"))
            page = timed(lambda: dal.get_chat_history("c_1", limit=1))
            assert page[0]["content"] == f"m{i}"
            assert timed(lambda: dal.get_chat_session("c_1"))["message_count"] == i + 2
            timed(lambda i=i: dal.set_user_memory(uid, "context", "k", i))
            assert timed(lambda: dal.get_user_memory(uid, "context")) == {"k": i}
        health = timed(dal.health_check)
        assert health["status"] == "ok"
        assert health["cache"]["status"] == "down" and health["cache"]["errors"] >= 1
        assert len(cache_log(caplog, "unreachable")) == 1  # once per outage
        redis_server.start()
        # Writes failed to reach Redis: cached reads resume after the TTL.
        waited = wait_until_cached(dal, lambda: dal.get_chat_session("c_1"),
                                   fast.cache_ttl_seconds + 3)
        assert waited >= fast.cache_ttl_seconds - 1.0
        assert dal.get_chat_session("c_1")["message_count"] == 21
        assert dal.health_check()["cache"]["status"] == "ok"
        assert len(cache_log(caplog, "answers again")) == 1


def test_a_hung_redis_costs_each_call_a_bounded_delay(fast, pg_db, redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="donnadb.dal.cache")
    with open_dal(fast, pg_db) as dal:
        uid = seed(dal)
        dal.get_chat_session("c_1")
        redis_server.pause()  # SIGSTOP: connections are accepted, nothing answers
        try:
            started = time.monotonic()
            for _ in range(30):
                assert timed(lambda: dal.get_chat_session("c_1"))["title"] == "one"
                assert timed(lambda: dal.get_user_memory(uid, "context")) == {"k": 1}
            # One timeout per retry interval, not one per call (60 calls would take 6 s).
            spent = time.monotonic() - started
            assert spent < 30 * 2 * fast.cache_timeout_seconds / 2, spent
            health = timed(dal.health_check)
            assert health["status"] == "ok" and health["cache"]["status"] == "down"
            assert health["cache"]["errors"] <= spent / fast.cache_retry_seconds + 2, health
        finally:
            redis_server.resume()
        # Only reads failed: the cache is used again after the retry interval.
        waited = wait_until_cached(dal, lambda: dal.get_chat_session("c_1"), 3.0)
        assert waited < 2.0
        assert dal.health_check()["cache"]["status"] == "ok"
        assert len(cache_log(caplog, "unreachable")) == 1


def test_a_failed_bump_stops_cached_reads_for_the_ttl(fast, pg_db, redis_server):
    """A write whose new version could not be set: this host reads PostgreSQL for the
    TTL; another host may serve its cached copy, for at most the TTL."""
    with open_dal(fast, pg_db) as here, open_dal(fast, pg_db) as there:
        uid = seed(here)
        filled = time.monotonic()
        assert here.get_user_memory(uid, "context") == {"k": 1}
        assert there.get_user_memory(uid, "context") == {"k": 1}
        assert counts(there)["hits"] == 1
        admin = redis_server.admin()
        admin.acl_setuser("donnadb", enabled=True, reset=False, commands=["-set"])
        try:
            here.set_user_memory(uid, "context", "k", 2)  # committed; the bump refused
        finally:
            admin.acl_setuser("donnadb", enabled=True, reset=False, commands=["+set"])
        assert here._cache.failed_bumps == 1
        assert here.get_user_memory(uid, "context") == {"k": 2}
        assert counts(here)["bypassed"] == 1
        # The other host still finds the old value: what the bound is about.
        assert there.get_user_memory(uid, "context") == {"k": 1}
        health = here.health_check()["cache"]
        assert 0 < health["reads_paused_seconds"] <= fast.cache_ttl_seconds
        # Nowhere older than the TTL, counted from the read that filled the cache.
        time.sleep(max(0.0, filled + fast.cache_ttl_seconds - time.monotonic()) + 0.05)
        assert there.get_user_memory(uid, "context") == {"k": 2}
        assert here.get_user_memory(uid, "context") == {"k": 2}
        assert here.get_user_memory(uid, "context") == {"k": 2}
        assert counts(here)["hits"] >= 1  # reading the cache again


def test_the_password_file_is_the_only_secret(fast, pg_db, redis_server):
    """The DAL authenticates as the ACL user with the file's password; nothing of it is
    in the URL or the process arguments of the server."""
    assert "@" not in fast.cache_url
    cmdline = Path(f"/proc/{redis_server.proc.pid}/cmdline").read_bytes()
    assert redis_server.app_password.encode() not in cmdline
    assert oct(os.stat(redis_server.password_file).st_mode & 0o777) == "0o600"
    with open_dal(fast, pg_db) as dal:
        seed(dal)
        dal.get_chat_session("c_1")
        assert dal.get_chat_session("c_1") is not None
        assert counts(dal)["hits"] == 1
    wrong = fast.model_copy(update={"cache_username": "nobody"})
    with open_dal(wrong, pg_db) as dal:  # refused by Redis: served by PostgreSQL
        assert dal.get_chat_session("c_1")["title"] == "one"
        assert dal.health_check()["cache"]["status"] == "down"


def test_with_replicas_a_miss_reads_the_leader(settings, replica_db, redis_server):
    """A standby that replays nothing: what the cache stores comes from the leader (the
    standby's older copy would be stored under the current version)."""
    rs = replica_db
    rs.standby.sql("SELECT pg_wal_replay_pause()")
    try:
        s = cache_settings(rs.settings(settings, db_read_your_writes_seconds=0,
                                       db_read_max_lag_seconds=3600), redis_server)
        with PostgresDataAccess(s, dbname=rs.dbname) as here, \
                PostgresDataAccess(s, dbname=rs.dbname) as there:
            there.create_chat_session("c_1", None, {}, title="one")
            there.add_message("c_1", "user", "hello")
            assert here.get_message_count("c_1") == 0  # not cached: the standby, behind
            assert here.get_chat_session("c_1")["title"] == "one"
            assert [m["content"] for m in here.get_chat_history("c_1")] == ["hello"]
            assert here.get_chat_session("c_1")["message_count"] == 1
            assert counts(here) == {"hits": 1, "misses": 2, "bypassed": 0}
    finally:
        rs.standby.sql("SELECT pg_wal_replay_resume()")


def test_an_erased_user_is_not_served_from_the_cache(fast, pg_db):
    """`donnactl users forget` erases in PostgreSQL directly, then drops the versions."""
    s = fast.model_copy(update={"cache_ttl_seconds": 60.0})
    with open_dal(s, pg_db) as dal:
        uid = seed(dal)
        for _ in range(2):
            dal.get_chat_session("c_1")
            dal.get_chat_history("c_1")
            dal.get_user_memory(uid, "context")
        assert counts(dal)["hits"] == 3
        env = {**os.environ, "CACHE_ENABLED": "true", "CACHE_URL": s.cache_url,
               "CACHE_USERNAME": s.cache_username,
               "CACHE_PASSWORD_FILE": str(s.cache_password_file)}
        done = subprocess.run([str(DONNACTL), "users", "forget", uid, "--yes", "--json",
                               "--dbname", pg_db], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["sessions"] == 1
        assert dal.get_chat_session("c_1") is None
        assert dal.get_chat_history("c_1") == []
        assert dal.get_user_memory(uid, "context") == {}
        assert counts(dal)["hits"] == 3


def _everything_in(server) -> bytes:
    """Every value in Redis (the cache stores strings only: anything else fails here)."""
    admin = server.admin()
    keys = list(admin.scan_iter(count=1000))
    assert keys and {admin.type(k) for k in keys} == {b"string"}
    return b"\n".join(admin.get(k) or b"" for k in keys)


def test_with_field_encryption_redis_holds_ciphertext_only(fast, pg_db, redis_server,
                                                           kek_file):
    for sealed in (False, True):
        redis_server.flush()
        s = crypto_settings(fast, kek_file) if sealed else fast
        with open_dal(s, pg_db) as dal:
            uid = dal.create_user({"clerk_id": f"user_sealed_{sealed}"})
            marker = f"zqsecret{uid[:8]}"
            dal.set_user_memory(uid, "context", "note", {"text": marker})
            dal.set_user_memory(uid, "profile", "city", marker + "city")
            for _ in range(2):
                assert dal.get_user_memory(uid, "context") == {"note": {"text": marker}}
                assert dal.get_user_memory(uid, "profile", "city") == {"city": marker + "city"}
            assert counts(dal)["hits"] == 2
        # Without encryption the cache holds the value (the scan's control); with it,
        # only the sealed value and the wrapped data key.
        assert (marker.encode() in _everything_in(redis_server)) is not sealed

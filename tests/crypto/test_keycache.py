"""The in-memory cache of unwrapped data keys (donnadb/crypto/keycache.py): bounded,
matched by wrapped form, and emptied of erased users for good."""

from __future__ import annotations

import threading

from donnadb.crypto import keycache
from donnadb.crypto.keycache import KeyCache


def test_the_least_recently_used_key_goes_first_beyond_the_size():
    cache = KeyCache(size=3)
    for n in range(3):
        cache.put(f"u{n}", b"w%d" % n, f"k{n}")
    assert cache.get("u0") == "k0"  # used: u1 is now the oldest
    cache.put("u3", b"w3", "k3")
    assert len(cache) == 3
    assert cache.get("u1") is None
    assert [cache.get(u) for u in ("u0", "u2", "u3")] == ["k0", "k2", "k3"]


def test_a_key_is_found_only_for_the_wrapped_form_it_came_from():
    cache = KeyCache()
    cache.put("u", b"old", "k")
    assert cache.get("u", b"old") == "k" and cache.get("u") == "k"
    assert cache.get("u", b"rewrapped") is None
    cache.put("u", b"rewrapped", "k")  # the same data key, re-wrapped: replaced
    assert cache.get("u", b"old") is None and cache.get("u", b"rewrapped") == "k"


def test_dropping_a_stale_key_keeps_a_newer_one_another_thread_cached():
    cache = KeyCache()
    cache.put("u", b"new", "k2")
    cache.drop("u", b"old")
    assert cache.get("u") == "k2"
    cache.drop("u", b"new")
    assert cache.get("u") is None


def test_forget_empties_every_cache_and_refuses_the_erased_wrapped_key_later():
    one, two = KeyCache(), KeyCache()
    one.put("gone", b"gone-key", "k")
    two.put("gone", b"gone-key", "k")
    two.put("kept", b"kept-key", "k")
    keycache.forget(["gone"], [b"gone-key"])
    assert one.get("gone") is None and two.get("gone") is None
    assert two.get("kept") == "k"
    # A read that began before the erasure committed comes back with the old key.
    one.put("gone", b"gone-key", "k")
    assert one.get("gone") is None
    # The same id made again has another wrapped key: cached as any other.
    one.put("gone", b"new-key", "k2")
    assert one.get("gone", b"new-key") == "k2"


def test_puts_racing_a_forget_never_leave_the_erased_key_behind():
    cache = KeyCache()
    wrapped = b"raced-key"
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            cache.put("raced", wrapped, "k")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    keycache.forget(["raced"], [wrapped])
    stop.set()
    for t in threads:
        t.join()
    assert cache.get("raced") is None

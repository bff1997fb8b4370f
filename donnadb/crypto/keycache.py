"""Unwrapped data keys kept in memory, so that a sealed read or write does not unwrap
its user's key every time, and how an erasure takes them out again.

One :class:`KeyCache` per key file user (the DAL's Sealer), least recently used first
out. An entry is the user's data key with the wrapped form it was unwrapped from: a
row carrying another wrapped key (re-wrapped by `keys rotate`, or a new key of a user
erased and made again) is unwrapped afresh and replaces it, and a sealed write is
guarded by the wrapped key (donnadb/dal/postgres.py).

:func:`forget` drops erased users from every cache of this process, and refuses their
wrapped keys from then on: a read that began before the erasure's commit must not put
the key back afterwards. Pure Python (no ``cryptography``): the ops package calls it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

#: Data keys one cache holds: a key and its wrapped form take about 300 bytes, so at
#: most ~3 MB, and far more users than an application host serves at a time.
SIZE = 10_000
#: Wrapped keys of erased users remembered: enough for the reads in flight when an
#: erasure commits (each erasure adds one).
ERASED_SIZE = 10_000

K = TypeVar("K")

_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()
_erased: OrderedDict[bytes, None] = OrderedDict()
_erased_lock = threading.Lock()


class KeyCache(Generic[K]):
    """User id -> (wrapped key, data key), bounded; safe to share between threads."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[bytes, K]] = OrderedDict()
        self._lock = threading.Lock()
        _caches.add(self)

    def get(self, user_id: str, wrapped: bytes | None = None) -> K | None:
        """The cached key of ``user_id`` (only if unwrapped from ``wrapped``, when given)."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None or (wrapped is not None and entry[0] != wrapped):
                return None
            self._entries.move_to_end(user_id)
            return entry[1]

    def put(self, user_id: str, wrapped: bytes, key: K) -> None:
        """Keep ``key``, unwrapped from ``wrapped``, unless that is an erased user's."""
        with self._lock:
            # Checked under this cache's lock: forget() records the wrapped key first,
            # then takes the lock to drop the entry, so it cannot miss one put here.
            if wrapped in _erased:
                return
            self._entries[user_id] = (wrapped, key)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, user_id: str, wrapped: bytes | None = None) -> None:
        """Forget the key of ``user_id`` (only the one unwrapped from ``wrapped``, when
        given: another thread may have cached the newer one meanwhile)."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None and (wrapped is None or entry[0] == wrapped):
                del self._entries[user_id]

    def __len__(self) -> int:
        return len(self._entries)


def forget(user_ids: Iterable[str], wrapped: Iterable[bytes] = ()) -> None:
    """After an erasure's commit: drop ``user_ids``' keys from every cache of this
    process, and never cache again the ``wrapped`` keys the erasure deleted."""
    with _erased_lock:
        for raw in wrapped:
            _erased[bytes(raw)] = None
        while len(_erased) > ERASED_SIZE:
            _erased.popitem(last=False)
    ids = list(user_ids)
    for cache in list(_caches):
        for user_id in ids:
            cache.drop(user_id)

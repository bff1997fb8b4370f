"""Per-entity figures of dual-write's copies to PostgreSQL, for ``health_check()`` and the
metrics: how long each copy took and how many writes were queued for reconcile.

Counts and sums run from the DAL's start (per process, like the cache's hit counters);
the p95 is over each entity's last :data:`WINDOW` copies, so it follows the present
load rather than the whole life of the process.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from donnadb.dal.phases import ENTITIES

#: The entity each mirrored write belongs to (the ``op`` of dual-write's ``_mirror``).
OP_ENTITY = {
    "create_user": "users", "update_user": "users",
    "set_user_memory": "memory", "delete_user_memory": "memory",
    "create_chat_session": "chats", "update_chat_session": "chats",
    "add_message": "messages",
    "write_log": "logs",
}
#: Copies per entity the p95 is computed over.
WINDOW = 1000


class _Entity:
    def __init__(self) -> None:
        self.copies = 0
        self.seconds = 0.0
        self.failures = 0
        self.recent: deque[float] = deque(maxlen=WINDOW)


class MirrorStats:
    """Thread-safe counters per entity; ``copied(op, seconds)``, ``queued(ops)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entities = {entity: _Entity() for entity in ENTITIES}

    def copied(self, op: str, seconds: float) -> None:
        """A copy of ``op``'s write to PostgreSQL ran for ``seconds`` (it may have failed).
        An op without an entity is not counted: figures never fail a write."""
        with self._lock:
            e = self._entity(op)
            if e is None:
                return
            e.copies += 1
            e.seconds += seconds
            e.recent.append(seconds)

    def queued(self, ops: list[str]) -> None:
        """These writes (one op each) were queued for reconcile: PostgreSQL missed them."""
        with self._lock:
            for op in ops:
                e = self._entity(op)
                if e is not None:
                    e.failures += 1

    def _entity(self, op: str) -> _Entity | None:
        entity = OP_ENTITY.get(op)
        return None if entity is None else self._entities[entity]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{entity: {"copies", "seconds_sum", "seconds_p95", "failures"}}`` for every
        entity (zeros, and a p95 of ``None``, where nothing was copied)."""
        with self._lock:
            return {name: {"copies": e.copies, "seconds_sum": round(e.seconds, 6),
                           "seconds_p95": p95(e.recent), "failures": e.failures}
                    for name, e in self._entities.items()}


def p95(values: deque[float] | list[float]) -> float | None:
    """Nearest-rank 95th percentile, ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 6)

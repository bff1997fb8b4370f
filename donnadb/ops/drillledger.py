"""The failure drill's ledger and clocks: writer threads that keep every acknowledged
message id, when writes failed and came back, and the load's latencies split at the
fault. Times are wall-clock (``time.time``): Locust logs its requests with the same
clock from another process."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from donnadb.dal import PostgresDataAccess

#: A write slower than this counts as failed (a frozen server answers nothing at all);
#: a fresh writer takes over so the ledger keeps probing.
WRITE_TIMEOUT = 5.0
#: The ledger's pause between writes, and after a failed one.
WRITE_PAUSE = 0.02
FAIL_PAUSE = 0.2
#: Writer threads in flight at most, stuck ones included (stays under the DAL's pool).
MAX_WRITERS = 16


# ------------------------------------------------------------------------ the ledger
@dataclass
class Attempt:
    start: float
    end: float | None = None
    message_id: str | None = None
    error: str | None = None

    def failed(self, now: float) -> bool:
        """An error, or no answer within :data:`WRITE_TIMEOUT` (even if one came later)."""
        return self.error is not None or ((self.end or now) - self.start) > WRITE_TIMEOUT


class Ledger:
    """Writer threads appending to one chat through the DAL; every attempt is kept."""

    def __init__(self, dal: PostgresDataAccess, chat_id: str, writers: int) -> None:
        self.dal, self.chat_id, self.writers = dal, chat_id, writers
        self.attempts: list[Attempt] = []
        self._current: dict[int, Attempt | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0

    def start(self) -> None:
        for _ in range(self.writers):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._seq += 1
            n = self._seq
            self._current[n] = None
        t = threading.Thread(target=self._write_loop, args=(n,), name=f"drill-writer-{n}",
                             daemon=True)
        self._threads.append(t)
        t.start()

    def _write_loop(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            attempt = Attempt(time.time())
            with self._lock:
                self.attempts.append(attempt)
                self._current[n] = attempt
            try:
                attempt.message_id = self.dal.add_message(
                    self.chat_id, "user", f"drill write {n}.{i}", {"drill": True})
            except Exception as exc:  # noqa: BLE001 - every failure is a data point
                attempt.error = type(exc).__name__
            attempt.end = time.time()
            with self._lock:
                if self._current.get(n) is not attempt:
                    return  # replaced while stuck: its successor writes on
                self._current[n] = None
            self._stop.wait(FAIL_PAUSE if attempt.error else WRITE_PAUSE)

    def watch(self) -> None:
        """Replace writers stuck longer than :data:`WRITE_TIMEOUT` (bounded)."""
        now = time.time()
        with self._lock:
            stuck = [n for n, a in self._current.items()
                     if a is not None and now - a.start > WRITE_TIMEOUT]
            for n in stuck:
                del self._current[n]
            live = sum(1 for t in self._threads if t.is_alive())
        for _ in stuck[:max(0, MAX_WRITERS - live)]:
            self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)

    def acknowledged(self) -> list[str]:
        return [a.message_id for a in self.snapshot() if a.message_id]


def outage(attempts: list[Attempt], fault_at: float, now: float) -> tuple[float, float | None]:
    """(first failed write at or after the fault, first acknowledged write after it).

    No failure at all: (``fault_at``, ``fault_at``). Not recovered yet: (first, None).
    """
    failed = [a.start for a in attempts
              if a.failed(now) and (a.end is None or a.end >= fault_at)]
    if not failed:
        return fault_at, fault_at
    first = min(failed)
    acks = [a.end for a in attempts
            if a.message_id and a.start >= first and not a.failed(now)]
    return first, (min(acks) if acks else None)


# ------------------------------------------------------------------------ latencies
def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 1)


def read_requests(path: Path) -> list[tuple[float, bool, float]]:
    """(end time, failed, ms) of every request in a ``--donna-request-log`` file (the
    time the request ended: Locust reports a request once it is over)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4:
                rows.append((float(parts[0]), parts[1] == "1", float(parts[2])))
    return rows


def split_requests(rows: list[tuple[float, bool, float]], loaded_at: float,
                   fault_at: float, recovered_at: float) -> dict[str, Any]:
    """p95 and failures of the requests that started before the fault, during the
    outage, after recovery (a request stuck in the outage counts there, however late it
    ends)."""
    phases = {"before": (loaded_at, fault_at), "during": (fault_at, recovered_at),
              "after": (recovered_at, math.inf)}
    started = [(end - ms / 1000.0, failed, ms) for end, failed, ms in rows]
    out: dict[str, Any] = {}
    for phase, (lo, hi) in phases.items():
        inside = [r for r in started if lo <= r[0] < hi]
        out[phase] = {"requests": len(inside), "failed": sum(1 for r in inside if r[1]),
                      "p95_ms": p95([r[2] for r in inside if not r[1]])}
    total = sum(1 for r in started if r[0] >= loaded_at)
    failed = sum(1 for r in started if r[0] >= loaded_at and r[1])
    out["total"] = {"requests": total, "failed": failed,
                    "failed_pct": round(100.0 * failed / total, 3) if total else None}
    return out

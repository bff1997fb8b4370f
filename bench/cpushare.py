"""Who used the cores during a load step, and how much of the server's time went to
planning.

``Sampler`` samples, every half second while a step runs: the load generator's CPU
(this process's live descendants: Locust and the workers it forks), the server's (every
``postgres`` and ``pgbouncer`` process, plus what the postmaster's exited backends used:
the kernel adds a reaped child's time to its parent's ``cutime``/``cstime``), the
cache's (``redis-server``) and the machine's busy time (/proc/stat). ``shares`` gives
each over a window inside the step (the steady part, after the ramp-up and a warm-up)
as a share of the window's wall time on all cores.

The load test's runner resets pg_stat_statements before a step and reads its top
statements after; their planning time is counted only while
``pg_stat_statements.track_planning`` is on: ``planning_tracked()`` turns it on for the
run (ALTER SYSTEM, reload) and restores the previous value after.
"""

from __future__ import annotations

import bisect
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from donnadb import db

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
#: Processes that make up the database server (their /proc comm).
SERVER_COMMS = ("postgres", "pgbouncer")
#: The DAL's cache (a redis-server the bench keeps alive for the whole run).
CACHE_COMMS = ("redis-server",)
#: /proc/stat's cpu fields that count busy time: user nice system irq softirq steal.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def server_cpu_seconds(comms: tuple[str, ...] = SERVER_COMMS) -> float:
    """utime + stime + reaped children's time of every process named in ``comms``."""
    return sum(spent for _, name, spent in _proc_ticks().values() if name in comms) / TICK


def _proc_ticks() -> dict[int, tuple[int, str, int]]:
    """Every process: pid -> (parent pid, name, its CPU ticks with its reaped children's)."""
    ticks: dict[int, tuple[int, str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked: its parent's cutime has it now
        pid, rest = text.split(" (", 1)
        name, rest = rest.rsplit(")", 1)
        fields = rest.split()
        ticks[int(pid)] = (int(fields[1]), name, sum(int(fields[i]) for i in (11, 12, 13, 14)))
    return ticks


def live_cpu_seconds(root: int) -> tuple[float, float, float]:
    """(``root``'s live descendants, the server, the cache): CPU seconds of each, reaped
    children included, from one pass over /proc."""
    ticks = _proc_ticks()
    load = server = cache = 0
    for pid, (_, name, spent) in ticks.items():
        if name in SERVER_COMMS:
            server += spent
        elif name in CACHE_COMMS:
            cache += spent
        elif _descends(pid, root, ticks):
            load += spent
    return load / TICK, server / TICK, cache / TICK


def _descends(pid: int, root: int, ticks: dict[int, tuple[int, str, int]]) -> bool:
    seen = 0
    while pid in ticks and seen < 64:  # a bounded walk: pids are reused
        pid = ticks[pid][0]
        if pid == root:
            return True
        seen += 1
    return False


def busy_cpu_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(fields[i]) for i in BUSY_FIELDS) / TICK


def with_busy_cpu(fn, spent: list[float]):
    """``fn`` that also appends the machine's busy CPU seconds during it to ``spent``."""
    def run():
        before = busy_cpu_seconds()
        result = fn()
        spent.append(busy_cpu_seconds() - before)
        return result
    return run


@dataclass
class Shares:
    """Shares of a window's CPU capacity (wall seconds x cores), 0-1 each."""

    load: float = 0.0
    server: float = 0.0
    cache: float = 0.0
    busy: float = 0.0


@dataclass(frozen=True)
class Sample:
    """CPU seconds spent so far, at ``at`` (time.time())."""

    at: float
    load: float
    server: float
    cache: float
    busy: float


@dataclass
class Sampler:
    """CPU samples every ``interval`` seconds from a thread while the block runs: the
    shares of any window inside it (:meth:`shares`)."""

    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def take(self) -> None:
        load, server, cache = live_cpu_seconds(os.getpid())
        self.samples.append(Sample(time.time(), load, server, cache, busy_cpu_seconds()))

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                self.take()

        self.take()
        thread = threading.Thread(target=loop, name="cpu-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.take()

    def window(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        """The first sample at or after ``start`` and the last at or before ``end``;
        None when no two samples lie in between."""
        times = [s.at for s in self.samples]
        first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end) - 1
        if first >= last:
            return None
        return self.samples[first], self.samples[last]

    def shares(self, start: float, end: float) -> Shares | None:
        """Shares of the window's CPU capacity (its wall seconds x cores)."""
        found = self.window(start, end)
        return None if found is None else shares_between(*found)


def shares_between(a: Sample, b: Sample) -> Shares:
    """Shares of the CPU capacity (wall seconds x cores) from sample ``a`` to ``b``."""
    capacity = (b.at - a.at) * CORES
    return Shares(load=(b.load - a.load) / capacity, server=(b.server - a.server) / capacity,
                  cache=(b.cache - a.cache) / capacity, busy=(b.busy - a.busy) / capacity)


TRACK_PLANNING = "pg_stat_statements.track_planning"


#: The value ALTER SYSTEM gave it, if any (psql's unaligned output: empty when none).
AUTO_VALUE = (f"SELECT setting FROM pg_settings WHERE name = '{TRACK_PLANNING}' "
              "AND sourcefile LIKE '%/postgresql.auto.conf'")


@contextmanager
def planning_tracked() -> Iterator[None]:
    """pg_stat_statements counts planning time for the duration (server-wide: every
    backend, PgBouncer's included, picks the reload up); then the former setting: the
    value an earlier ALTER SYSTEM gave, or the configuration files' own."""
    was = db.superuser_psql(AUTO_VALUE)
    # A run stopped with SIGTERM (kill, a CI timeout) must restore it too: as SystemExit,
    # the signal unwinds through the finally below.
    default = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    db.superuser_psql(f"ALTER SYSTEM SET {TRACK_PLANNING} = on; SELECT pg_reload_conf();")
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, default)
        restore = (f"ALTER SYSTEM SET {TRACK_PLANNING} = {'on' if was == 'on' else 'off'}"
                   if was else f"ALTER SYSTEM RESET {TRACK_PLANNING}")
        db.superuser_psql(f"{restore}; SELECT pg_reload_conf();")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)

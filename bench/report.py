"""What every benchmark prints around its figures: where and when it ran, and ranges.

A figure from one run on a shared 2-core machine says little, so each script repeats its
comparison in interleaved rounds (every side once per round, so a neighbour's load
hits all sides alike) and prints the min-max range over the rounds. ``header()`` opens
the output with the date and the machine, as kept in bench/results/.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path


def _mem_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def header(script: str, rounds: int) -> str:
    """One line: script, UTC date, host, cores, RAM, kernel, load average, rounds."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    return (f"# {script}: {now}; host {platform.node()}, {os.cpu_count()} cores, "
            f"{_mem_gib():.0f} GiB RAM, Linux {platform.release()}; load average "
            f"{load[0]:.2f}; {rounds} interleaved rounds")


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    """``min–max`` of ``values`` formatted with ``fmt`` (one value when they agree)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def ratios(ours: list[float], base: list[float]) -> list[float]:
    """Round-by-round ``ours / base``: each ratio from one round, both sides measured in it."""
    return [a / b for a, b in zip(ours, base, strict=True)]


def rotated(items: tuple, r: int) -> tuple:
    """``items`` starting at the ``r``-th (round 1 keeps the order): none always runs first."""
    k = (r - 1) % len(items)
    return items[k:] + items[:k]


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Busy(Exception):
    """A side could not start because the shared server turned it away (a role's
    connection limit reached by others' tests): it is timed again, not counted."""


#: How often a side turned away by the server is tried again, and the pause before.
BUSY_ATTEMPTS, BUSY_PAUSE = 10, 3.0


def not_busy(fn: Callable[[], object], attempts: int = BUSY_ATTEMPTS,
             pause: float = BUSY_PAUSE) -> float:
    """Seconds ``fn()`` took in the first attempt the server did not turn away."""
    for attempt in range(1, attempts + 1):
        try:
            return timed(fn)
        except Busy as exc:
            if attempt == attempts:
                raise
            print(f"  (turned away: {exc}; attempt {attempt + 1} in {pause:.0f} s, "
                  "the failed one not counted)", flush=True)
            time.sleep(pause)
    raise AssertionError("unreachable")


def interleaved(sides: dict[str, Callable[[], object]], rounds: int,
                each: Callable[[int, dict[str, float]], None] | None = None,
                after: Callable[[str], object] | None = None,
                ) -> dict[str, list[float]]:
    """Time each side once per round, in order, for ``rounds`` rounds.

    A side that raises :class:`Busy` is timed again (:func:`not_busy`). ``after(side)``
    runs, untimed, after each side (to clean up what it made); ``each(round, times)`` is
    called after every round (to print it as it comes). Returns the seconds per side,
    one per round.
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(1, rounds + 1):
        this = {}
        for name, fn in sides.items():
            this[name] = not_busy(fn)
            if after:
                after(name)
        for name, secs in this.items():
            times[name].append(secs)
        if each:
            each(r, this)
    return times


def save_raw(path: Path, head: str, rounds: int, data: dict) -> None:
    """Keep a run's raw figures (every round of every side) as JSON at ``path``, with
    ``head`` (the :func:`header` line the run printed at its start), for bench/results/
    beside the printed output."""
    document = {"header": head, "rounds": rounds,
                "finished_at": datetime.datetime.now(datetime.UTC).isoformat(
                    timespec="seconds"), **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

"""The sides bench/dal.py compares: a storage mode (file, dual, postgresql), with or
without the Redis cache, each opened as the application would (``create_data_access``)
and each working on its own share of the users and chats; and how they are compared
(ratios to the postgresql mode round by round, the cache's figures).

Sides share the scratch database and the legacy data directory, so each gets a
disjoint share of the rows: a file-mode write never touches a chat that dual-write
then copies (its positions would no longer match PostgreSQL's), and a side without the
cache never changes what a side with it has cached.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from report import ratios, span

from donnadb.config import Settings
from donnadb.dal import create_data_access

MODES = ("file", "dual", "postgresql")
CACHE_CHOICES = ("off", "on", "both")
#: The side the others' ratios are taken against, and the history verdict is given on.
BASELINE = "postgresql"
CACHED = "postgresql+cache"
REDIS_SERVER = "/usr/bin/redis-server"


@dataclass(frozen=True)
class Side:
    name: str
    mode: str
    cache: bool = False

    @property
    def files(self) -> bool:
        """Whether it reads or writes the legacy data directory."""
        return self.mode != "postgresql"


def parse_modes(text: str) -> tuple[str, ...]:
    """``file,dual,postgresql`` in that order, each once.

    :raises ValueError: an unknown mode, or none.
    """
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes takes {','.join(MODES)} (any of them), not {text!r}")
    return tuple(m for m in MODES if m in modes)


def sides(modes: tuple[str, ...], cache: str) -> list[Side]:
    """The sides to run: each mode; the cache goes on the postgresql mode (dual-write
    reads its files, the file mode has no cache): ``on`` replaces it, ``both`` adds it.

    :raises ValueError: the cache is asked for without the postgresql mode.
    """
    if cache != "off" and BASELINE not in modes:
        raise ValueError("--cache on/both measures the postgresql mode: add it to --modes")
    out = [Side(m, m) for m in modes if not (m == BASELINE and cache == "on")]
    if cache != "off":
        out.append(Side(CACHED, BASELINE, cache=True))
    return out


def share(items: list, n: int, k: int) -> list:
    """The ``k``-th of ``n`` disjoint shares of ``items`` (all of them when ``n`` is 1).

    :raises ValueError: too few items for every share to get one.
    """
    if len(items) < n:
        raise ValueError(f"{len(items)} rows cannot give {n} sides one each: more --messages")
    return items[k::n]


def store_settings(settings: Settings, side: Side, data_dir: Path, cache_url: str | None
                   ) -> Settings:
    update: dict = {"data_storage_type": side.mode, "migration_enable_dual_write": False,
                    "data_dir": data_dir, "migration_reconcile_queue": None,
                    "data_storage_users": None, "data_storage_memory": None,
                    "data_storage_chats": None, "data_storage_messages": None,
                    "data_storage_logs": None, "cache_enabled": side.cache}
    if side.cache:
        update.update(cache_url=cache_url, cache_username=None, cache_password_file=None,
                      cache_sslrootcert=None)
    return settings.model_copy(update=update)


def open_store(settings: Settings, side: Side, dbname: str, data_dir: Path,
               cache_url: str | None):
    """The store the application gets in ``side``'s mode."""
    return create_data_access(store_settings(settings, side, data_dir, cache_url),
                              dbname=dbname)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_redis(root: Path) -> Iterator[str]:
    """A redis-server (Debian's binary; its service is not used) on 127.0.0.1 and a free
    port, no persistence, killed at the end; yields its ``CACHE_URL``."""
    port = _free_port()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(root), "--logfile", str(root / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: see {root}/redis.log"
                                       ) from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def working_copy(root: Path, tmp: Path, given: bool) -> Path:
    """Where the file and dual sides write: ``root`` when this run generated it, a copy
    when it is the caller's ``--data-dir`` (kept as it was for the next run)."""
    if not given:
        return root
    copy = tmp / "data-copy"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def comparison(summary: dict, names: list[str], baseline: str | None) -> list[dict]:
    """Per operation and thread count, each side's p50/p95 over the rounds and, round by
    round, its ratio to the baseline side's."""
    out = []
    for op, threads in dict.fromkeys((op, t) for op, t, _ in summary):
        base = summary.get((op, threads, baseline))
        for name in names:
            v = summary[(op, threads, name)]
            row = {"operation": op, "threads": threads, "mode": name,
                   "p50_ms": v["p50_ms"], "p95_ms": v["p95_ms"]}
            if base is not None and name != baseline:
                row["p50_ratio"] = per_round(v["p50_ms"], base["p50_ms"])
                row["p95_ratio"] = per_round(v["p95_ms"], base["p95_ms"])
            out.append(row)
    return out


def per_round(ours: list[float], base: list[float]) -> list[float]:
    """report.ratios, with a baseline that rounded to 0 ms giving infinity."""
    if all(base):
        return ratios(ours, base)
    return [a / b if b else math.inf for a, b in zip(ours, base, strict=True)]


def _ratio_span(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return span(finite) if len(finite) == len(values) else "n/a"


def print_comparison(rows: list[dict], baseline: str | None, rounds: int) -> None:
    print(f"\nside by side, min-max over {rounds} rounds; ratio = the mode's figure / "
          f"{baseline or 'none'}'s in the same round:")
    for row in rows:
        line = (f"{row['threads']:>3} threads  {row['operation']:<30} {row['mode']:<17} "
                f"p50 {span(row['p50_ms']):>11}  p95 {span(row['p95_ms']):>11} ms")
        if "p95_ratio" in row:
            line += (f"  {row['mode']}/{baseline} p50 {_ratio_span(row['p50_ratio'])}"
                     f"  p95 {_ratio_span(row['p95_ratio'])}")
        print(line)


def print_mirror(mirror: dict) -> None:
    """Dual-write's copies to PostgreSQL as its health_check() reports them."""
    for name, entities in mirror.items():
        print(f"\n{name}: copies to PostgreSQL per entity (health_check()['mirror'], whole "
              "run):")
        for entity, m in entities.items():
            p95 = "-" if m["seconds_p95"] is None else f"{m['seconds_p95'] * 1000:.2f}"
            print(f"  {entity:<9} copies {m['copies']:>7,}  p95 {p95:>8} ms  "
                  f"failures {m['failures']:,}")


def cache_report(summary: dict, hit_ratios: dict[str, list[float]]) -> dict:
    """Each cached side's hit ratio per round and its history read p95 beside the
    postgresql side's (per thread count), with the round-by-round ratio."""
    out = {}
    for name, hit_ratio in hit_ratios.items():
        history = {}
        for (op, threads, mode), v in summary.items():
            if op != "get_chat_history" or mode != name:
                continue
            plain = summary.get((op, threads, BASELINE))
            history[threads] = {"with_cache_p95_ms": v["p95_ms"],
                                "without_cache_p95_ms": plain and plain["p95_ms"],
                                "ratio": plain and per_round(v["p95_ms"], plain["p95_ms"])}
        out[name] = {"hit_ratio": hit_ratio, "history_p95": history}
    return out


def print_cache(cache: dict) -> None:
    for name, c in cache.items():
        print(f"\n{name}: cache hit ratio {span(c['hit_ratio'])} (hits / cached reads, "
              "per round)")
        for threads, h in c["history_p95"].items():
            line = (f"{threads:>3} threads  get_chat_history p95 with the cache "
                    f"{span(h['with_cache_p95_ms'])} ms")
            if h["without_cache_p95_ms"]:
                line += (f", without {span(h['without_cache_p95_ms'])} ms, ratio "
                         f"{_ratio_span(h['ratio'])}")
            print(line)

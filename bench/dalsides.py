"""The sides bench/dal.py compares: a storage mode (file, dual, postgresql), with or
without the Redis cache or field encryption, each opened as the application would
(``create_data_access``) and each working on its own share of the users and chats; and
how they are compared (ratios to the postgresql mode round by round, the cache's
figures, encryption's cost on the memory and profile operations).

Sides share the scratch database and the legacy data directory, so each gets a
disjoint share of the rows: a file-mode write never touches a chat that dual-write
then copies (its positions would no longer match PostgreSQL's), a side without the
cache never changes what a side with it has cached, and the encrypted side's users are
the only ones sealed (a store with CRYPTO_ENABLED refuses personal values in clear, one
without it would hand out ciphertext).
"""

from __future__ import annotations

import math
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from report import ratios, span

from donnadb import db
from donnadb.config import Settings
from donnadb.crypto import keyfile
from donnadb.dal import create_data_access

MODES = ("file", "dual", "postgresql")
CACHE_CHOICES = ("off", "on", "both")
CRYPTO_CHOICES = ("off", "on", "both")
#: The side the others' ratios are taken against, and the history verdict is given on.
BASELINE = "postgresql"
CACHED = "postgresql+cache"
CRYPTED = "postgresql+crypto"
#: The goal for field encryption: its p95 at most this times the plain store's.
CRYPTO_P95_GOAL = 1.2
#: The operations that seal or open personal values (memory and profile), the ones the
#: goal is for (the others read or write no sealed field).
SEALED_OPERATIONS = ("get_user_memory", "set_user_memory", "delete_user_memory",
                     "get_user_by_id", "get_user_by_clerk_id", "create_user", "update_user")
REDIS_SERVER = "/usr/bin/redis-server"


@dataclass(frozen=True)
class Side:
    name: str
    mode: str
    cache: bool = False
    crypto: bool = False

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


def sides(modes: tuple[str, ...], cache: str, crypto: str = "off") -> list[Side]:
    """The sides to run: each mode; the cache and field encryption go on the postgresql
    mode (dual-write reads its files, the file mode has neither), each on a side of its
    own: ``on`` replaces the plain postgresql side, ``both`` adds to it.

    :raises ValueError: the cache or encryption is asked for without the postgresql mode.
    """
    for option, choice in (("--cache", cache), ("--crypto", crypto)):
        if choice != "off" and BASELINE not in modes:
            raise ValueError(f"{option} on/both measures the postgresql mode: add it to "
                             "--modes")
    plain = "on" not in (cache, crypto)
    out = [Side(m, m) for m in modes if m != BASELINE or plain]
    if cache != "off":
        out.append(Side(CACHED, BASELINE, cache=True))
    if crypto != "off":
        out.append(Side(CRYPTED, BASELINE, crypto=True))
    return out


def share(items: list, n: int, k: int) -> list:
    """The ``k``-th of ``n`` disjoint shares of ``items`` (all of them when ``n`` is 1).

    :raises ValueError: too few items for every share to get one.
    """
    if len(items) < n:
        raise ValueError(f"{len(items)} rows cannot give {n} sides one each: more --messages")
    return items[k::n]


def store_settings(settings: Settings, side: Side, data_dir: Path, cache_url: str | None,
                   kek_file: Path | None = None) -> Settings:
    update: dict = {"data_storage_type": side.mode, "migration_enable_dual_write": False,
                    "data_dir": data_dir, "migration_reconcile_queue": None,
                    "data_storage_users": None, "data_storage_memory": None,
                    "data_storage_chats": None, "data_storage_messages": None,
                    "data_storage_logs": None, "cache_enabled": side.cache,
                    "crypto_enabled": side.crypto,
                    "crypto_kek_file": kek_file if side.crypto else None}
    if side.cache:
        update.update(cache_url=cache_url, cache_username=None, cache_password_file=None,
                      cache_sslrootcert=None)
    return settings.model_copy(update=update)


def open_store(settings: Settings, side: Side, dbname: str, data_dir: Path,
               cache_url: str | None, kek_file: Path | None = None):
    """The store the application gets in ``side``'s mode."""
    return create_data_access(store_settings(settings, side, data_dir, cache_url, kek_file),
                              dbname=dbname)


def throwaway_key_file(root: Path) -> Path:
    """A new field-encryption key file (one KEK, one lookup key; mode 0600) in ``root``,
    the run's temporary directory: it goes with it."""
    path = root / "fields.key"
    keyfile.generate(path)
    return path


# Every user but the encrypted side's, locked while seal-existing runs: it takes its
# batches FOR UPDATE SKIP LOCKED (so that two runs share the work), so it passes them by.
LOCK_OTHERS = "SELECT id FROM users WHERE NOT (id::text = ANY(%s)) ORDER BY id FOR UPDATE"
# After it: the side's values left in clear, and data keys made for other users.
SEALED_CHECK = """
SELECT (SELECT count(*) FROM users
         WHERE id::text = ANY(%(ours)s) AND (email IS NOT NULL OR name IS NOT NULL))
     + (SELECT count(*) FROM user_memory
         WHERE user_id::text = ANY(%(ours)s) AND {plain}) AS in_clear,
       (SELECT count(*) FROM users
         WHERE wrapped_key IS NOT NULL AND NOT (id::text = ANY(%(ours)s))) AS others
"""


def seal_share(settings: Settings, dbname: str, user_ids: list[str],
               stall: float = 120.0) -> int:
    """Seal the imported rows of ``user_ids`` (the encrypted side's share) in place with
    the function of `donnactl keys seal-existing`, every other user left in clear; how
    many users it sealed. ``settings`` has CRYPTO_ENABLED and the key file.

    :raises RuntimeError: it made no progress for ``stall`` seconds, or the result is
        not the side's users sealed and the others untouched.
    """
    from donnadb.dal.sealed import PLAIN_VALUE, seal_plain_rows

    batches: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run() -> None:
        try:
            # No cache to tell: the stores, and their cache, open after this.
            outcome["users"] = seal_plain_rows(settings, dbname=dbname, sealed=batches.put)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc
        batches.put(None)

    with db.connection("app", settings=settings, dbname=dbname) as hold:
        hold.execute(LOCK_OTHERS, (user_ids,))
        threading.Thread(target=run, name="seal-existing", daemon=True).start()
        try:
            while batches.get(timeout=stall) is not None:
                pass
        except queue.Empty:
            raise RuntimeError(f"seal-existing made no progress in {stall:.0f} s (waiting "
                               "on the other sides' locked users?)") from None
        hold.rollback()
    if "error" in outcome:
        raise outcome["error"]
    with db.connection("app", settings=settings, dbname=dbname) as conn:
        in_clear, others = conn.execute(SEALED_CHECK.format(plain=PLAIN_VALUE.format(
            v="value")), {"ours": user_ids}).fetchone()
    if in_clear or others:
        raise RuntimeError(f"seal-existing left {in_clear} of the encrypted side's values "
                           f"in clear and made {others} data keys for other users")
    return outcome["users"]


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


def crypto_report(summary: dict, names: list[str]) -> dict | None:
    """The memory and profile operations with and without field encryption, per thread
    count: each side's p50/p95 over the rounds, their ratio round by round, and the goal
    (p95 ratio at most CRYPTO_P95_GOAL in every round); None without both sides."""
    if CRYPTED not in names or BASELINE not in names:
        return None
    rows, failed = [], []
    for (op, threads, mode), sealed in summary.items():
        if mode != CRYPTED or op not in SEALED_OPERATIONS:
            continue
        plain = summary[(op, threads, BASELINE)]
        p95_ratio = per_round(sealed["p95_ms"], plain["p95_ms"])
        rows.append({"operation": op, "threads": threads,
                     "plain_p50_ms": plain["p50_ms"], "plain_p95_ms": plain["p95_ms"],
                     "sealed_p50_ms": sealed["p50_ms"], "sealed_p95_ms": sealed["p95_ms"],
                     "p50_ratio": per_round(sealed["p50_ms"], plain["p50_ms"]),
                     "p95_ratio": p95_ratio})
        failed += [{"operation": op, "threads": threads, "round": r, "p95_ratio": x}
                   for r, x in enumerate(p95_ratio, 1) if not x <= CRYPTO_P95_GOAL]
    worst = max(rows, key=lambda row: max(row["p95_ratio"]), default=None)
    return {"goal_p95_ratio": CRYPTO_P95_GOAL, "operations": rows, "failed": failed,
            "worst": worst and {"operation": worst["operation"],
                                "threads": worst["threads"],
                                "p95_ratio": max(worst["p95_ratio"])},
            "pass": bool(rows) and not failed}


def print_crypto(report: dict, rounds: int) -> None:
    print(f"\nfield encryption: {CRYPTED} against {BASELINE}, memory and profile "
          f"operations, min-max over {rounds} rounds; ratio = {CRYPTED}'s figure / "
          f"{BASELINE}'s in the same round:")
    for row in report["operations"]:
        print(f"{row['threads']:>3} threads  {row['operation']:<22} plain p50 "
              f"{span(row['plain_p50_ms']):>11}  p95 {span(row['plain_p95_ms']):>11} ms  "
              f"sealed p50 {span(row['sealed_p50_ms']):>11}  p95 "
              f"{span(row['sealed_p95_ms']):>11} ms  ratio p50 "
              f"{_ratio_span(row['p50_ratio'])}  p95 {_ratio_span(row['p95_ratio'])}")
    goal = f"{CRYPTO_P95_GOAL:g}"
    if report["pass"]:
        worst = report["worst"]
        print(f"PASS: field encryption p95 ratio <= {goal} on every memory and profile "
              f"operation, thread count and round (worst {worst['p95_ratio']:.2f}: "
              f"{worst['operation']}, {worst['threads']} threads)")
    else:
        print(f"FAIL: field encryption p95 ratio above {goal}: " + (", ".join(
            f"{f['operation']} {f['threads']} threads round {f['round']} "
            f"{f['p95_ratio']:.2f}" for f in report["failed"]) or "no operation measured"))

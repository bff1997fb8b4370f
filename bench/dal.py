"""Latency of every DAL operation (PostgresDataAccess) at 1, 10 and 50 threads.

    .venv/bin/python bench/dal.py                 # 200,000 messages (about 4,000 chats)
    .venv/bin/python bench/dal.py --full          # 1,000,000 messages
    .venv/bin/python bench/dal.py --modes file,dual,postgresql --cache both
    .venv/bin/python bench/dal.py --crypto both   # with and without field encryption

1. generates a legacy data directory (donnadb.legacy.fixtures, no deviations) and loads
   it with the importer into a fresh migrated scratch database, then ANALYZE;
2. opens the store the application would get: ``create_data_access()`` with
   ``DATA_STORAGE_TYPE=postgresql`` (its psycopg_pool holds DB_MAX_CONNECTIONS
   connections, so at 50 threads callers also wait for a connection — as they would);
3. for each thread count, warms the pool up, then calls each operation ``--calls``
   times spread over the threads (random existing users/chats; writes go to the scratch
   database) and prints p50, p95 and p99 in milliseconds and the calls/s achieved, then
   PASS/FAIL for the rule: the history read (``get_chat_history``, latest 20)
   stays under 5 ms p95 at every thread count. Each thread starts a call every
   ``--interval-ms`` (50: application threads that do other work between calls; 50
   threads then offer 1,000 calls/s), latency counted from the scheduled start so that
   falling behind is measured; ``--closed-loop`` drops the pause, every thread calls
   back-to-back, and the figures become the saturation point's queueing (Little's law:
   threads / throughput), the throughput table of one Python process;
4. repeats step 3 ``--rounds`` times (default 3), every thread count and operation
   once per round, and prints the min-max of each figure over the rounds; the verdict
   takes each thread count's worst round;
5. drops the scratch database. ``--json`` prints the table as one document.

``--modes file,dual,postgresql`` (any of them; default postgresql alone, as above) runs
the same operations against each storage mode side by side: the file store over a
working copy of the generated data directory, dual-write over that copy and the scratch
database, PostgreSQL over the database. Each mode works on its own share of the users
and chats (bench/dalsides.py), runs every operation once per round right after the
others, in an order rotated each round, and the output adds each operation's p50/p95
per mode with its ratio to the postgresql mode's in the same round (dual/postgresql,
file/postgresql) as a range over the rounds, and dual-write's copies per entity as its
``health_check()`` reports them. ``--cache on`` puts the Redis read-through cache on
the postgresql mode (a throwaway redis-server on 127.0.0.1), ``--cache both`` runs it
with and without: the hit ratio per round and the history read's p95 with and without
the cache are added.

``--crypto on`` turns field encryption on for the postgresql mode (``CRYPTO_ENABLED``,
with a throwaway key file made 0600 in the run's temporary directory), ``--crypto
both`` runs it beside the plain one as a ``postgresql+crypto`` side. The importer
writes in clear, so that side's share of the users is sealed in place first with the
function of ``donnactl keys seal-existing`` (the other sides' users left in clear).
Before the first round every side reads each of its users once, as an application
process that has served them would have (a sealed store then holds their data keys: a
process's first read of a user joins or reads its key and unwraps it, once; the time of
that pass is printed per side). The output adds, for the memory and profile
operations, each side's p50/p95 and the ratio sealed/plain per round, then PASS/FAIL
for the goal: a p95 ratio of at most 1.2 for every one of them at every thread count
in every round. The exit status is 1 when
either verdict fails.

``--interleave calls`` runs the sides of each operation at once instead of one after
the other: the threads' calls alternate between the sides (call ``i`` to side ``i mod
sides``), each side still gets ``--calls`` calls, and the offered rate is the same per
thread (so each side gets its share of it). Every side then meets the same moments of
the machine; run one after the other, a burst of noise lands on one side's block
only. The two designs answer different questions under load: ``blocks`` measures each
side as the only load on the machine (the sealed side's extra CPU queues its own
calls), ``calls`` measures the two sides' calls under the same mixed load.

``--read-from replicas`` reads from a streaming hot standby (``DB_READ_FROM=replicas``,
``DB_READ_PORT`` its port): after loading the data it makes a throwaway standby of the
deployed cluster (bench/scratch.py: pg_basebackup of the whole cluster) on
``--standby-port``. Both pools then connect directly (no PgBouncer); ``--direct`` runs
the one-pool baseline the same way, for a like-for-like ratio.

Run as root on the deployed host (the scratch database is created through the postgres
superuser: bench/scratch.py). Latencies on a shared 2-core machine depend on its load:
the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dalsides import (
    BASELINE,
    CACHE_CHOICES,
    CACHED,
    CRYPTED,
    CRYPTO_CHOICES,
    Side,
    cache_report,
    comparison,
    crypto_report,
    open_store,
    parse_modes,
    print_cache,
    print_comparison,
    print_crypto,
    print_mirror,
    seal_share,
    share,
    sides,
    store_settings,
    throwaway_key_file,
    throwaway_redis,
    working_copy,
)
from report import header, rotated, span
from scratch import create_scratch_database, drop_database, hot_standby

from donnadb import db
from donnadb.config import load_settings
from donnadb.dal import create_data_access
from donnadb.legacy.fixtures import WORDS, generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from donnadb.migrate import apply_migrations

HISTORY_P95_LIMIT_MS = 5.0
#: Search terms: the fixtures' vocabulary minus the words english full-text search drops.
SEARCH_WORDS = [w for w in WORDS if len(w) > 3]
#: Pause between one thread's calls: 50 ms, i.e. 20 calls/s per thread, 1,000 calls/s at 50
#: threads: twice the history reads of 2,000 concurrent chat users in the load test (its
#: 2,000-user step makes ~1,160 requests/s, 40% of them history reads).
DEFAULT_INTERVAL_MS = 50.0
THREADS = (1, 10, 50)
SAMPLE_USERS = "SELECT id::text, clerk_id FROM users WHERE clerk_id IS NOT NULL"
SAMPLE_CHATS = "SELECT chat_id FROM chat_sessions WHERE message_count > 0"
ANALYZE = "ANALYZE users, chat_sessions, messages, user_memory"
#: The side's column in the rows: the longest name (postgresql+crypto) and a space.
SIDE_WIDTH = len(CRYPTED) + 1


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Workload:
    """The calls, each taking a call number (unique per run) and drawing random rows."""

    def __init__(self, dal, users: list[tuple[str, str]], chats: list[str], run: str) -> None:
        self.dal, self.users, self.chats, self.run = dal, users, chats, run
        self._local = threading.local()

    def _rng(self) -> random.Random:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            # Which rows a call picks, not a secret.
            rng = self._local.rng = random.Random(threading.get_ident())  # noqa: S311
        return rng

    def _user(self) -> str:
        return self._rng().choice(self.users)[0]

    def _chat(self) -> str:
        return self._rng().choice(self.chats)

    def operations(self) -> dict[str, Callable[[int], object]]:
        d, run = self.dal, self.run
        return {
            "get_chat_history": lambda i: d.get_chat_history(self._chat(), limit=20),
            "get_chat_history (offset 100)": lambda i: d.get_chat_history(
                self._chat(), limit=20, offset=100),
            "get_message_count": lambda i: d.get_message_count(self._chat()),
            "get_chat_session": lambda i: d.get_chat_session(self._chat()),
            "get_user_by_id": lambda i: d.get_user_by_id(self._user()),
            "get_user_by_clerk_id": lambda i: d.get_user_by_clerk_id(
                self._rng().choice(self.users)[1]),
            "get_user_memory": lambda i: d.get_user_memory(self._user(), "context"),
            "add_message": lambda i: d.add_message(self._chat(), "user", f"bench {run} {i}",
                                                   {"bench": True}, token_count=12),
            "update_chat_session": lambda i: d.update_chat_session(
                self._chat(), {"title": f"bench {run} {i}"}),
            "update_user": lambda i: d.update_user(self._user(), {"name": f"bench {i}"}),
            "set_user_memory": lambda i: d.set_user_memory(
                self.users[i % len(self.users)][0], "context", f"bench_{run}_{i}", {"n": i}),
            "delete_user_memory": lambda i: d.delete_user_memory(
                self.users[i % len(self.users)][0], "context", f"bench_{run}_{i}"),
            "create_user": lambda i: d.create_user({"clerk_id": f"user_bench_{run}_{i}",
                                                    "email": f"b{run}{i}@example.com"}),
            "create_chat_session": lambda i: d.create_chat_session(
                f"c_bench_{run}_{i}", self._user(), {"bench": True}, title="bench"),
            "list_chat_sessions": lambda i: d.list_chat_sessions(self._user(), 20),
            "search_messages (5 recent chats)": lambda i: d.search_messages(
                self._user(), " ".join(self._rng().sample(SEARCH_WORDS, 2)), recent_chats=5),
            "write_log": lambda i: d.write_log("info", f"bench {run} {i}", {"i": i},
                                               trace_id=f"t{i}", ip_address="127.0.0.1"),
        }


def measure(fn: Callable[[int], object], calls: int, threads: int,
            interval_ms: float = 0.0) -> list[float]:
    """Latency (ms) of ``calls`` calls of ``fn(i)`` run by ``threads`` threads at once.

    ``interval_ms`` > 0: each thread starts a call every ``interval_ms`` (threads
    staggered over the first interval), like application threads that do other work
    between database calls. A call's latency counts from its scheduled start, so a
    store that falls behind shows it (no coordinated omission). 0: closed loop, each
    thread calls again as soon as its call returns (saturation: latency is queueing).
    """
    return measure_paired([fn], calls, threads, interval_ms)[0]


def measure_paired(fns: list[Callable[[int], object]], calls: int, threads: int,
                   interval_ms: float = 0.0) -> list[list[float]]:
    """:func:`measure` of several sides' ``fns`` at once, call by call: call number
    ``i`` goes to side ``i % len(fns)`` (one thread alternates the sides; several
    threads call each side about as often), and each side's latencies come back
    apart. Every side meets the same moment of the machine, where run one after the
    other each would meet its own."""
    n = len(fns)
    counter = itertools.count()
    lock = threading.Lock()
    per_thread = [calls // threads + (1 if t < calls % threads else 0) for t in range(threads)]
    start = threading.Barrier(threads)
    step = interval_ms * 1e6

    def worker(t: int) -> list[tuple[int, float]]:
        out = []
        start.wait()
        due = time.perf_counter_ns() + step * t / threads
        for _ in range(per_thread[t]):
            if step:
                pause = due - time.perf_counter_ns()
                if pause > 0:
                    time.sleep(pause / 1e9)
            with lock:
                i = next(counter)
            begin = due if step else time.perf_counter_ns()
            fns[i % n](i // n)
            out.append((i % n, (time.perf_counter_ns() - begin) / 1e6))
            due += step
        return out

    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = [x for part in pool.map(worker, range(threads)) for x in part]
    return [[lat for side, lat in done if side == k] for k in range(n)]


def load_dataset(settings, dbname: str, messages: int, root: Path) -> dict:
    """Generate the legacy data directory at ``root`` (unless it exists) and import it."""
    chats = max(1, messages // 50)
    if not root.exists():
        generate(root, users=max(100, chats // 4), chats=chats, messages_per_chat=50,
                 logs=0, deviations=False)
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        t = time.perf_counter()
        summary = import_data_dir(LegacyReader.open(root), conn,
                                  batch_size=settings.migration_batch_size)
        took = time.perf_counter() - t
        conn.execute("SET ROLE " + settings.db_role_owner)
        conn.execute(ANALYZE)
    return {**summary.read, "import_seconds": round(took, 1)}


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--full", action="store_true", help="1,000,000 messages")
    ap.add_argument("--calls", type=int, default=500,
                    help="calls per operation and thread count (default 500)")
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="generate here (reused when it already exists; the file and dual "
                         "modes write to a copy)")
    ap.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL_MS,
                    help="each thread starts a call every N ms (default %(default)s: 50 "
                         "threads offer 1,000 calls/s); latency counts from the scheduled "
                         "start")
    ap.add_argument("--closed-loop", action="store_true",
                    help="no pause between calls: every thread saturates the store "
                         "(throughput; latency is then mostly queueing)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="repeat every thread count and operation this many times, "
                         "interleaved; ranges are min-max over the rounds")
    ap.add_argument("--interleave", choices=("blocks", "calls"), default="blocks",
                    help="with several sides: blocks runs each operation's calls on one "
                         "side, then on the next; calls alternates the sides call by call, "
                         "in the same threads (each side still makes --calls calls)")
    ap.add_argument("--modes", default=BASELINE,
                    help="storage modes side by side, any of file,dual,postgresql "
                         "(default postgresql); every mode runs each operation once per "
                         "round, in an order rotated each round")
    ap.add_argument("--cache", choices=CACHE_CHOICES, default="off",
                    help="the Redis read-through cache on the postgresql mode (a "
                         "throwaway redis-server): on, or both with and without")
    ap.add_argument("--crypto", choices=CRYPTO_CHOICES, default="off",
                    help="field encryption on the postgresql mode (a throwaway key file; "
                         "its users sealed with seal-existing): on, or both with and "
                         "without")
    ap.add_argument("--read-from", choices=("primary", "replicas"), default="primary",
                    help="replicas: reads from a throwaway hot standby (DB_READ_FROM)")
    ap.add_argument("--standby-port", type=int, default=5491)
    ap.add_argument("--direct", action="store_true",
                    help="connect to PostgreSQL directly, not through PgBouncer (implied "
                         "by --read-from replicas)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        args.sides = sides(parse_modes(args.modes), args.cache, args.crypto)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def side_rows(side: Side, k: int, n: int, users: list[tuple[str, str]], chats: list[str],
              data_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """``side``'s share of the users and chats; a user's id is its Clerk id where the
    files serve it, and only users with a memory file count there."""
    mine = share(users, n, k)
    if side.files:
        mine = [(clerk, clerk) for _, clerk in mine
                if (data_dir / "memory" / f"{clerk}.json").exists()]
    return mine, share(chats, n, k)


def cache_counts(dal) -> tuple[int, int]:
    """Hits and misses of the store's cache so far (0, 0 without one)."""
    cache = dal.health_check().get("cache") or {}
    return cache.get("hits", 0), cache.get("misses", 0)


def first_reads(name: str, dal, users: list, *, quiet: bool) -> None:
    """Read each user of the side once (one thread), printing that pass's p50/p95."""
    lat = []
    for user_id, _ in users:
        began = time.perf_counter()
        dal.get_user_by_id(user_id)
        lat.append((time.perf_counter() - began) * 1000)
    if not quiet and lat:
        print(f"{name}: first read of each of {len(lat)} users p50 "
              f"{statistics.median(lat):.2f} p95 {percentile(lat, 95):.2f} ms", flush=True)


def run_rounds(args, stores: dict, shares: dict, interval: float) -> tuple[list, dict]:
    """Every round, thread count, operation and side; the rows, and each cached side's
    hit ratio per round."""
    results: list[dict] = []
    hit_ratios: dict[str, list[float]] = {s.name: [] for s in args.sides if s.cache}
    # Rows name their mode unless only today's default ran.
    several = list(stores) != [BASELINE]
    for name, dal in stores.items():
        first_reads(name, dal, shares[name][0], quiet=args.json)
    for r in range(1, args.rounds + 1):
        counts = {name: cache_counts(stores[name]) for name in hit_ratios}
        for threads in args.threads:
            works = {}
            for name, dal in stores.items():
                users, chats = shares[name]
                run = f"r{r}t{threads}" + (f"-{name}" if several else "")
                works[name] = Workload(dal, users, chats, run=run).operations()
                # Warm up: the pool opens connections only as callers start to wait
                # for one, which would land on the first operation measured.
                for op in ("get_chat_history", "get_user_by_id"):
                    measure(works[name][op], max(200, threads * 20), threads)
            for op in works[next(iter(works))]:
                for name, lat, rate in timed_sides(works, op, rotated(tuple(stores), r),
                                                   args, threads, interval):
                    row = {"round": r, "operation": op, "threads": threads,
                           "calls": len(lat), "calls_per_s": round(rate),
                           "p50_ms": round(statistics.median(lat), 2),
                           "p95_ms": round(percentile(lat, 95), 2),
                           "p99_ms": round(percentile(lat, 99), 2)}
                    if several:
                        row["mode"] = name
                    results.append(row)
                    if not args.json:
                        side = f"{name:<{SIDE_WIDTH}}" if several else ""
                        print(f"round {r} {threads:>3} threads  {side}{op:<30} p50 "
                              f"{row['p50_ms']:7.2f}  p95 {row['p95_ms']:7.2f}  p99 "
                              f"{row['p99_ms']:7.2f} ms  {rate:7,.0f} calls/s", flush=True)
        for name, (hits, misses) in counts.items():
            now_hits, now_misses = cache_counts(stores[name])
            reads = now_hits - hits + now_misses - misses
            hit_ratios[name].append((now_hits - hits) / reads if reads else 0.0)
    return results, hit_ratios


def timed_sides(works: dict, op: str, order: tuple[str, ...], args, threads: int,
                interval: float):
    """(side, latencies, calls/s) of ``op`` on every side: one side after the other in
    ``order``, or with ``--interleave calls`` all at once, call by call."""
    if args.interleave == "calls":
        began = time.perf_counter()
        lats = measure_paired([works[name][op] for name in order], args.calls * len(order),
                              threads, interval)
        took = time.perf_counter() - began
        return [(name, lat, len(lat) / took) for name, lat in zip(order, lats, strict=True)]
    out = []
    for name in order:
        began = time.perf_counter()
        lat = measure(works[name][op], args.calls, threads, interval)
        out.append((name, lat, len(lat) / (time.perf_counter() - began)))
    return out


def main() -> None:
    args = arguments()
    interval = 0.0 if args.closed_loop else args.interval_ms
    messages = 1_000_000 if args.full else args.messages
    os.environ["DATA_STORAGE_TYPE"] = "postgresql"
    os.environ["MIGRATION_ENABLE_DUAL_WRITE"] = "false"
    settings = load_settings()
    load_before = os.getloadavg()
    if not args.json:
        print(header("bench/dal.py", args.rounds), flush=True)
    dbname = create_scratch_database(settings, prefix="donna_bench")
    mirror: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            apply_migrations(settings=settings, dbname=dbname)
            root = args.data_dir or Path(tmp) / "data"
            dataset = load_dataset(settings, dbname, messages, root)
            if not args.json:
                print(f"dataset: {dataset}", flush=True)
            with db.connect("migrator", settings=settings, dbname=dbname) as conn:
                users = [tuple(r) for r in conn.execute(SAMPLE_USERS)]
                chats = [r[0] for r in conn.execute(SAMPLE_CHATS)]
            if args.direct or args.read_from == "replicas":
                settings = settings.model_copy(update={"pgbouncer_port": None})
            if args.read_from == "replicas":
                port = stack.enter_context(hot_standby(settings, args.standby_port))
                settings = settings.model_copy(update={"db_read_from": "replicas",
                                                       "db_read_port": port})
            files_dir = root
            if any(s.files for s in args.sides):
                files_dir = working_copy(root, Path(tmp), given=args.data_dir is not None)
            cache_url = (stack.enter_context(throwaway_redis(Path(tmp) / "redis"))
                         if args.cache != "off" else None)
            kek_file = (throwaway_key_file(Path(tmp)) if args.crypto != "off" else None)
            shares = {side.name: side_rows(side, k, len(args.sides), users, chats, files_dir)
                      for k, side in enumerate(args.sides)}
            for side in args.sides:
                if side.crypto:
                    # The encrypted side reads the same imported rows as the plain one
                    # (same generator, an interleaved share of the same users: same
                    # sizes, same age on disk), sealed by the path an operator takes
                    # after turning CRYPTO_ENABLED on over imported data. Users it made
                    # itself would be new rows of another shape, and would measure that
                    # too. Its own writes (create_user, update_user, set_user_memory)
                    # seal as the application's would.
                    sealed = seal_share(
                        store_settings(settings, side, files_dir, None, kek_file), dbname,
                        [user_id for user_id, _ in shares[side.name][0]])
                    if not args.json:
                        print(f"{side.name}: sealed the imported rows of {sealed} users "
                              "(keys seal-existing)", flush=True)
            stores = {}
            for side in args.sides:
                if len(args.sides) == 1 and side.name == BASELINE:
                    # Today's default: the store the environment configures.
                    dal = create_data_access(settings, dbname=dbname)
                else:
                    dal = open_store(settings, side, dbname, files_dir, cache_url, kek_file)
                stores[side.name] = stack.enter_context(contextlib.closing(dal))
            results, hit_ratios = run_rounds(args, stores, shares, interval)
            for name, dal in stores.items():
                if "mirror" in (health := dal.health_check()):
                    mirror[name] = health["mirror"]
    finally:
        drop_database(dbname)
    load_after = os.getloadavg()
    summary = summarise(results)
    names = [s.name for s in args.sides]
    baseline = next((n for n in (BASELINE, CACHED, CRYPTED) if n in names), None)
    history = {t: v for (op, t, mode), v in summary.items()
               if op == "get_chat_history" and mode in (baseline, None)}
    # The verdict takes each thread count's worst round.
    ok = all(max(v["p95_ms"]) < HISTORY_P95_LIMIT_MS for v in history.values())
    mode = "closed loop" if not interval else f"one call per thread every {interval:g} ms"
    if args.interleave == "calls" and len(args.sides) > 1:
        mode += ", the sides' calls interleaved"
    if args.read_from == "replicas":
        mode += ", reads from a hot standby"
    verdict = {"history_p95_ms": {t: [min(v["p95_ms"]), max(v["p95_ms"])]
                                  for t, v in history.items()},
               "limit_ms": HISTORY_P95_LIMIT_MS, "mode": mode, "pass": ok}
    compared = comparison(summary, names, baseline) if len(names) > 1 else None
    cache = cache_report(summary, hit_ratios)
    crypto = crypto_report(summary, names)
    status = 0 if ok and (crypto is None or crypto["pass"]) else 1
    if args.json:
        doc = {"dataset": dataset, "pool_size": settings.db_max_connections,
               "rounds": args.rounds, "load_average": [load_before[0], load_after[0]],
               "results": results, "history_read": verdict}
        if len(names) > 1:
            doc.update(modes=names, side_by_side=compared, dual_write_mirror=mirror)
        if cache:
            doc["cache"] = cache
        if crypto:
            doc["crypto"] = crypto
        print(json.dumps(doc, indent=2))
        sys.exit(status)
    print(f"\nmin-max over {args.rounds} rounds ({mode}):")
    for (op, threads, side), v in summary.items():
        label = f"{side:<{SIDE_WIDTH}}" if side else ""
        print(f"{threads:>3} threads  {label}{op:<30} p50 {span(v['p50_ms']):>11}  "
              f"p95 {span(v['p95_ms']):>11}  p99 {span(v['p99_ms']):>11} ms  "
              f"{span(v['calls_per_s'], '{:,.0f}'):>13} calls/s")
    if compared:
        print_comparison(compared, baseline, args.rounds)
    if mirror:
        print_mirror(mirror)
    if cache:
        print_cache(cache)
    if crypto:
        print_crypto(crypto, args.rounds)
    elif args.crypto == "on":
        print(f"\nno field-encryption verdict: --crypto both measures {CRYPTED} against "
              f"{BASELINE}")
    print(f"pool size {settings.db_max_connections}; load average {load_before[0]:.2f} "
          f"before, {load_after[0]:.2f} after (1 min)")
    if baseline is None:
        print("no verdict: the history read's limit is for the postgresql mode")
        sys.exit(status)
    on = "" if names == [BASELINE] else f" ({baseline})"
    print(f"{'PASS' if ok else 'FAIL'}: get_chat_history (latest 20){on} p95 "
          + ", ".join(f"{t} threads {span(v['p95_ms'])} ms"
                      for t, v in history.items())
          + f" (limit {HISTORY_P95_LIMIT_MS:.0f} ms, worst round; {mode})")
    sys.exit(status)


def summarise(results: list[dict]) -> dict[tuple[str, int, str | None], dict[str, list[float]]]:
    """Per (operation, threads, mode): each figure's values over the rounds (mode None
    when one mode ran)."""
    out: dict[tuple[str, int, str | None], dict[str, list[float]]] = {}
    for row in results:
        key = (row["operation"], row["threads"], row.get("mode"))
        entry = out.setdefault(key, {"p50_ms": [], "p95_ms": [], "p99_ms": [],
                                     "calls_per_s": []})
        for name, values in entry.items():
            values.append(row[name])
    return out


if __name__ == "__main__":
    main()

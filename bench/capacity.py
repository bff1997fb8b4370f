"""Capacity steps: how many concurrent chat users fit under the SLO on this host?

    .venv/bin/python bench/capacity.py [--steps 100,250,500,1000,2000] [--seconds 60]
        [--processes 2] [--p95-ms 20] [--pgbouncer-port 6432] [--dbname donna] [--rounds 3]

Runs the load test (`donnadb/loadtest/locustfile.py`, same think times as `donnactl loadtest
run`) once per step, each with its own ramp-up excluded, and prints per step the
throughput, p95/p99, failures, PgBouncer's pool efficiency, and the throughput ratio to
the first step relative to the user ratio (1.00 = throughput grew in proportion to the
users: the server kept up). Every step runs once per round for ``--rounds`` interleaved
rounds (default 3) and the table gives min-max ranges; the highest step whose p95
stays under ``--p95-ms`` with no failure in every round is marked. The goal: 1,000+
users at p95 < 20 ms on 2 cores with Locust, PgBouncer and PostgreSQL all on the host.
Results go to --out/round-R/step-N/.

Each step also reports who used the 2 cores (bench/cpushare.py): Locust's share, the
server's (PostgreSQL and PgBouncer) and the machine's busy share, of the step's wall
time on all cores; and, for the statements with the most server time, the mean planning
and execution milliseconds per call (pg_stat_statements with track_planning on for the
run: through PgBouncer in transaction mode every statement is planned on each call).

``--cache both`` runs every step twice per round, without and with the DAL's Redis
cache (a throwaway redis-server on 127.0.0.1 for the whole run; the Locust processes
get CACHE_ENABLED and CACHE_URL), in an order rotated each round, and reports for each
side the server's CPU milliseconds per request, Redis's CPU share, and Redis's keyspace
hit ratio (version and value lookups together). ``--user-class ReaderUser`` runs the
read-heavy mix (donnadb/loadtest/locustfile.py).

The CPU figures are those of the steady window: from ``--warmup`` seconds after every
user runs (default 0; Locust's per-second history tells when) to the last second before
they stop, sampled every half second. The server's CPU per request is its CPU in the
window over the requests that ended in it (the locustfile's request log). Each step
runs ``--warmup`` seconds longer; its latencies and req/s stay Locust's own, from the end
of the ramp-up. A warm-up lets a cache (the DAL's, PostgreSQL's) fill before the CPU is
counted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis
from cpushare import Sampler, Shares, planning_tracked, shares_between
from dalsides import throwaway_redis
from report import header, rotated, span

from donnadb.config import load_settings
from donnadb.loadtest import runner
from donnadb.loadtest.slo import AGGREGATED

#: Statements printed per step: those with the most planning + execution time.
STATEMENTS = 5
#: Seconds after all users run before the window opens (Locust resets its statistics
#: then: the latencies reported start there too).
RESET_MARGIN = 2


@dataclass
class Step:
    """One step of one round."""

    rps: float
    p95: float | None
    p99: float | None
    failures: int
    efficiency: float | None
    slowest: str
    passed: bool
    shares: Shares
    statements: list[dict]
    #: Redis keyspace hits / lookups during the step (None without the cache).
    hit_ratio: float | None = None
    #: The server's CPU milliseconds per request in the steady window (None: no window).
    server_ms: float | None = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,250,500,1000,2000")
    parser.add_argument("--seconds", type=int, default=60, help="steady time per step")
    parser.add_argument("--warmup", type=int, default=0,
                        help="seconds each step runs at full load before its CPU is counted")
    parser.add_argument("--processes", type=int, default=2, help="Locust processes")
    parser.add_argument("--pool-size", type=int, default=100,
                        help="client connections per Locust process")
    parser.add_argument("--p95-ms", type=float, default=20.0)
    parser.add_argument("--pgbouncer-port", type=int, default=6432, help="0: direct")
    parser.add_argument("--dbname", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/capacity"))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every step once per round")
    parser.add_argument("--cache", choices=("off", "on", "both"), default="off",
                        help="the DAL's Redis cache in the Locust processes (both: each "
                             "step without and with it, interleaved)")
    parser.add_argument("--user-class", default="ChatUser",
                        help="the Locust mix: ChatUser, or ReaderUser (read-heavy)")
    args = parser.parse_args()
    settings = load_settings()
    steps = [int(s) for s in args.steps.split(",")]
    sides = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.cache]
    print(header("bench/capacity.py", args.rounds), flush=True)
    runs: dict[tuple[int, str], list[Step]] = {(u, side): [] for u in steps for side in sides}
    with contextlib.ExitStack() as stack:
        stack.enter_context(planning_tracked())
        cache = None
        if "on" in sides:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cache = stack.enter_context(throwaway_redis(tmp / "redis"))
        for r in range(1, args.rounds + 1):
            for users in steps:
                for side in rotated(sides, r - 1):
                    step = _step(args, settings, users, r, cache if side == "on" else None)
                    runs[(users, side)].append(step)
                    _print_step(r, users, side, step)
    _print_table(args, steps, sides, runs)
    passed = {key: all(step.passed for step in rows) for key, rows in runs.items()}
    return 0 if any(passed.values()) else 1


def _print_table(args, steps: list[int], sides: list[str],
                 runs: dict[tuple[int, str], list[Step]]) -> None:
    base_users = steps[0]
    print(f"\ncapacity (p95 < {args.p95_ms:g} ms, no failures), {args.user_class} mix, "
          f"{args.processes} Locust process(es), {args.seconds} s steady per step after "
          f"{args.warmup} s of warm-up; min-max over {args.rounds} rounds, scaling per "
          "round; CPU shares of the steady window's wall time on all cores; server CPU per "
          "request = its CPU in the window / the requests in it")
    print("| users | cache | req/s | p95 ms | p99 ms | failures | pool eff. | slowest query "
          "p95 ms | scaling vs first | Locust CPU | server CPU | server CPU ms/req "
          "| Redis CPU | Redis hit ratio | machine busy | SLO |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for side in sides:
        # A step passes only when it passed in every round.
        passed = {u: all(step.passed for step in runs[(u, side)]) for u in steps}
        best = max((u for u in steps if passed[u]), default=None)
        for users in steps:
            rows = runs[(users, side)]
            base = runs[(base_users, side)]
            scaling = [(row.rps / b.rps) / (users / base_users) if b.rps else 0.0
                       for row, b in zip(rows, base, strict=True)]
            effs = [row.efficiency for row in rows if row.efficiency is not None]
            hits = [row.hit_ratio for row in rows if row.hit_ratio is not None]
            mark = "pass" + (" (highest)" if users == best else "") if passed[users] else \
                "FAIL"
            print(f"| {users:,} | {side} | {span([row.rps for row in rows], '{:,.0f}')} | "
                  f"{span([row.p95 or 0.0 for row in rows], '{:g}')} | "
                  f"{span([row.p99 or 0.0 for row in rows], '{:g}')} | "
                  f"{span([row.failures for row in rows], '{:d}')} | "
                  f"{span(effs, '{:.1%}') if effs else '-'} | "
                  f"{'; '.join(sorted({row.slowest for row in rows}))} | {span(scaling)} | "
                  f"{span([row.shares.load for row in rows], '{:.0%}')} | "
                  f"{span([row.shares.server for row in rows], '{:.0%}')} | "
                  f"{span([row.server_ms or 0.0 for row in rows], '{:.3f}')} | "
                  f"{span([row.shares.cache for row in rows], '{:.0%}')} | "
                  f"{span(hits, '{:.1%}') if hits else '-'} | "
                  f"{span([row.shares.busy for row in rows], '{:.0%}')} | {mark} |")
    if len(sides) == 2:
        print("\nserver CPU per request, cache on / off, per round (lower is better):")
        for users in steps:
            ratios = [on.server_ms / off.server_ms
                      for off, on in zip(runs[(users, "off")], runs[(users, "on")], strict=True)
                      if on.server_ms and off.server_ms]
            print(f"  {users:>6,} users  {span(ratios) if ratios else '-'}")


def _print_step(r: int, users: int, side: str, step: Step) -> None:
    hits = "" if step.hit_ratio is None else f" Redis {step.shares.cache:.0%} hits " \
        f"{step.hit_ratio:.1%}"
    print(f"round {r} step {users:>5} users cache {side}: {step.rps:8.1f} req/s  p95 "
          f"{step.p95} ms  p99 {step.p99} ms  failures {step.failures}  CPU: Locust "
          f"{step.shares.load:.0%} server {step.shares.server:.0%} "
          f"({step.server_ms or 0:.3f} ms/req){hits} busy {step.shares.busy:.0%}", flush=True)
    for s in step.statements:
        plan, execute = float(s["plan_ms"]), float(s["mean_ms"])
        share = plan / (plan + execute) if plan + execute else 0.0
        print(f"    {s['calls']:>8,} calls  plan {plan:.3f} ms  execute {execute:.3f} ms"
              f"  ({share:.0%} planning)  {s['query'][:70]}", flush=True)


def _step(args, settings, users: int, r: int, cache_url: str | None) -> Step:
    spawn = max(25.0, users / 10)  # ramp in ~10 s
    side = "cache" if cache_url else "nocache"
    opts = runner.RunOptions(
        users=users, spawn_rate=spawn,
        duration=f"{int(args.seconds + args.warmup + users / spawn)}s",
        out_dir=args.out / f"round-{r}" / f"step-{users}-{side}", dbname=args.dbname,
        pgbouncer_port=args.pgbouncer_port or None, pool_size=args.pool_size,
        processes=args.processes if args.processes > 1 else None,
        p95_limit_ms=args.p95_ms, user_class=args.user_class)
    # Every request's end time: the requests of the steady window, to the millisecond
    # (the history's counts move by whole worker reports, every 3 s).
    request_log = opts.out_dir / "requests.log"
    request_log.unlink(missing_ok=True)
    opts.extra_args = ["--donna-request-log", str(request_log)]
    # The Locust processes inherit this environment (settings read it before the files).
    os.environ["CACHE_ENABLED"] = "true" if cache_url else "false"
    if cache_url:
        os.environ["CACHE_URL"] = cache_url
    before = _keyspace(cache_url)
    sampler = Sampler()
    with sampler.running():
        result = runner.run(opts, settings)
    after = _keyspace(cache_url)
    total = next(q for q in result.verdict.queries if q.name == AGGREGATED)
    worst = max((q for q in result.verdict.queries if q.name != AGGREGATED),
                key=lambda q: q.p95_ms or 0.0)
    # The capacity goal is on the overall p95 (the per-query gate is `loadtest run`'s).
    ok = total.p95_ms is not None and total.p95_ms < args.p95_ms and total.failures == 0
    lookups = after[0] + after[1] - before[0] - before[1]
    shares, server_ms = _steady(
        sampler, result.out_dir / f"{runner.CSV_PREFIX}_stats_history.csv", request_log,
        users, args.warmup)
    return Step(total.rps, total.p95_ms, total.p99_ms, total.failures,
                (result.pool or {}).get("efficiency"), f"{worst.name} {worst.p95_ms:g}", ok,
                shares, result.statements["top"][:STATEMENTS],
                (after[0] - before[0]) / lookups if cache_url and lookups else None, server_ms)


def _steady(sampler: Sampler, history: Path, requests: Path, users: int,
            warmup: int) -> tuple[Shares, float | None]:
    """The shares of the steady window and the server's CPU ms per request in it; the
    whole run's shares and None when the run had no such window."""
    window = steady_window(history, users, warmup)
    found = sampler.window(*window) if window else None
    if found is None:
        return sampler.shares(sampler.samples[0].at, sampler.samples[-1].at) or Shares(), None
    a, b = found
    done = requests_between(requests, a.at, b.at)
    return shares_between(a, b), (b.server - a.server) * 1000 / done if done else None


def steady_window(history: Path, users: int, warmup: int) -> tuple[float, float] | None:
    """(start, end), time.time() seconds, of the steady part of a Locust run from its
    per-second history: from ``warmup`` s after every user runs (and Locust reset its
    counts) to the last whole second they all ran; None when the run never got there."""
    try:
        with history.open(encoding="utf-8", newline="") as f:
            full = [int(row["Timestamp"]) for row in csv.DictReader(f)
                    if row["Name"] == AGGREGATED and int(row["User Count"]) == users]
    except (OSError, KeyError, ValueError):
        return None
    if not full:
        return None
    start, end = full[0] + RESET_MARGIN + warmup, full[-1]
    return (start, end) if end > start else None


def requests_between(log: Path, start: float, end: float) -> int:
    """Requests that ended in (start, end], from the locustfile's request log (a line
    per request, its end time first)."""
    try:
        with log.open(encoding="utf-8") as f:
            return sum(1 for line in f if start < float(line.split(" ", 1)[0]) <= end)
    except OSError:
        return 0  # Locust could not write it: no figure rather than a wrong one


def _keyspace(url: str | None) -> tuple[int, int]:
    """Redis's keyspace (hits, misses) so far; zeros without a cache."""
    if url is None:
        return 0, 0
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats = client.info("stats")
        return int(stats["keyspace_hits"]), int(stats["keyspace_misses"])
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())

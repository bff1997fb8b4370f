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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import header, span

from donnadb.config import load_settings
from donnadb.loadtest import runner
from donnadb.loadtest.slo import AGGREGATED


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,250,500,1000,2000")
    parser.add_argument("--seconds", type=int, default=60, help="steady time per step")
    parser.add_argument("--processes", type=int, default=2, help="Locust processes")
    parser.add_argument("--pool-size", type=int, default=100,
                        help="client connections per Locust process")
    parser.add_argument("--p95-ms", type=float, default=20.0)
    parser.add_argument("--pgbouncer-port", type=int, default=6432, help="0: direct")
    parser.add_argument("--dbname", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-results/capacity"))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every step once per round")
    args = parser.parse_args()
    settings = load_settings()
    steps = [int(s) for s in args.steps.split(",")]
    print(header("bench/capacity.py", args.rounds), flush=True)
    runs: dict[int, list[tuple]] = {users: [] for users in steps}
    for r in range(1, args.rounds + 1):
        for users in steps:
            row = _step(args, settings, users, r)
            runs[users].append(row)
            print(f"round {r} step {users:>5} users: {row[0]:8.1f} req/s  p95 {row[1]} ms  "
                  f"p99 {row[2]} ms  failures {row[3]}", flush=True)
    base_users = steps[0]
    # A step passes only when it passed in every round.
    passed = {users: all(row[6] for row in runs[users]) for users in steps}
    best = max((users for users in steps if passed[users]), default=None)
    print(f"\ncapacity (p95 < {args.p95_ms:g} ms, no failures), "
          f"{args.processes} Locust process(es), {args.seconds} s steady per step; "
          f"min-max over {args.rounds} rounds, scaling per round")
    print("| users | req/s | p95 ms | p99 ms | failures | pool eff. | slowest query p95 ms "
          "| scaling vs first | SLO |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|:---:|")
    for users in steps:
        rows = runs[users]
        scaling = [(row[0] / base[0]) / (users / base_users) if base[0] else 0.0
                   for row, base in zip(rows, runs[base_users], strict=True)]
        effs = [row[4] for row in rows if row[4] is not None]
        mark = "pass" + (" (highest)" if users == best else "") if passed[users] else "FAIL"
        print(f"| {users:,} | {span([row[0] for row in rows], '{:,.0f}')} | "
              f"{span([row[1] or 0.0 for row in rows], '{:g}')} | "
              f"{span([row[2] or 0.0 for row in rows], '{:g}')} | "
              f"{span([row[3] for row in rows], '{:d}')} | "
              f"{span(effs, '{:.1%}') if effs else '-'} | "
              f"{'; '.join(sorted({row[5] for row in rows}))} | {span(scaling)} | {mark} |")
    return 0 if best is not None else 1


def _step(args, settings, users: int, r: int) -> tuple:
    """One capacity step: (req/s, p95, p99, failures, pool efficiency, slowest, passed)."""
    spawn = max(25.0, users / 10)  # ramp in ~10 s
    opts = runner.RunOptions(
        users=users, spawn_rate=spawn, duration=f"{int(args.seconds + users / spawn)}s",
        out_dir=args.out / f"round-{r}" / f"step-{users}", dbname=args.dbname,
        pgbouncer_port=args.pgbouncer_port or None, pool_size=args.pool_size,
        processes=args.processes if args.processes > 1 else None,
        p95_limit_ms=args.p95_ms)
    result = runner.run(opts, settings)
    total = next(q for q in result.verdict.queries if q.name == AGGREGATED)
    worst = max((q for q in result.verdict.queries if q.name != AGGREGATED),
                key=lambda q: q.p95_ms or 0.0)
    eff = (result.pool or {}).get("efficiency")
    # The capacity goal is on the overall p95 (the per-query gate is `loadtest run`'s).
    ok = total.p95_ms is not None and total.p95_ms < args.p95_ms and total.failures == 0
    return (total.rps, total.p95_ms, total.p99_ms, total.failures, eff,
            f"{worst.name} {worst.p95_ms:g}", ok)

if __name__ == "__main__":
    sys.exit(main())

"""Capacity steps: how many concurrent chat users fit under the SLO on this host?

    .venv/bin/python bench/capacity.py [--steps 100,250,500,1000,2000] [--seconds 60]
        [--processes 2] [--p95-ms 20] [--pgbouncer-port 6432] [--dbname donna]

Runs the load test (`donnadb/loadtest/locustfile.py`, same think times as `donnactl loadtest
run`) once per step, each with its own ramp-up excluded, and prints per step the
throughput, p95/p99, failures, PgBouncer's pool efficiency, and the throughput ratio to
the first step relative to the user ratio (1.00 = throughput grew in proportion to the
users: the server kept up). The highest step whose p95 stays under ``--p95-ms`` with no
failure is marked. The issue's goal: 1,000+ users at p95 < 20 ms on 2 cores with
Locust, PgBouncer and PostgreSQL all on the host. Results go to --out/step-N/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from donnadb.config import load_settings  # noqa: E402
from donnadb.loadtest import runner  # noqa: E402
from donnadb.loadtest.slo import AGGREGATED  # noqa: E402


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
    args = parser.parse_args()
    settings = load_settings()
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    for users in steps:
        spawn = max(25.0, users / 10)  # ramp in ~10 s
        opts = runner.RunOptions(
            users=users, spawn_rate=spawn, duration=f"{int(args.seconds + users / spawn)}s",
            out_dir=args.out / f"step-{users}", dbname=args.dbname,
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
        rows.append((users, total.rps, total.p95_ms, total.p99_ms, total.failures, eff,
                     f"{worst.name} {worst.p95_ms:g}", ok))
        print(f"step {users:>5} users: {total.rps:8.1f} req/s  p95 {total.p95_ms} ms  "
              f"p99 {total.p99_ms} ms  failures {total.failures}", flush=True)
    base_users, base_rps = rows[0][0], rows[0][1]
    best = max((r[0] for r in rows if r[7]), default=None)
    print(f"\ncapacity (p95 < {args.p95_ms:g} ms, no failures), "
          f"{args.processes} Locust process(es), {args.seconds} s steady per step")
    print("| users | req/s | p95 ms | p99 ms | failures | pool eff. | slowest query p95 ms "
          "| scaling vs first | SLO |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|:---:|")
    for users, rps, p95, p99, fails, eff, worst, ok in rows:
        scaling = (rps / base_rps) / (users / base_users) if base_rps else 0.0
        mark = "pass" + (" (highest)" if users == best else "") if ok else "FAIL"
        print(f"| {users:,} | {rps:,.0f} | {p95} | {p99} | {fails} | "
              f"{'-' if eff is None else f'{eff:.1%}'} | {worst} | {scaling:.2f} | {mark} |")
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(main())

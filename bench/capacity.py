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
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from cpushare import Shares, planning_tracked
from report import header, span

from donnadb.config import load_settings
from donnadb.loadtest import runner
from donnadb.loadtest.slo import AGGREGATED

#: Statements printed per step: those with the most planning + execution time.
STATEMENTS = 5


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
    runs: dict[int, list[Step]] = {users: [] for users in steps}
    with planning_tracked():
        for r in range(1, args.rounds + 1):
            for users in steps:
                step = _step(args, settings, users, r)
                runs[users].append(step)
                _print_step(r, users, step)
    base_users = steps[0]
    # A step passes only when it passed in every round.
    passed = {users: all(step.passed for step in runs[users]) for users in steps}
    best = max((users for users in steps if passed[users]), default=None)
    print(f"\ncapacity (p95 < {args.p95_ms:g} ms, no failures), "
          f"{args.processes} Locust process(es), {args.seconds} s steady per step; "
          f"min-max over {args.rounds} rounds, scaling per round; CPU shares of the step's "
          "wall time on all cores")
    print("| users | req/s | p95 ms | p99 ms | failures | pool eff. | slowest query p95 ms "
          "| scaling vs first | Locust CPU | server CPU | machine busy | SLO |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|:---:|")
    for users in steps:
        rows = runs[users]
        scaling = [(row.rps / base.rps) / (users / base_users) if base.rps else 0.0
                   for row, base in zip(rows, runs[base_users], strict=True)]
        effs = [row.efficiency for row in rows if row.efficiency is not None]
        mark = "pass" + (" (highest)" if users == best else "") if passed[users] else "FAIL"
        print(f"| {users:,} | {span([row.rps for row in rows], '{:,.0f}')} | "
              f"{span([row.p95 or 0.0 for row in rows], '{:g}')} | "
              f"{span([row.p99 or 0.0 for row in rows], '{:g}')} | "
              f"{span([row.failures for row in rows], '{:d}')} | "
              f"{span(effs, '{:.1%}') if effs else '-'} | "
              f"{'; '.join(sorted({row.slowest for row in rows}))} | {span(scaling)} | "
              f"{span([row.shares.load for row in rows], '{:.0%}')} | "
              f"{span([row.shares.server for row in rows], '{:.0%}')} | "
              f"{span([row.shares.busy for row in rows], '{:.0%}')} | {mark} |")
    return 0 if best is not None else 1


def _print_step(r: int, users: int, step: Step) -> None:
    print(f"round {r} step {users:>5} users: {step.rps:8.1f} req/s  p95 {step.p95} ms  "
          f"p99 {step.p99} ms  failures {step.failures}  CPU: Locust {step.shares.load:.0%}"
          f" server {step.shares.server:.0%} busy {step.shares.busy:.0%}", flush=True)
    for s in step.statements:
        plan, execute = float(s["plan_ms"]), float(s["mean_ms"])
        share = plan / (plan + execute) if plan + execute else 0.0
        print(f"    {s['calls']:>8,} calls  plan {plan:.3f} ms  execute {execute:.3f} ms"
              f"  ({share:.0%} planning)  {s['query'][:70]}", flush=True)


def _step(args, settings, users: int, r: int) -> Step:
    spawn = max(25.0, users / 10)  # ramp in ~10 s
    opts = runner.RunOptions(
        users=users, spawn_rate=spawn, duration=f"{int(args.seconds + users / spawn)}s",
        out_dir=args.out / f"round-{r}" / f"step-{users}", dbname=args.dbname,
        pgbouncer_port=args.pgbouncer_port or None, pool_size=args.pool_size,
        processes=args.processes if args.processes > 1 else None,
        p95_limit_ms=args.p95_ms)
    with Shares().measure() as shares:
        result = runner.run(opts, settings)
    total = next(q for q in result.verdict.queries if q.name == AGGREGATED)
    worst = max((q for q in result.verdict.queries if q.name != AGGREGATED),
                key=lambda q: q.p95_ms or 0.0)
    # The capacity goal is on the overall p95 (the per-query gate is `loadtest run`'s).
    ok = total.p95_ms is not None and total.p95_ms < args.p95_ms and total.failures == 0
    return Step(total.rps, total.p95_ms, total.p99_ms, total.failures,
                (result.pool or {}).get("efficiency"), f"{worst.name} {worst.p95_ms:g}", ok,
                shares, result.statements["top"][:STATEMENTS])


if __name__ == "__main__":
    sys.exit(main())

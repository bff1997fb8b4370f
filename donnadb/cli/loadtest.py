"""``donnactl loadtest seed|run|worker|gate|smoke``: parsing and printing around
:mod:`donnadb.loadtest`, imported lazily so other commands do not pay for Locust or
matplotlib.

Exit codes (:mod:`donnadb.errors`): 0 the gate passed, 9 an SLO was missed, 10 Locust
itself failed, 11 a prerequisite is missing (Locust, a seeded database), 3 bad options,
4 the database or PgBouncer cannot be reached.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from donnadb.cli.opsrun import logged
from donnadb.cli.options import DbOpt, JsonOpt
from donnadb.cli.output import console, emit_json
from donnadb.config import load_settings
from donnadb.errors import PreconditionError, UsageError

app = typer.Typer(no_args_is_help=True)

OutOpt = typer.Option(Path("loadtest-results"), help="Directory for CSV, HTML, PNG.")
StatsCsvArg = typer.Argument(..., help="A Locust *_stats.csv (after ramp-up).")


@app.command()
@logged("loadtest seed")
def seed(
    scale: str = typer.Option("default", help="default (10k/50k/2M), small or ci."),
    users: int | None = typer.Option(None, help="Override the scale's users."),
    sessions: int | None = typer.Option(None, help="Override the scale's chat sessions."),
    messages: int | None = typer.Option(None, help="Override the scale's messages."),
    force: bool = typer.Option(False, help="Reseed even when the scale is already there."),
    dbname: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate the data set through COPY (idempotent), then VACUUM ANALYZE."""
    from donnadb.loadtest import seed as seeding

    if scale not in seeding.SCALES:
        raise UsageError(f"unknown scale {scale!r}; use {', '.join(seeding.SCALES)}")
    base = seeding.SCALES[scale]
    chosen = seeding.Scale(users=users or base.users, sessions=sessions or base.sessions,
                           messages=messages or base.messages)
    settings = load_settings()
    if json_out:
        result = seeding.seed(settings, chosen, dbname=dbname, force=force)
    else:
        totals = {"users": chosen.users, "chat_sessions": chosen.sessions,
                  "messages": chosen.messages}
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                      console=console) as progress:
            bars: dict[str, Any] = {}

            def report(table: str, n: int) -> None:
                if table not in bars:
                    bars[table] = progress.add_task(f"COPY {table}",
                                                    total=totals.get(table, n) or n)
                progress.update(bars[table], completed=n)

            result = seeding.seed(settings, chosen, dbname=dbname, force=force,
                                  progress=report)
    result["scale"] = {"users": chosen.users, "sessions": chosen.sessions,
                       "messages": chosen.messages}
    if json_out:
        emit_json(result)
    elif result["seeded"]:
        console.print(f"seeded {chosen.users:,} users, {chosen.sessions:,} chats, "
                      f"{chosen.messages:,} messages in {result['seconds']:.1f} s "
                      "(VACUUM ANALYZE done)")
    else:
        console.print("already seeded at this scale: nothing to do")


@app.command()
@logged("loadtest run")
def run(
    users: int = typer.Option(150, "--users", "-u", help="Concurrent simulated users."),
    spawn_rate: float = typer.Option(25.0, "--spawn-rate", "-r", help="Users started per s."),
    duration: str = typer.Option("5m", "--duration", "-t", help="Run time, e.g. 60s, 5m "
                                 "(the ramp-up included, the warm-up not)."),
    warmup: float = typer.Option(10.0, help="Seconds at full load after the ramp-up that "
                                 "the verdict leaves out (connections and caches warm up)."),
    processes: int | None = typer.Option(None, help="Locust processes on this host (-1: one "
                                         "per core)."),
    master: bool = typer.Option(False, help="Be the master of workers on other hosts."),
    expect_workers: int = typer.Option(1, help="With --master: workers to wait for."),
    master_bind_host: str = typer.Option("127.0.0.1", help="With --master: address workers "
                                         "connect to."),
    master_bind_port: int = typer.Option(5557, help="With --master: port."),
    pgbouncer_port: int | None = typer.Option(None, help="PgBouncer port (default: "
                                              "PGBOUNCER_PORT, else 6432)."),
    direct: bool = typer.Option(False, help="Bypass PgBouncer: straight to PostgreSQL."),
    pool_size: int = typer.Option(50, help="Client connections per Locust process."),
    p95_ms: float = typer.Option(100.0, help="The SLO: p95 must stay under this (ms)."),
    out: Path = OutOpt,
    dbname: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run Locust headless and apply the SLO gate (exit 9 when an SLO is missed).

    Checks first, in seconds, that Locust is installed, the database is seeded and
    PgBouncer lets the app role in (exit 11 or 4 with the fix, before any load).
    """
    from donnadb.loadtest import runner, slo

    settings = load_settings()
    port = None if direct else (pgbouncer_port or settings.pgbouncer_port or 6432)
    opts = runner.RunOptions(
        users=users, spawn_rate=spawn_rate, duration=duration, warmup=warmup, out_dir=out,
        dbname=dbname, pgbouncer_port=port, pool_size=pool_size, processes=processes,
        expect_workers=expect_workers if master else None,
        master_bind_host=master_bind_host, master_bind_port=master_bind_port,
        p95_limit_ms=p95_ms,
    )
    opts.validate()
    runner.preflight(opts, settings)  # before the header: a missing piece is one line
    if json_out:
        result = runner.run(opts, settings)
        emit_json(result.to_dict())
    else:
        console.print(f"load: {users} users (+{spawn_rate:g}/s) for {duration}, measured "
                      f"after a {warmup:g}s warm-up, on "
                      f"{dbname or settings.db_name} via "
                      f"{'PgBouncer :' + str(port) if port else 'PostgreSQL directly'}")
        with Progress(TextColumn("locust"), BarColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            bar = progress.add_task("run", total=100)

            def tick(elapsed: float, expected: float) -> None:
                progress.update(bar, completed=min(99.0, 100 * elapsed / expected))

            result = runner.run(opts, settings, tick=tick)
            progress.update(bar, completed=100)
        _print_result(result)
    if not result.verdict.passed:
        first = result.verdict.failed_checks[0]
        raise slo.SloViolation(f"SLO missed: {first.what} = {first.value} (must be "
                               f"{first.limit}); details in {result.out_dir}/verdict.json")


def _print_result(result: Any) -> None:
    table = Table(title="after ramp-up and warm-up (Locust, client side)")
    for col in ("query", "requests", "failures", "p50 ms", "p95 ms", "p99 ms", "req/s"):
        table.add_column(col, justify="left" if col == "query" else "right", no_wrap=True)
    for q in result.verdict.queries:
        table.add_row(q.name, f"{q.requests:,}", str(q.failures), _ms(q.p50_ms),
                      _ms(q.p95_ms), _ms(q.p99_ms), f"{q.rps:.1f}")
    console.print(table)
    pool = result.pool
    if pool:
        if pool.get("efficiency") is None:
            console.print(f"PgBouncer: {pool.get('error') or 'no transactions'}")
        else:
            console.print(
                f"PgBouncer: pool efficiency {pool['efficiency']:.2%} "
                f"({pool['transactions']:,} transactions, mean wait "
                f"{pool['mean_wait_ms_per_xact']} ms/xact); peak {pool['peak_client_connections']}"
                f" clients on {pool['peak_server_connections']} server connections")
    st = result.statements
    if st.get("error"):
        console.print(f"pg_stat_statements: unavailable ({st['error']})")
    elif st.get("total"):
        console.print(f"pg_stat_statements: {int(st['total']['calls']):,} calls, mean "
                      f"{st['total']['mean_ms']} ms server time")
        top = Table(title="top statements by total server time")
        for col in ("query", "calls", "mean ms", "max ms"):
            top.add_column(col, overflow="fold")
        for r in st["top"][:5]:
            top.add_row(r["query"], f"{r['calls']:,}", str(r["mean_ms"]), str(r["max_ms"]))
        console.print(top)
    verdict = result.verdict
    for c in verdict.checks:
        if not c.ok:
            console.print(f"[red]FAIL[/] {c.what} = {c.value} (must be {c.limit})")
    console.print(f"files: {', '.join(result.files.values())}")
    console.print("[bold green]PASS[/]" if verdict.passed else "[bold red]FAIL[/]")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@app.command()
@logged("loadtest worker")
def worker(
    master_host: str = typer.Option("127.0.0.1", help="Where `loadtest run --master` runs."),
    master_port: int = typer.Option(5557, help="The master's --master-bind-port."),
    processes: int | None = typer.Option(None, help="Worker processes on this host."),
    json_out: JsonOpt = False,
) -> None:
    """Run Locust workers for a master (`donnactl loadtest run --master`) elsewhere.

    Returns when the master's run ends; exit 10 when Locust itself failed.
    """
    from donnadb.loadtest import runner

    if importlib.util.find_spec("locust") is None:
        raise PreconditionError("Locust is not installed in this environment: "
                                "pip install 'donnadb[loadtest]'")
    cmd = runner.worker_command(master_host, master_port, processes)
    started = time.monotonic()
    done = subprocess.run(cmd, env=runner._env(load_settings()), cwd=str(runner.ROOT),
                          check=False, stdout=subprocess.DEVNULL if json_out else None)
    result = {"master": f"{master_host}:{master_port}", "processes": processes,
              "locust_exit": done.returncode,
              "seconds": round(time.monotonic() - started, 1)}
    if json_out:
        emit_json(result)
    if done.returncode != 0:
        raise runner.LocustFailed(f"locust worker exited {done.returncode} (master "
                           f"{result['master']})")


@app.command()
def gate(
    stats_csv: Path = StatsCsvArg,
    p95_ms: float = typer.Option(100.0, help="p95 limit (ms)."),
    json_out: JsonOpt = False,
) -> None:
    """Apply the SLO gate to an existing Locust stats CSV (exit 9 when it fails)."""
    from donnadb.loadtest import slo
    from donnadb.loadtest.names import QUERY_NAMES

    verdict = slo.evaluate(slo.read_stats(stats_csv), expected_names=QUERY_NAMES,
                           p95_limit_ms=p95_ms)
    if json_out:
        emit_json(verdict.to_dict())
    else:
        for c in verdict.checks:
            console.print(f"{'ok  ' if c.ok else '[red]FAIL[/]'} {c.what} = {c.value} "
                          f"({c.limit})")
    if not verdict.passed:
        first = verdict.failed_checks[0]
        raise slo.SloViolation(f"SLO missed: {first.what} = {first.value} "
                               f"(must be {first.limit})")


@app.command()
def smoke(
    users: int = typer.Option(20, help="Users, each running pg_sleep(1) at once."),
    pgbouncer_port: int = typer.Option(0, help="Through PgBouncer on this port (0: direct)."),
    dbname: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prove gevent cooperation: N pg_sleep(1) take ~1 s together (exit 1 if serial)."""
    from donnadb.loadtest import runner

    cmd = [sys.executable, "-m", "donnadb.loadtest.smoke", "--users", str(users),
           "--pgbouncer-port", str(pgbouncer_port), *(["--dbname", dbname] if dbname else [])]
    done = subprocess.run(cmd, cwd="/", env=runner._env(), capture_output=True, text=True,
                          check=False)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise runner.LocustFailed(f"the smoke test exited {done.returncode}: {last}") from None
    if json_out:
        emit_json(result)
    else:
        console.print(f"{result['users']} sleeps of 1 s took {result['wall_seconds']} s "
                      f"together ({result['serial_seconds']} s one after the other); wait "
                      f"function {result['wait_function']}: "
                      + ("[green]they overlap[/]" if result["overlap"]
                         else "[red]they ran one after the other[/]"))
    if not result["overlap"]:
        raise typer.Exit(1)

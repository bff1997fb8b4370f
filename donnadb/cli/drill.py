"""``donnactl cluster drill``: the failure drill (:mod:`donnadb.ops.drill`), run on a
database host: on a single host it kills and restarts PostgreSQL, in a Patroni cluster
it freezes (or kills) the leader, or switches over, under load.

Exit codes: 0 no acknowledged write lost, 1 a write was lost, the service did not come
back in time or the old leader did not rejoin, 3 bad options, 11 refused (not the
leader, no systemd for the node fault, Locust or the seeded data missing), 130 the
operator said no.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json


@logged("cluster drill")
def drill_cmd(
    fault: Annotated[str, typer.Option(help="Cluster: node (freeze the leader's host) or "
                                       "postmaster (SIGKILL it). A single host always "
                                       "kills and restarts its postmaster.")] = "node",
    switchover: Annotated[bool, typer.Option(
        "--switchover", help="Cluster: a planned switchover (patronictl) instead of a "
        "fault.")] = False,
    users: Annotated[int, typer.Option("--users", "-u", help="Locust users.")] = 150,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second.")] = 25.0,
    writers: Annotated[int, typer.Option(help="Ledger writer threads.")] = 4,
    rounds: Annotated[int, typer.Option(help="Drills in a row (min-max reported).")] = 1,
    warmup: Annotated[float, typer.Option(help="Seconds of full load before the "
                                          "fault.")] = 20.0,
    settle: Annotated[float, typer.Option(help="Seconds of load after recovery.")] = 20.0,
    recovery_timeout: Annotated[float, typer.Option(
        help="Seconds writes may take to succeed again.")] = 120.0,
    rejoin_timeout: Annotated[float, typer.Option(
        help="Cluster: seconds the old leader may take to rejoin.")] = 300.0,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the drill's chat and its "
                                       "messages.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for Locust's log and the request "
                                      "log of each round.")] = Path("drill-results"),
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """Kill the primary under load and report what it cost (exit 1 if a write is lost).

    Per round: seconds until writes succeed again, acknowledged and lost writes, failed
    requests, p95 before/during/after, and (cluster) whether the old leader rejoined as
    a replica and how long it took. Asks first unless --yes.
    """
    from donnadb.ops import drill

    s = settings()
    plan = drill.DrillPlan(fault=fault, switchover=switchover, users=users,
                           spawn_rate=spawn_rate, writers=writers, rounds=rounds,
                           warmup=warmup, settle=settle, recovery_timeout=recovery_timeout,
                           rejoin_timeout=rejoin_timeout, keep=keep, dbname=dbname,
                           out_dir=out.absolute())
    plan.validate()
    target = drill.detect(s, plan)
    load = (f"{users} Locust users and {writers} ledger writers on "
            f"{s.db_host}:{s.pgbouncer_port or s.db_port}/{dbname or s.db_name}")
    if dry_run:
        doc = {"dry_run": True, "target": target.kind, "action": target.action(plan),
               "rounds": rounds, "load": load}
        if json:
            emit_json(doc)
        else:
            console.print(f"dry run: would {doc['action']}, {rounds} time(s), under {load}",
                          highlight=False)
        return
    confirm(f"This disrupts the database: {target.action(plan)}, {rounds} time(s), under "
            f"{load}. Go on?", yes)
    progress = None if json else (lambda line: console.print(line, highlight=False))
    report = drill.run(plan, s, target=target, progress=progress)
    if json:
        emit_json(report.to_dict())
    else:
        _print(report)
    drill.raise_for_failure(report)


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _print(report) -> None:
    table = Table(title=f"failure drill ({report.target}): {report.action}",
                  title_justify="left")
    table.add_column("")
    for r in report.rounds:
        table.add_column(f"round {r.round}", justify="right")
    rows = {
        "writes back after (s)": lambda r: _fmt(r.downtime_s),
        "acknowledged writes": lambda r: str(r.acknowledged),
        "lost writes": lambda r: f"[bold red]{r.lost}[/]" if r.lost else "0",
        "failed ledger writes (outage)": lambda r: str(r.ledger_failed_in_window),
        "failed requests (outage)": lambda r: str(r.requests["during"]["failed"]),
        "failed requests % (all)": lambda r: _fmt(r.requests["total"]["failed_pct"]),
        "p95 before (ms)": lambda r: _fmt(r.requests["before"]["p95_ms"]),
        "p95 during (ms)": lambda r: _fmt(r.requests["during"]["p95_ms"]),
        "p95 after (ms)": lambda r: _fmt(r.requests["after"]["p95_ms"]),
        "restart (s)": lambda r: _fmt(r.restart_s),
        "leader before/after": lambda r: f"{_fmt(r.leader_before)}/{_fmt(r.leader_after)}",
        "old leader rejoined": lambda r: "-" if r.rejoined is None else (
            f"yes, {r.rejoin_s:g} s" if r.rejoined else "[bold red]NO[/]"),
    }
    for label, cell in rows.items():
        table.add_row(label, *(cell(r) for r in report.rounds))
    console.print(table)
    span = report.ranges()["downtime_s"]
    if len(report.rounds) > 1:
        console.print(f"writes back after: {span['min']:g}-{span['max']:g} s over "
                      f"{len(report.rounds)} rounds", highlight=False)
    if report.stopped:
        console.print(report.stopped, highlight=False)

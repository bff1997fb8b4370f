"""`donnactl queries top|cancel|terminate`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.ops import queries

app = typer.Typer(no_args_is_help=True)

PidArg = Annotated[int, typer.Argument(help="Backend pid (see `donnactl status`).")]


@app.command("top")
@logged("queries top")
def top_cmd(
    by: Annotated[str, typer.Option(help="Order by total, mean or calls.")] = "total",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """Slowest and most frequent statements from pg_stat_statements (exit 11 when missing)."""
    rows = queries.top(settings(), by=by, limit=limit, dbname=dbname)
    if json:
        emit_json(rows)
        return
    table = Table(title=f"top {limit} statements by {by}", title_justify="left")
    for col in ("calls", "total ms", "mean ms", "max ms", "hit %", "role"):
        table.add_column(col, no_wrap=True)
    table.add_column("query", overflow="fold", min_width=40)
    for r in rows:
        table.add_row(str(r["calls"]), f"{r['total_ms']:g}", f"{r['mean_ms']:g}",
                      f"{r['max_ms']:g}", "-" if r["hit_pct"] is None else f"{r['hit_pct']:g}",
                      r["role"] or "-", r["query"])
    console.print(table)


def _describe(action: str, pid: int, user: str, state: str | None, started,
              seconds: float | None, query: str | None) -> str:
    """One line: what would be signalled (user, state, when the query started, its text)."""
    when = f"{started:%Y-%m-%d %H:%M:%S %Z}, {seconds or 0:.0f}s ago" if started else "never"
    return (f"{action} pid {pid} (user {user}, {state or 'no state'}, query started {when}): "
            f"{(query or '')[:80]!r}")


def _signal(pid: int, action: str, yes: bool, json: bool, dry_run: bool,
            dbname: str | None) -> None:
    s = settings()
    if not dry_run:
        t = queries.target(s, pid, action, dbname=dbname)
        confirm(_describe(action, pid, t["usename"], t["state"], t["query_start"],
                          t["seconds"], t["query"]) + "?", yes)
    result = queries.signal(s, pid, action, dbname=dbname, dry_run=dry_run)
    if json:
        emit_json(result)
    elif dry_run:
        console.print("dry run: would " + _describe(
            action, pid, result["role"], result["state"], result["query_start"],
            result["seconds"], result["query"]), highlight=False)
    else:
        console.print(f"{action} pid {pid}: {'sent' if result['signalled'] else 'no such backend'}")
    if not (dry_run or result["signalled"]):
        raise typer.Exit(1)


@app.command("cancel")
@logged("queries cancel")
def cancel_cmd(pid: PidArg, dry_run: DryRunOpt = False, yes: YesOpt = False,
               json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Cancel the backend's running query (the session stays).

    Asks first unless --yes; --dry-run shows the backend it would cancel.
    """
    _signal(pid, "cancel", yes, json, dry_run, dbname)


@app.command("terminate")
@logged("queries terminate")
def terminate_cmd(pid: PidArg, dry_run: DryRunOpt = False, yes: YesOpt = False,
                  json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Terminate the backend (its transaction rolls back).

    Asks first unless --yes; --dry-run shows the backend it would terminate.
    """
    _signal(pid, "terminate", yes, json, dry_run, dbname)

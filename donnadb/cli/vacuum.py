"""`donnactl vacuum report|run`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.opsrun import confirm, leader_only, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.ops import vacuum

app = typer.Typer(no_args_is_help=True)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "never"


@app.command("report")
@logged("vacuum report")
def report_cmd(json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Dead tuples, last vacuum/autovacuum and transaction id age per table."""
    result = vacuum.report(settings(), dbname=dbname)
    if json:
        emit_json(result)
        return
    d = result["database"]
    table = Table(title=f"xid age {d['xid_age']} ({d['freeze_pct']}% of autovacuum_freeze_max_age"
                        f" {d['freeze_max_age']}), autovacuum {d['autovacuum']}",
                  title_justify="left")
    for col in ("table", "live", "dead", "dead %", "last autovacuum", "last vacuum", "xid age"):
        table.add_column(col, no_wrap=True)
    for t in result["tables"]:
        table.add_row(t["table"], str(t["live"]), str(t["dead"]),
                      "-" if t["dead_pct"] is None else f"{t['dead_pct']:g}",
                      _when(t["last_autovacuum"]), _when(t["last_vacuum"]), str(t["xid_age"]))
    console.print(table)


@app.command("run")
@logged("vacuum run")
def run_cmd(
    tables: Annotated[list[str] | None, typer.Argument(help="Tables (default: all).")] = None,
    no_analyze: Annotated[bool, typer.Option("--no-analyze")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """VACUUM (ANALYZE) tables as their owner; never FULL.

    Asks first unless --yes; --dry-run lists the statements it would run.
    """
    s = settings()
    leader_only(s, "vacuum run", json=json, dbname=dbname)
    if not dry_run:
        confirm(f"VACUUM {', '.join(tables) if tables else 'every table'} in "
                f"{dbname or s.db_name}?", yes)
    result = vacuum.run(s, tables=tables, analyze=not no_analyze, dbname=dbname,
                        dry_run=dry_run)
    if json:
        emit_json({**result, "vacuumed": [] if dry_run else result["tables"]})
    elif dry_run:
        console.print("dry run: would run\n" + "\n".join(
            f"  {text};" for text in result["statements"]), highlight=False)
    else:
        console.print(f"vacuumed {len(result['tables'])} tables: {', '.join(result['tables'])}")

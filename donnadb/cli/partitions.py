"""`donnactl partitions status|maintain`."""

from __future__ import annotations

import typer
from rich.table import Table

from donnadb.cli.opsrun import confirm, leader_only, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.cli.status_view import human_bytes
from donnadb.ops import partitions
from donnadb.ops.status import parse_range_bound

app = typer.Typer(no_args_is_help=True)



@app.command("status")
@logged("partitions status")
def status_cmd(json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Partitions of system_logs: bounds, sizes, how many months are made ahead."""
    result = partitions.status(settings(), dbname=dbname)
    if json:
        emit_json(result)
        return
    if not result["present"]:
        console.print(f"{result['table']} does not exist: run `donnactl migrate apply`")
        raise typer.Exit(1)
    table = Table(title=f"{result['table']}: {result['ahead']} ahead, covered until "
                        f"{result['covered_until']:%Y-%m-%d}, retention "
                        f"{result['retention_months']} months", title_justify="left")
    for col in ("partition", "range", "rows (est.)", "size"):
        table.add_column(col, no_wrap=True)
    for p in result["partitions"]:
        rng = parse_range_bound(p["bound"])
        bound = f"{rng[0]:%Y-%m-%d} .. {rng[1]:%Y-%m-%d}" if rng else p["bound"]
        table.add_row(p["name"], bound, str(p["rows_estimate"]), human_bytes(p["size_bytes"]))
    console.print(table)


@app.command("maintain")
@logged("partitions maintain")
def maintain_cmd(json: JsonOpt = False, dry_run: DryRunOpt = False, yes: YesOpt = False,
                 dbname: DbOpt = None) -> None:
    """Premake partitions (pg_partman); archive then drop those past LOG_RETENTION_MONTHS.

    It only drops what it archived and counted. Asks before dropping unless --yes (the
    timer passes it); with nothing to drop it asks nothing.
    """
    s = settings()
    leader_only(s, "partitions maintain", json=json, dbname=dbname)
    if not dry_run and not yes:
        plan = partitions.maintain(s, dbname=dbname, dry_run=True)
        doomed = [p["partition"] for p in plan["would_archive"]]
        if doomed:
            confirm(f"Archive to {plan['archive_dir']} and drop {', '.join(doomed)} in "
                    f"{dbname or s.db_name}?", yes)
    result = partitions.maintain(s, dbname=dbname, dry_run=dry_run)
    if json:
        emit_json(result)
        return
    render_maintenance(result)


def render_maintenance(result: dict) -> None:
    if result["dry_run"]:
        names = ", ".join(p["partition"] for p in result["would_archive"]) or "none"
        console.print(f"dry run: would archive and drop {names} (retention "
                      f"{result['retention']}); {result['partitions']} partitions now")
        return
    created = ", ".join(result["created"]) or "none"
    console.print(f"created: {created}; archived and dropped: {result['dropped']} "
                  f"({sum(a['rows'] for a in result['archived'])} rows to "
                  f"{result['archive_dir']}); {result['partitions']} partitions")
    if result["default_rows"]:
        console.print(f"[yellow]warning:[/] {result['default_rows']} rows in system_logs_default "
                      "(outside every partition)")

"""`donnactl retention run [--dry-run]`."""

from __future__ import annotations

import typer

from donnadb.cli.opsrun import confirm, leader_only, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.cli.partitions import render_maintenance
from donnadb.ops import retention

app = typer.Typer(no_args_is_help=True)


@app.command("run")
@logged("retention run")
def run_cmd(json: JsonOpt = False, dry_run: DryRunOpt = False, yes: YesOpt = False,
            dbname: DbOpt = None) -> None:
    """Delete expired user_memory rows; archive and drop old system_logs partitions.

    Asks first unless --yes or --dry-run.
    """
    s = settings()
    leader_only(s, "retention run", json=json, dbname=dbname)
    if not dry_run:
        confirm(f"Delete expired memory and archive logs older than {s.log_retention_months} "
                f"months in {dbname or s.db_name}?", yes)
    result = retention.run(s, dbname=dbname, dry_run=dry_run)
    if json:
        emit_json(result)
        return
    mem = result["user_memory"]
    verb = "would delete" if dry_run else "deleted"
    console.print(f"user_memory: {mem['expired']} expired, {verb} "
                  f"{mem['expired'] if dry_run else mem['deleted']}")
    render_maintenance(result["system_logs"])

"""``donnactl db check``: one row per check, exit 0 when all pass and 1 otherwise."""

from __future__ import annotations

import typer
from rich.table import Table

from donnadb.cli.output import console, emit_json
from donnadb.config import load_settings
from donnadb.migrate.check import run_checks

app = typer.Typer(no_args_is_help=True)


@app.command()
def check(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document for scripts."),
    dbname: str | None = typer.Option(None, "--dbname", help="Database (default: DB_NAME)."),
) -> None:
    """Connect as each login role; report server version, schema version, pass/fail."""
    settings = load_settings(db_name=dbname)
    report = run_checks(settings=settings)
    if json_out:
        emit_json(report.to_dict())
    else:
        table = Table(title=f"db check: {report.database}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            table.add_row(c.name, "[green]pass[/]" if c.ok else "[bold red]FAIL[/]", c.detail)
        console.print(table)
        console.print(f"server {report.server_version or 'unknown'}, "
                      f"schema version {report.schema_version or 'none'}: "
                      + ("all checks passed" if report.ok else "[bold red]some checks failed[/]"))
    raise typer.Exit(0 if report.ok else 1)

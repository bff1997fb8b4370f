"""``donnactl db check``: one row per check, exit 0 when all pass and 1 otherwise."""

from __future__ import annotations

import typer
from rich.table import Table

from donnadb.cli.options import DbOpt, JsonOpt
from donnadb.cli.output import console, emit_json
from donnadb.config import load_settings
from donnadb.migrate.check import run_checks
from donnadb.ops.security import check_security

app = typer.Typer(no_args_is_help=True)


@app.command()
def check(
    json_out: JsonOpt = False,
    dbname: DbOpt = None,
    security: bool = typer.Option(
        False, "--security",
        help="Also check each security promise of docs/security.md on this host (as root)."),
) -> None:
    """Connect as each login role; report server version, schema version, pass/fail."""
    settings = load_settings(db_name=dbname)
    report = run_checks(settings=settings)
    findings = check_security(settings, dbname=dbname) if security else []
    ok = report.ok and all(f.ok for f in findings)
    if json_out:
        doc = report.to_dict()
        if security:
            doc["security"] = [f.to_dict() for f in findings]
            doc["ok"] = ok
        emit_json(doc)
    else:
        table = Table(title=f"db check: {report.database}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            table.add_row(c.name, "[green]pass[/]" if c.ok else "[bold red]FAIL[/]", c.detail)
        console.print(table)
        if security:
            _print_findings(findings)
        console.print(f"server {report.server_version or 'unknown'}, "
                      f"schema version {report.schema_version or 'none'}: "
                      + ("all checks passed" if ok else "[bold red]some checks failed[/]"))
    raise typer.Exit(0 if ok else 1)


def _print_findings(findings) -> None:
    table = Table(title="security promises (docs/security.md)")
    table.add_column("promise")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for f in findings:
        table.add_row(f.promise, "[green]OK[/]" if f.ok else "[bold red]FAIL[/]", f.detail)
    console.print(table)

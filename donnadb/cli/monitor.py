"""Top-level commands: `status`, `health`, `shell`.

Registered in main.GROUPS with an empty name, so Typer merges these commands into
donnactl itself instead of nesting them under a group.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from donnadb.cli.opsrun import logged, settings
from donnadb.cli.options import DbOpt, JsonOpt
from donnadb.cli.output import console, emit_json
from donnadb.cli.status_view import render_status
from donnadb.errors import CredentialsError, DatabaseError
from donnadb.ops import health, nagios, status
from donnadb.ops import shell as shell_ops

app = typer.Typer(no_args_is_help=True)


@app.command("status")
@logged("status")
def status_cmd(
    json: JsonOpt = False,
    dbname: DbOpt = None,
    svg: Annotated[Path | None, typer.Option(
        help="Also save the screen as an SVG image (README capture).")] = None,
) -> None:
    """One screen: server, connections, activity, replication, backup, partitions, bloat.

    Exit 4 when the database cannot be read, 3 on a bad setting.
    """
    s = settings()
    report = status.collect(s, dbname=dbname)
    checks = health.evaluate(report, s)
    if json:
        emit_json({**report, "checks": [c.to_dict() for c in checks]})
        return
    screen = render_status(report, checks)
    console.print(screen)
    if svg is not None:
        recorder = Console(record=True, width=100, file=io.StringIO())
        recorder.print(screen)
        recorder.save_svg(str(svg), title="donnactl status")


@app.command("health")
@logged("health")
def health_cmd(json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Nagios-style check: exit 0 OK, 1 WARNING, 2 CRITICAL (thresholds: HEALTH_*).

    An unreachable database (down, wrong password) is CRITICAL; a bad setting exits 3.
    """
    s = settings()
    try:
        report = status.collect(s, dbname=dbname)
    except (DatabaseError, CredentialsError) as exc:
        if json:
            emit_json({"state": "CRITICAL", "checks": [
                {"name": "database", "severity": "CRITICAL", "value": 0, "summary": str(exc)}]})
        else:
            typer.echo(nagios.unreachable(str(exc)))
        raise typer.Exit(2) from None
    checks = health.evaluate(report, s)
    state = health.overall(checks)
    if json:
        emit_json({"state": state.name, "checks": [c.to_dict() for c in checks]})
    else:
        limits = {name: (getattr(s, w), getattr(s, c))
                  for name, (w, c) in health.THRESHOLDS.items()}
        typer.echo(nagios.plugin_output(checks, state, limits))
    raise typer.Exit(int(state))


@app.command("shell", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": True})
@logged("shell")
def shell_cmd(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="app, readonly or migrator.")] = "readonly",
    psql: Annotated[bool, typer.Option("--psql", help="Use psql instead of pgcli.")] = False,
    dbname: DbOpt = None,
) -> None:
    """Open pgcli (or psql) as a role with the stored credentials (no password typed).

    Extra arguments go to the client: `donnactl shell --psql -- -c 'select 1'`.
    """
    argv, env = shell_ops.command(settings(), role, use_psql=psql, dbname=dbname,
                                  extra=list(ctx.args))
    raise typer.Exit(shell_ops.run(argv, env))

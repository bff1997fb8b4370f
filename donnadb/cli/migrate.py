"""``donnactl migrate status|plan|apply``: parsing and printing around donnadb.migrate."""

from __future__ import annotations

from datetime import UTC

import typer
from rich.table import Table

from donnadb import migrate
from donnadb.cli.opsrun import confirm, logged
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.config import load_settings
from donnadb.errors import MigrationError

app = typer.Typer(no_args_is_help=True)



def _pending_rows(files: list[migrate.MigrationFile]) -> list[dict]:
    return [{"version": f.version, "name": f.name, "checksum": f.checksum} for f in files]


@app.command()
def status(json_out: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Show applied and pending migrations; exit 5 when an applied file was edited or removed."""
    settings = load_settings(db_name=dbname)
    st = migrate.get_status(settings=settings)
    if json_out:
        emit_json(st.to_dict())
    else:
        table = Table(title=f"migrations in {settings.db_name}")
        for col in ("version", "name", "state", "applied at (UTC)", "ms"):
            table.add_column(col, overflow="fold")
        for a in st.applied:
            applied_at = a.applied_at.astimezone(UTC)
            table.add_row(a.version, a.name, "applied", f"{applied_at:%Y-%m-%d %H:%M:%S}",
                          f"{a.duration_ms:.0f}")
        for p in st.pending:
            table.add_row(p.version, p.name, "[yellow]pending[/]", "", "")
        console.print(table)
        console.print(f"current version: {st.current_version or 'none'}; "
                      f"{len(st.pending)} pending")
    if st.problems:
        raise MigrationError(st.problems[0])


@app.command()
def plan(json_out: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Dry run: list the migrations `apply` would run, executing nothing."""
    settings = load_settings(db_name=dbname)
    _print_plan(migrate.plan(settings=settings), json_out)


def _print_plan(pending: list[migrate.MigrationFile], json_out: bool) -> None:
    if json_out:
        emit_json({"would_apply": _pending_rows(pending)})
        return
    if not pending:
        console.print("nothing to apply: the schema is up to date")
        return
    for f in pending:
        console.print(f"would apply {f.path.name} (sha256 {f.checksum[:12]})")


@app.command()
@logged("migrate apply")
def apply(json_out: JsonOpt = False, dry_run: DryRunOpt = False, yes: YesOpt = False,
          dbname: DbOpt = None) -> None:
    """Apply every pending migration, each in its own transaction, under an advisory lock.

    Lists the pending ones and asks first unless --yes (the deploy passes it); --dry-run
    lists them and applies nothing, like `migrate plan`.
    """
    settings = load_settings(db_name=dbname)
    if dry_run or not yes:
        pending = migrate.plan(settings=settings)
        if dry_run:
            _print_plan(pending, json_out)
            return
    if not yes and pending:
        confirm(f"Apply {len(pending)} migration(s) to {settings.db_name}: "
                + ", ".join(f.path.name for f in pending) + "?", yes)

    def report(mig: migrate.MigrationFile, ms: float) -> None:
        if not json_out:
            console.print(f"applied {mig.path.name} in {ms:.0f} ms")

    done = migrate.apply_migrations(settings=settings, on_applied=report)
    if json_out:
        st = migrate.get_status(settings=settings)
        emit_json({"applied_now": _pending_rows(done), "current_version": st.current_version})
    elif not done:
        console.print("nothing to apply: the schema is up to date")

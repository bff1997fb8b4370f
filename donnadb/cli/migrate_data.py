"""``donnactl migrate-data import|verify|export|reconcile``: the legacy files <-> PostgreSQL.

Exit codes: 0 ok; 1 verify found differences / reconcile left entries failing / import
quarantined records the database refused; 3 bad arguments (import with
DATA_STORAGE_TYPE=postgresql, or an entity in postgresql, without
--i-know-postgresql-is-primary; CRYPTO_ENABLED with no usable key file; sealed values
without CRYPTO_ENABLED); 4 database unreachable; 6 a batch failed for another reason
than a record's values, or export met a sealed value that does not open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from donnadb import db
from donnadb.cli.opsrun import logged
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt
from donnadb.cli.output import console, emit_json, err_console
from donnadb.config import load_settings
from donnadb.dal.factory import entity_phases
from donnadb.errors import DatabaseError
from donnadb.legacy.export import DEFAULT_LOG_GAP_MARGIN, export_data_dir
from donnadb.legacy.importer import CONFLICT_EXAMPLES, check_storage_type, import_data_dir
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.report import Report, write_private_jsonl
from donnadb.legacy.sealing import sealer_for
from donnadb.legacy.verify import verify as verify_dir

app = typer.Typer(no_args_is_help=True)

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir",
                                                 help="Legacy data directory (default: DATA_DIR).")]
ReportDirOpt = Annotated[Path, typer.Option(
    "--report-dir", help="Where the import writes its summary/quarantine report (0700).")]
DEFAULT_REPORT_DIR = Path("migrate-data-reports")
EntityOpt = Annotated[str | None, typer.Option(
    "--entity", help="Only this entity: users, memory, chats, messages or logs (default: "
    "all).", show_default=False)]


def _quarantine_table(report: Report) -> Table | None:
    if not report.quarantined:
        return None
    table = Table(title=f"quarantined ({len(report.quarantined)}): not imported, "
                        "originals untouched", title_justify="left")
    for col in ("path", "reason", "detail"):
        table.add_column(col, overflow="fold")
    for q in sorted(report.quarantined, key=lambda q: q["path"]):
        table.add_row(q["path"], q["reason"], q["detail"][:120])
    return table


def _print_report(report: Report) -> None:
    table = _quarantine_table(report)
    if table is not None:
        console.print(table)
    if report.world_writable_count:
        console.print(f"[yellow]{report.world_writable_count} world-writable (0777-style) "
                      "files/folders in the data directory[/] (left as they are; e.g. "
                      f"{', '.join(report.world_writable[:3])})", highlight=False)
    kinds = {k[5:]: v for k, v in report.counts.items() if k.startswith("note:")}
    if kinds:
        console.print("normalised/resolved: " + ", ".join(f"{k} {v}" for k, v in kinds.items()),
                      highlight=False)


def _connect(kind: str, settings, dbname: str | None) -> psycopg.Connection:
    return db.connect(kind, settings=settings, dbname=dbname, autocommit=True)


@app.command("import")
@logged("migrate-data import")
def import_cmd(data_dir: DataDirOpt = None, dry_run: DryRunOpt = False,
        json: JsonOpt = False, dbname: DbOpt = None,
        batch_size: Annotated[int | None, typer.Option(
            "--batch-size", help="Rows per transaction (default: MIGRATION_BATCH_SIZE).")] = None,
        report_dir: ReportDirOpt = DEFAULT_REPORT_DIR,
        defer_indexes: Annotated[bool | None, typer.Option(
            "--defer-indexes/--keep-indexes", help="Drop the secondary messages indexes for "
            "the load and rebuild them at the end (kill-safe); --defer-indexes is refused on "
            "a messages table holding rows. Default: defer when messages is empty.",
            show_default=False)] = None,
        workers: Annotated[int | None, typer.Option(
            "--workers", min=0, help="Processes parsing the chat files (0: none, parse in "
            "this one; default: one per core for a directory of 256+ chats).")] = None,
        postgresql_is_primary: Annotated[bool, typer.Option(
            "--i-know-postgresql-is-primary", help="Import although DATA_STORAGE_TYPE is "
            "postgresql (rows newer in PostgreSQL are still kept; differences are reported "
            "as conflicts).")] = False,
        entity: EntityOpt = None,
        ) -> None:
    """Load DATA_DIR into PostgreSQL (idempotent; re-run after any interruption).

    A stored row is replaced only by a newer file; the others are reported as conflicts.
    With --entity, one entity's files: users and memory load together (one memory
    file), messages bring their chat sessions, chats alone load without messages.
    """
    settings = load_settings(db_name=dbname, data_dir=data_dir,
                             migration_batch_size=batch_size)
    if not dry_run:
        check_storage_type(entity_phases(settings), postgresql_is_primary, entity=entity)
    sealer = sealer_for(settings)  # a bad key file stops the import before any write
    reader = LegacyReader.open(settings.data_dir)
    conn = None if dry_run else _connect("migrator", settings, dbname)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console, disable=json, transient=False) as bar:
            tasks = {phase: bar.add_task(f"{phase} files", total=total)
                     for phase, total in reader.totals.items()}
            summary = import_data_dir(
                reader, conn, batch_size=settings.migration_batch_size, dry_run=dry_run,
                progress=lambda phase, n: bar.advance(tasks[phase], n),
                defer_indexes=defer_indexes, owner_role=settings.db_role_owner,
                workers=workers, entity=entity, sealer=sealer)
    finally:
        if conn is not None:
            conn.close()
    report_file = conflicts_file = None
    if not dry_run:
        report_file = reader.report.write(Path(report_dir), "import",
                                          {"summary": summary.as_dict()})
        if summary.conflicts:
            conflicts_file = write_private_jsonl(
                report_file.with_name(report_file.stem + "-conflicts.jsonl"), summary.conflicts)
    if json:
        emit_json({"summary": summary.as_dict(), "report": reader.report.as_dict(),
                   "report_file": str(report_file) if report_file else None,
                   "conflicts_file": str(conflicts_file) if conflicts_file else None})
        if summary.rejected:
            raise typer.Exit(1)
        return
    table = Table(title="dry run: nothing written" if dry_run else "import summary",
                  title_justify="left")
    for col in ("table", "rows read", "rows written (new or changed)"):
        table.add_column(col)
    for name, n in summary.read.items():
        table.add_row(name, str(n), "-" if dry_run else str(summary.written.get(name, 0)))
    console.print(table)
    _print_report(reader.report)
    _print_conflicts(summary.conflicts, conflicts_file)
    console.print(f"{summary.batches} batches of up to {settings.migration_batch_size} rows"
                  + (f"; {summary.indexes_rebuilt} messages indexes built once at the end "
                     f"({summary.index_build_seconds:.1f} s)" if summary.indexes_rebuilt else "")
                  + (f"; report: {report_file}" if report_file else ""), highlight=False)
    if summary.rejected:
        err_console.print(f"[red]{summary.rejected} records refused by the database[/]: "
                          "quarantined (see the report); everything else is imported",
                          highlight=False)
        raise typer.Exit(1)


def _print_conflicts(conflicts: list[dict], path: Path | None) -> None:
    """The count and the first examples; every conflict is in ``path``."""
    if not conflicts:
        return
    table = Table(title=f"{len(conflicts)} conflicts: stored rows kept, the files' versions "
                        f"not imported (all in {path})", title_justify="left")
    for col in ("table", "key", "reason", "path"):
        table.add_column(col, overflow="fold")
    for c in conflicts[:CONFLICT_EXAMPLES]:
        table.add_row(c["table"], c["key"], c["reason"], c["path"])
    console.print(table)


@app.command("verify")
@logged("migrate-data verify")
def verify_cmd(data_dir: DataDirOpt = None, json: JsonOpt = False, dbname: DbOpt = None,
               entity: EntityOpt = None) -> None:
    """Compare DATA_DIR with the database chat by chat, user by user; exit 1 on a difference.

    With --entity, only the differences of that entity.
    """
    settings = load_settings(db_name=dbname, data_dir=data_dir)
    sealer = sealer_for(settings)
    reader = LegacyReader.open(settings.data_dir)
    with _connect("readonly", settings, dbname) as conn:
        try:
            result = verify_dir(reader, conn, entity=entity, sealer=sealer)
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"verify lost the database: {exc}") from exc
    if json:
        emit_json(result.as_dict())
    else:
        compared = ", ".join(f"{v} {k}" for k, v in result.compared.items())
        if result.ok:
            console.print(f"[green]verify ok[/]: {compared} match the files", highlight=False)
        else:
            table = Table(title=f"{len(result.differences)} differences", title_justify="left")
            for col in ("kind", "key", "detail"):
                table.add_column(col, overflow="fold")
            for d in result.differences[:200]:
                table.add_row(d["kind"], d["key"], d["detail"])
            console.print(table)
            console.print(f"[red]verify failed[/]: compared {compared}", highlight=False)
        if result.in_clear:
            console.print(f"[yellow]{result.in_clear} users or memory entries hold personal "
                          "values in clear[/] while CRYPTO_ENABLED is on: `donnactl keys "
                          "seal-existing` seals them", highlight=False)
        _print_report(reader.report)
    if not result.ok:
        raise typer.Exit(1)


@app.command("export")
@logged("migrate-data export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="New, empty directory.")],
    log_gap_margin: Annotated[int, typer.Option(
        "--log-gap-margin", min=0,
        help="Blank lines a log file may get beyond its rows to keep lines at their "
             "numbers; a row further out stops the export.")] = DEFAULT_LOG_GAP_MARGIN,
    json: JsonOpt = False,
    dbname: DbOpt = None,
    entity: EntityOpt = None,
) -> None:
    """Write the database back into the legacy layout (rollback path; files 0600, dirs 0700).

    With --entity, the files holding that entity: memory files for users or memory, chat
    files (sessions with their messages) for chats or messages, or the logs. Sealed values
    (CRYPTO_ENABLED) are written opened: the key file is needed.
    """
    settings = load_settings(db_name=dbname)
    sealer = sealer_for(settings)
    with _connect("readonly", settings, dbname) as conn:
        summary = export_data_dir(conn, out, log_gap_margin=log_gap_margin, entity=entity,
                                  sealer=sealer)
    if json:
        emit_json(summary.as_dict())
        return
    console.print(f"exported to {summary.out_dir}: "
                  + ", ".join(f"{v} {k}" for k, v in summary.written.items()), highlight=False)


@app.command("reconcile")
@logged("migrate-data reconcile")
def reconcile_cmd(data_dir: DataDirOpt = None, json: JsonOpt = False,
                  dbname: DbOpt = None, entity: EntityOpt = None) -> None:
    """Replay what dual-write failed to write to PostgreSQL (idempotent).

    Exit 1 if some entries still fail (they stay queued). With --entity, only that
    entity's entries (users and memory share theirs); the others stay queued.
    """
    from donnadb.dal import reconcile

    settings = load_settings(db_name=dbname, data_dir=data_dir)
    result = reconcile(settings=settings, entity=entity)
    if json:
        emit_json(result.as_dict())
    else:
        console.print(f"reconcile: {result.entries} queued entries, {result.replayed} entities "
                      f"replayed, {result.failed} still failing", highlight=False)
        for err in result.errors[:20]:
            console.print(f"  {err}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)

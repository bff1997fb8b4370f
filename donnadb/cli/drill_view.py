"""What `donnactl backup drill` prints for people: the leftovers of earlier drills it
removed, then one summary table per kind (and pgBackRest repository)."""

from __future__ import annotations

from rich.table import Table

from donnadb.backup.drill import DrillResult
from donnadb.backup.drillclean import Leftover
from donnadb.cli.output import console


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024 / 1024:.1f} MiB"


def name(r: DrillResult) -> str:
    """``logical``, or ``physical repo2``: which drill a line is about."""
    return r.kind if r.repo is None else f"{r.kind} repo{r.repo}"


def _leftovers(leftovers: list[Leftover] | None) -> None:
    if leftovers is None:
        console.print("[yellow]another drill is running: leftovers of earlier drills not "
                      "looked for[/]")
    for item in leftovers or ():
        state = ("removed" if item.removed
                 else f"[yellow]kept[/] ({item.kept_because})")
        console.print(f"leftover of an earlier drill, {item.kind} {item.name}: {state}",
                      highlight=False)


def render(results: list[DrillResult], leftovers: list[Leftover] | None) -> None:
    _leftovers(leftovers)
    for r in results:
        if r.skipped:
            console.print(f"{name(r)}: [yellow]{r.skipped}[/]", highlight=False)
            continue
        state = "[green]passed[/]" if r.ok else "[red]FAILED[/]"
        console.print(f"{name(r)} drill of {r.backup_id or '-'}: {state}; RTO "
                      f"{_seconds(r.rto_seconds)}, RPO {_seconds(r.rpo_seconds)}, backup "
                      f"{_bytes(r.backup_size_bytes)}, database {_bytes(r.database_size_bytes)}",
                      highlight=False)
        if r.tables:
            table = Table("table", "rows in backup", "rows restored", "checksum")
            for t in r.tables:
                check = {None: "unavailable", True: "equal", False: "[red]DIFFERS[/]"}
                rows_ok = t["rows_expected"] == t["rows_restored"]
                table.add_row(t["table"], str(t["rows_expected"]),
                              str(t["rows_restored"]) if rows_ok
                              else f"[red]{t['rows_restored']}[/]",
                              check[t["checksum_equal"]])
            console.print(table)
        if r.partitions:
            equal = sum(p["rows_expected"] == p["rows_restored"] for p in r.partitions)
            console.print(f"  partitions: {equal} of {len(r.partitions)} with equal row counts")
        if r.kind == "logical" and not r.checksums_available:
            console.print("  [yellow]checksums unavailable[/]: the backup's manifest predates "
                          "them; row counts compared only")
        if r.target_time:
            console.print(f"  restored to {r.target_time}: the marker row written before it "
                          + ("is there, the one after it is not" if r.ok else "check failed"))
        for problem in r.problems:
            console.print(f"  [red]{problem}[/]", highlight=False)

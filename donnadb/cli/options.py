"""Options shared by many commands, declared once so every command reads them the same.

``--json`` (one JSON document on stdout), ``--dbname`` (the database, default
``DB_NAME``), ``--yes`` (do not ask) and ``--dry-run`` (show exactly what would change,
change nothing). Commands use them as parameter annotations:
``def cmd(json: JsonOpt = False, dbname: DbOpt = None)``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperOption

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
DbOpt = Annotated[str | None, typer.Option("--dbname", help="Database (default: DB_NAME).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Show exactly what would change; change nothing.")]

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx) -> str | None:
    # Typer shows "<bool>" in the type column of an on/off flag, which takes no value.
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]

"""`donnactl roles rotate ROLE`."""

from __future__ import annotations

from typing import Annotated

import typer

from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.ops import roles

app = typer.Typer(no_args_is_help=True)


@app.command("rotate")
@logged("roles rotate")
def rotate_cmd(
    role: Annotated[str, typer.Argument(help="app, readonly, migrator or backup.")],
    yes: YesOpt = False,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """New random password for a login role, without downtime.

    Updates PostgreSQL (SCRAM verifier), DB_PASSFILE and PgBouncer's auth_file; open
    sessions keep working. Asks first unless --yes.
    """
    s = settings()
    confirm(f"Rotate the password of {s.role(role) if role in roles.ROTATABLE else role}?", yes)
    result = roles.rotate(s, role, dbname=dbname)
    if json:
        emit_json(result)
    else:
        console.print(f"rotated {result['role']}: {result['passfile']} updated, PgBouncer "
                      f"{result['pgbouncer']}, new login verified")

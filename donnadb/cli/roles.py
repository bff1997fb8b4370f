"""`donnactl roles rotate ROLE`."""

from __future__ import annotations

from typing import Annotated

import typer

from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.errors import UsageError
from donnadb.ops import roles

app = typer.Typer(no_args_is_help=True)


@app.command("rotate")
@logged("roles rotate")
def rotate_cmd(
    role: Annotated[str, typer.Argument(help="app, readonly, migrator, backup or monitor.")],
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """New random password for a login role, without downtime.

    Updates PostgreSQL (SCRAM verifier), DB_PASSFILE and PgBouncer's auth_file; open
    sessions keep working. Asks first unless --yes.
    """
    s = settings()
    if role not in roles.ROTATABLE:
        raise UsageError(f"ROLE must be one of {', '.join(roles.ROTATABLE)}, not {role!r}")
    files = [str(s.db_passfile), *([str(s.pgbouncer_auth_file)] if s.pgbouncer_auth_file
                                   else [])]
    plan = (f"set a new random password for {s.role(role)} in PostgreSQL and rewrite "
            f"{' and '.join(files)}")
    if dry_run:
        if json:
            emit_json({"dry_run": True, "role": s.role(role), "files": files})
        else:
            console.print(f"dry run: would {plan}", highlight=False)
        return
    confirm(f"Rotate: {plan}?", yes)
    result = roles.rotate(s, role, dbname=dbname)
    if json:
        emit_json(result)
    else:
        console.print(f"rotated {result['role']}: {result['passfile']} updated, PgBouncer "
                      f"{result['pgbouncer']}, new login verified")

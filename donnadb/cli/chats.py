"""`donnactl chats inspect`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.opsrun import logged, settings
from donnadb.cli.options import DbOpt, JsonOpt
from donnadb.cli.output import console, emit_json
from donnadb.ops import users

app = typer.Typer(no_args_is_help=True)


@app.command("inspect")
@logged("chats inspect")
def inspect_cmd(
    ident: Annotated[str, typer.Argument(help="The chat's chat_id or id (UUID).")],
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """A chat's owner, message counts by role and recent message metadata (no contents)."""
    r = users.inspect_chat(settings(), ident, dbname=dbname)
    if json:
        emit_json(r)
        return
    c = r["chat"]
    console.print(f"[bold]{c['chat_id']}[/] ({c['id']}) user {c['user_id']} profile "
                  f"{c['profile']} status {c['status']}: {c['message_count']} messages",
                  highlight=False)
    table = Table(title="messages by role", title_justify="left")
    for col in ("role", "messages", "tokens", "flagged", "first", "last"):
        table.add_column(col)
    for m in r["by_role"]:
        table.add_row(m["role"], str(m["messages"]), str(m["tokens"]), str(m["flagged"]),
                      f"{m['first_at']:%Y-%m-%d %H:%M}", f"{m['last_at']:%Y-%m-%d %H:%M}")
    console.print(table)

"""`donnactl users inspect|forget`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from donnadb.cli.erasurecopy import ledger_copy, print_ledger_copy
from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.dal import cache
from donnadb.ops import users

app = typer.Typer(no_args_is_help=True)

IdentArg = Annotated[str, typer.Argument(help="The user's id (UUID) or clerk_id.")]


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@app.command("inspect")
@logged("users inspect")
def inspect_cmd(ident: IdentArg, json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """A user's sessions, message counts and memory keys (readonly; no contents)."""
    r = users.inspect_user(settings(), ident, dbname=dbname)
    if json:
        emit_json(r)
        return
    u = r["user"]
    # A name is the user's text: never read as rich markup.
    shown = {f: "(sealed)" if f in u["sealed"] else escape(str(u[f])) for f in ("email", "name")}
    console.print(f"[bold]{u['id']}[/] clerk_id={escape(u['clerk_id'])} email={shown['email']} "
                  f"name={shown['name']} status={u['status']} created "
                  f"{_when(u['created_at'])} last active {_when(u['last_active_at'])}",
                  highlight=False)
    if u["sealed"]:
        console.print(f"{' and '.join(u['sealed'])} sealed: {u['sealed_reason']}",
                      highlight=False, markup=False)
    console.print(f"{r['sessions']} sessions, {r['messages']} messages, "
                  f"{len(r['memory_keys'])} memory keys")
    table = Table(title="recent sessions", title_justify="left")
    for col in ("chat_id", "title", "profile", "messages", "last message", "status"):
        table.add_column(col)
    for s in r["recent_sessions"]:
        table.add_row(s["chat_id"], s["title"] or "", s["profile"], str(s["message_count"]),
                      _when(s["last_message_at"]), s["status"])
    console.print(table)
    if r["memory_keys"]:
        console.print("memory: " + ", ".join(f"{m['memory_type']}/{m['key']}"
                                             for m in r["memory_keys"]), highlight=False)


@app.command("forget")
@logged("users forget")
def forget_cmd(ident: IdentArg, dry_run: DryRunOpt = False, yes: YesOpt = False,
               json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """GDPR erasure of a user and all their data, in one transaction, recorded.

    Deletes sessions, messages, memory and logs naming the user; writes a system_logs
    record. Asks first unless --yes; --dry-run shows what would be erased.
    """
    s = settings()
    r = users.inspect_user(s, ident, dbname=dbname)
    plan = (f"erase user {r['user']['id']} ({r['sessions']} sessions, {r['messages']} "
            f"messages, {len(r['memory_keys'])} memory keys, and the logs naming them)")
    if dry_run:
        if json:
            emit_json({"dry_run": True, "user_id": r["user"]["id"], "sessions": r["sessions"],
                       "messages": r["messages"], "memory_keys": len(r["memory_keys"])})
        else:
            console.print(f"dry run: would {plan}", highlight=False)
        return
    confirm(f"{plan[0].upper()}{plan[1:]}? This cannot be undone", yes)
    # With the DAL's cache on, no application host may serve the erased user's data
    # from it (Redis unreachable: the values expire within CACHE_TTL_SECONDS).
    result = users.forget_user(s, ident, dbname=dbname, erased=lambda keys: cache.forget(
        s, dbname or s.db_name, keys))
    # Off the host at once: a restore after losing it must erase this user again.
    copied = ledger_copy(s, dbname or s.db_name)
    if json:
        emit_json({**result, "erasures_copy": copied})
    else:
        console.print(f"erased user {result['user_id']}: {result['sessions']} sessions, "
                      f"{result['messages']} messages, {result['memory']} memory rows, "
                      f"{result['logs']} log rows, {result['data_key']} data key")
        print_ledger_copy(copied)

"""`donnactl cluster list|history|switchover|failover|restart|reinit|pause|resume|update|drill`.

A thin layer over :mod:`donnadb.ops.cluster` (which wraps patronictl). The disruptive
verbs have --dry-run, ask unless --yes, and are audited by :func:`logged`.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.drill import drill_cmd
from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.cli.status_view import human_bytes
from donnadb.ops import cluster, update

app = typer.Typer(no_args_is_help=True)
# The failure drill's verb lives in its own module.
app.command("drill")(drill_cmd)

CandidateOpt = Annotated[str | None, typer.Option(
    "--candidate", help="The member to promote (default: the synchronous standby).")]
MemberArg = Annotated[str | None, typer.Argument(help="Member name (default: all).")]


def render_members(view: dict) -> None:
    title = (f"cluster {view['cluster']}: leader {view['leader'] or 'NONE'}, timeline "
             f"{view['timeline']}{', PAUSED (no automatic failover)' if view['paused'] else ''}")
    table = Table(title=title, title_justify="left")
    for col in ("member", "host", "role", "state", "TL", "lag"):
        table.add_column(col, no_wrap=True)
    for m in view["members"]:
        lag = "-" if m["role"] == "leader" else (
            "unknown" if m["lag_bytes"] is None else human_bytes(m["lag_bytes"]))
        table.add_row(m["name"], str(m["host"]), m["role"], str(m["state"]),
                      str(m["timeline"]), lag)
    console.print(table)


@app.command("list")
@logged("cluster list")
def list_cmd(json: JsonOpt = False) -> None:
    """Members, roles, states, timeline and replication lag (patronictl list)."""
    view = cluster.overview(settings())
    if json:
        emit_json(view)
        return
    render_members(view)


@app.command("history")
@logged("cluster history")
def history_cmd(json: JsonOpt = False) -> None:
    """Every timeline switch: when, at which LSN, why, and who became leader."""
    rows = cluster.history(settings())
    if json:
        emit_json({"history": rows})
        return
    table = Table(title="timeline history", title_justify="left")
    for col in ("TL", "LSN", "reason", "when", "new leader"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["timeline"]), str(r["lsn"]), str(r["reason"]),
                      str(r["timestamp"]), str(r["new_leader"]))
    console.print(table)


def _switch(kind: str, candidate: str | None, force: bool, json: bool, dry_run: bool,
            yes: bool) -> None:
    s = settings()
    plan = cluster.plan_switch(s, kind, candidate, force)
    if not dry_run:
        confirm(f"{kind.capitalize()} from {plan['old_leader']} to {plan['candidate']}? "
                "Connections to the leader are cut.", yes)
    result = cluster.switch(s, kind, plan["candidate"], force=force, dry_run=dry_run)
    if json:
        emit_json(result)
    elif dry_run:
        console.print(f"dry run: would run {result['command']}")
    else:
        console.print(f"{kind}: {result['old_leader']} -> {result['new_leader']} "
                      f"(running as leader after {result['seconds']}s, timeline "
                      f"{result['timeline']})")


@app.command("switchover")
@logged("cluster switchover")
def switchover_cmd(candidate: CandidateOpt = None, json: JsonOpt = False,
                   dry_run: DryRunOpt = False, yes: YesOpt = False) -> None:
    """Planned hand-over of the leader to a healthy replica; waits until it leads."""
    _switch("switchover", candidate, False, json, dry_run, yes)


@app.command("failover")
@logged("cluster failover")
def failover_cmd(candidate: Annotated[str, typer.Option(
                     "--candidate", help="The replica to promote.")],
                 force: Annotated[bool, typer.Option(
                     "--force", help="Fail over even though the leader is running.")] = False,
                 json: JsonOpt = False, dry_run: DryRunOpt = False,
                 yes: YesOpt = False) -> None:
    """Promote a replica when the leader is lost (refused while it runs, unless --force)."""
    _switch("failover", candidate, force, json, dry_run, yes)


def _member_action(action: str, member: str | None, json: bool, dry_run: bool,
                   yes: bool, question: str) -> None:
    s = settings()
    plan = cluster.member_action(s, action, member, dry_run=True)
    if not dry_run:
        confirm(question, yes)
        plan = cluster.member_action(s, action, member)
    if json:
        emit_json(plan)
    elif dry_run:
        console.print(f"dry run: would run {plan['command']}")
    else:
        console.print(f"{action} of {plan['member']} done in {plan['seconds']}s")


@app.command("restart")
@logged("cluster restart")
def restart_cmd(member: MemberArg = None, json: JsonOpt = False, dry_run: DryRunOpt = False,
                yes: YesOpt = False) -> None:
    """Restart PostgreSQL on one member (or every member) through Patroni."""
    _member_action("restart", member, json, dry_run, yes,
                   f"Restart PostgreSQL on {member or 'every member'}?")


@app.command("reinit")
@logged("cluster reinit")
def reinit_cmd(member: Annotated[str, typer.Argument(help="The replica to rebuild.")],
               json: JsonOpt = False, dry_run: DryRunOpt = False,
               yes: YesOpt = False) -> None:
    """Wipe a replica's data directory and copy it again from the leader."""
    _member_action("reinit", member, json, dry_run, yes,
                   f"Erase {member}'s data directory and rebuild it from the leader?")


def _pause(pause: bool, json: bool, dry_run: bool, yes: bool) -> None:
    s = settings()
    if pause and not dry_run:
        confirm("Pause the cluster? Nothing fails over automatically until resume.", yes)
    result = cluster.set_paused(s, pause, dry_run=dry_run)
    if json:
        emit_json(result)
    elif dry_run:
        console.print(f"dry run: would run {result['command']}")
    else:
        console.print("paused: no automatic failover until `donnactl cluster resume`"
                      if pause else "resumed: automatic failover is on")


@app.command("pause")
@logged("cluster pause")
def pause_cmd(json: JsonOpt = False, dry_run: DryRunOpt = False, yes: YesOpt = False) -> None:
    """Maintenance mode: Patroni stops failing over (and managing PostgreSQL)."""
    _pause(True, json, dry_run, yes)


@app.command("resume")
@logged("cluster resume")
def resume_cmd(json: JsonOpt = False, dry_run: DryRunOpt = False) -> None:
    """Leave maintenance mode: automatic failover is on again."""
    _pause(False, json, dry_run, True)


def _versions(plan: dict) -> str:
    return ", ".join(f"{p['name']} {p['installed']}" + (f" -> {p['candidate']}" if p["upgrade"]
                                                       else "") for p in plan["packages"])


def _where(plan: dict) -> str:
    if plan["mode"] == "single":
        return "this host"
    return f"{plan['member']} (the {plan['mode']})"


def _render_update(result: dict) -> None:
    if result["nothing_to_do"]:
        console.print(f"nothing to update: {_versions(result)}; the server runs "
                      f"{result['running_version']}", highlight=False, soft_wrap=True)
        return
    if result["dry_run"]:
        console.print(f"dry run on {_where(result)}: {_versions(result)}; server "
                      f"{result['running_version']} -> {result['target_version']}; would run:",
                      highlight=False, soft_wrap=True)
        for i, step in enumerate(result["steps"], 1):
            console.print(f"  {i}. {step}", highlight=False, soft_wrap=True)
        return
    before, after = result["before"], result["after"]
    console.print(f"updated {_where(result)}: " + ", ".join(
        f"{name} {before['packages'][name]} -> {version}"
        for name, version in after["packages"].items()), highlight=False, soft_wrap=True)
    if result.get("switchover"):
        console.print(f"switched over: {result['switchover']['old_leader']} -> "
                      f"{result['switchover']['new_leader']}")
    console.print(f"server_version {before['server_version']} -> {after['server_version']} "
                  f"(restarted by {result['restarted_by']})", highlight=False, soft_wrap=True)
    if result.get("outage"):
        console.print(f"refused connections for {result['outage']['refused_seconds']}s "
                      f"({result['outage']['refused_attempts']} refused attempts, one every "
                      f"{result['outage']['probe_interval_s'] * 1000:.0f} ms)")


def _status(text: str, quiet: bool):
    """A rich spinner for a long step; none under --json (stdout is the document)."""
    return contextlib.nullcontext() if quiet else console.status(text)


def _ask(plan: dict, yes: bool) -> None:
    then = (f"switch over to {plan['switchover']['candidate']}, then restart {plan['member']}"
            if plan["mode"] == "leader" else f"restart PostgreSQL on {_where(plan)}")
    confirm(f"Update {_versions(plan)} and {then}? Its connections are cut for a moment.", yes)


@app.command("update")
@logged("cluster update")
def update_cmd(json: JsonOpt = False, dry_run: DryRunOpt = False, yes: YesOpt = False,
               refresh: Annotated[bool, typer.Option(
                   "--refresh", help="Run apt-get update first (not with --dry-run).")]
               = False) -> None:
    """Minor update of this host's PostgreSQL: packages, then one restart onto them.

    On a cluster: each replica first, the leader last (it switches over, then restarts).
    """
    s = settings()
    if refresh and not dry_run:
        with _status("apt-get update ...", json):
            update.refresh_lists()
    plan = update.plan(s)
    if dry_run or plan["nothing_to_do"]:
        result = {**plan, "dry_run": dry_run}
    else:
        _ask(plan, yes)
        with _status("updating ...", json) as status:
            result = update.run(s, plan, lambda what: status and status.update(f"{what} ..."))
    if json:
        emit_json(result)
    else:
        _render_update(result)

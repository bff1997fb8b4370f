"""Shared plumbing of the commands: settings, confirmation, the audit log.

Every command that reads or changes the database is wrapped by :func:`logged`, which
writes a JSON line when it starts and one when it ends under one trace id; the end
line is the audit record: who (the operating-system user, and the sudo user behind
it), what (the command and its arguments, secrets left out), the result (exit code)
and the duration. The shared options live in :mod:`donnadb.cli.options`.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from donnadb.config import Settings, load_settings
from donnadb.errors import DonnaError
from donnadb.ops import eventlog

log = logging.getLogger("donnadb.cli")

#: Argument names whose values are never logged.
_SECRET = re.compile(r"password|secret|token|passphrase", re.IGNORECASE)


def settings() -> Settings:
    """Settings for this command (environment, .env, host file, defaults).

    :raises ConfigError: a setting is invalid.
    """
    return load_settings()


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` unless ``--yes``; a refusal aborts with exit code 130.

    :raises typer.Abort: the operator said no (or stdin is not a terminal and gave no answer).
    """
    if not yes:
        typer.confirm(question, abort=True)


def leader_only(s: Settings, job: str, *, json: bool = False, dbname: str | None = None,
                kind: str = "readonly") -> None:
    """Stop a scheduled job with exit 0 on a replica: the leader runs it (every database
    host of a cluster has the same timers). ``kind``: the role the job logs in as.

    :raises typer.Exit: this node is a replica (after one log line and one output line).
    """
    from donnadb.ops.cluster import replica_of

    leader = replica_of(s, dbname=dbname, kind=kind)
    if leader is not None:
        skip_job(job, f"skipped: this node is a replica (leader: {leader})", json,
              reason="replica", leader=leader)


def backup_member_only(s: Settings, job: str, *, json: bool = False) -> None:
    """Stop a scheduled backup job with exit 0 on a member that does not take the
    cluster's backups (one member does: a healthy replica, else the leader).

    :raises typer.Exit: another member takes them (after one log and one output line).
    """
    from donnadb.ops.cluster import backups_taken_by

    member = backups_taken_by(s)
    if member is not None:
        skip_job(job, f"skipped: {member} takes the cluster's backups", json,
              reason="backup_member", member=member)


def skip_job(job: str, line: str, json: bool, **fields: str) -> None:
    """End a scheduled job that has nothing to do here with exit 0, one log line and
    one output line (``line``; ``fields`` in both).

    :raises typer.Exit: always.
    """
    log.info(line, extra={"command": job, **fields})
    if json:
        from donnadb.cli.output import emit_json

        emit_json({"skipped": True, **fields, "message": line})
    else:
        typer.echo(line)
    raise typer.Exit(0)


def _who() -> str:
    """The operating-system user, and the person behind sudo when there is one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo from {sudo})" if sudo and sudo != user else user


def logged(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command so it logs start and end as JSON lines with the trace id."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                log_file = load_settings().ops_log_file
            except DonnaError:
                log_file = None  # the command itself will report the bad setting
            if log_file is not None:
                eventlog.configure(log_file)
            started = time.monotonic()
            # Plain option values only (never a typer.Context), and no secrets.
            params = {k: v for k, v in kwargs.items()
                      if isinstance(v, str | int | float | bool | list | Path | None)
                      and not _SECRET.search(k)}
            log.info("command started", extra={"command": name, "params": params})
            code = 1  # anything not caught below (a bug) is a failure
            try:
                result = fn(*args, **kwargs)
                code = 0
                return result
            except typer.Exit as exc:
                code = exc.exit_code
                raise
            except DonnaError as exc:
                code = exc.exit_code
                log.error("command failed: %s", exc, exc_info=True,
                          extra={"command": name, "error": type(exc).__name__})
                raise
            except typer.Abort:
                code = 130
                raise
            finally:
                log.info("command finished", extra={
                    "command": name, "params": params, "user": _who(), "exit_code": code,
                    "duration_ms": round(1000 * (time.monotonic() - started), 1)})

        return run

    return wrap

"""Shared plumbing of the operations commands: settings, JSON logs with a trace id.

Every operations command is wrapped by :func:`logged`, which writes a JSON line when
it starts and ends (with the exit code and duration) under one trace id; the
``--json`` option and confirmation prompts are declared here once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from donnadb.config import Settings, load_settings
from donnadb.errors import DonnaError
from donnadb.ops import eventlog

log = logging.getLogger("donnadb.cli")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DbOpt = Annotated[str | None, typer.Option("--dbname", help="Database (default DB_NAME).")]


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
            # Plain option values only (never a typer.Context); no command takes a secret.
            params = {k: v for k, v in kwargs.items()
                      if isinstance(v, str | int | float | bool | list | Path | None)}
            log.info("command started", extra={"command": name, "params": params})
            code = 0
            try:
                return fn(*args, **kwargs)
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
                    "command": name, "exit_code": code,
                    "duration_ms": round(1000 * (time.monotonic() - started), 1)})

        return run

    return wrap

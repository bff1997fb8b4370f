"""Entry point of ``donnactl``: builds the command tree and maps errors to exit codes.

Each command group lives in its own module under ``donnadb.cli`` and is added to
:data:`GROUPS`; this module only wires them together.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import NoReturn

try:
    import typer
except ImportError:  # the base package only: an application server's install
    sys.exit("donnactl needs the ops extra: pip install 'donnadb[ops]'")

from rich.markup import escape

from donnadb.cli import options  # noqa: F401  (flags show no "<bool>" in help)
from donnadb.cli.output import err_console
from donnadb.errors import DiskWriteError, DonnaError, UsageError

log = logging.getLogger("donnadb")

#: (module under donnadb.cli, command name, help).
GROUPS: list[tuple[str, str, str]] = [
    ("migrate", "migrate", "Schema migrations: status, plan, apply."),
    ("migrate_data", "migrate-data", "Legacy JSON files: import, verify, export, reconcile."),
    ("dbcheck", "db", "Database checks: connect as each role and report."),
    ("loadtest", "loadtest", "Load test: seed, run Locust, SLO gate, smoke test."),
    ("monitor", "", "Top-level status, health and shell."),
    ("metrics", "metrics", "Prometheus metrics: show, textfile, serve, rules."),
    ("dashboard", "", "The dashboard page of Prometheus's figures."),
    ("partitions", "partitions", "system_logs partitions: status, maintain (pg_partman)."),
    ("retention", "retention", "Retention: expired memory, old log partitions."),
    ("queries", "queries", "Statements (pg_stat_statements); cancel or terminate a backend."),
    ("vacuum", "vacuum", "Dead tuples, autovacuum, wraparound; run VACUUM."),
    ("users", "users", "Support: inspect a user; GDPR erasure (forget)."),
    ("chats", "chats", "Support: inspect a chat session."),
    ("roles", "roles", "Role passwords: rotate."),
    ("keys", "keys", "Field encryption keys: init, add-kek, status, rotate, retire, "
                     "seal-existing, reapply-erasures."),
    ("backup", "backup", "Backups: create, list, show, verify, restore, prune, check."),
    ("cluster", "cluster", "HA cluster (Patroni): list, history, switchover, failover, "
                           "restart, reinit, pause, resume, drill."),
]

app = typer.Typer(
    name="donnactl",
    help="Operate Donna's PostgreSQL: migrations, checks, data migration, backups.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"donnactl {version('donnadb')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: bool = typer.Option(False, "--version", callback=_print_version,
                                  is_eager=True, help="Print the version and exit."),
) -> None:
    """Operate Donna's PostgreSQL: migrations, checks, data migration, backups."""


def _register() -> None:
    for module, name, help_text in GROUPS:
        sub = importlib.import_module(f"donnadb.cli.{module}").app
        app.add_typer(sub, name=name, help=help_text)


_register()


def _fail(exc: DonnaError) -> NoReturn:
    log.debug("command failed", exc_info=True)
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                      soft_wrap=True)
    sys.exit(exc.exit_code)


def main() -> None:
    """Run donnactl; a :class:`DonnaError`, or an :class:`OSError` of a full or failing
    disk, becomes one line on stderr and its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Non-standalone click returns the code of ctx.exit()/typer.Exit.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except DonnaError as exc:
        _fail(exc)
    except OSError as exc:  # a full or failing disk under any writer: one line, not a trace
        disk = DiskWriteError.of(exc)
        if disk is None:
            raise
        _fail(disk)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # usage errors: a wrong flag or value
        # Typer 0.29 raises its own copy of click's exceptions (typer._click), not click's:
        # match either by what they offer. Every usage error exits 3, like UsageError
        # (click's own 2 is CRITICAL for the Nagios-style `health`).
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                               int):
            exc.show()
            sys.exit(UsageError.exit_code if exc.exit_code else 0)
        raise


if __name__ == "__main__":
    main()

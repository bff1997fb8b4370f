"""`donnactl metrics [show]|textfile|serve|rules`: Prometheus metrics and alert rules.

``prometheus_client`` and ``yaml`` load only here, when a metrics command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from donnadb.cli.opsrun import logged, settings
from donnadb.cli.options import DbOpt, JsonOpt
from donnadb.cli.output import console, emit_json

app = typer.Typer()

HostOnlyOpt = Annotated[bool, typer.Option(
    "--host-only", help="Only this host's own figures (storage phases, reconcile backlog, "
    "dual-write's copies); never read the database (an application host).")]


@app.callback(invoke_without_command=True)
def _default(ctx: typer.Context, dbname: DbOpt = None) -> None:
    """Prometheus metrics: `show` (the default) prints one scrape; `textfile`, `serve`, `rules`."""
    if ctx.invoked_subcommand is None:
        show_cmd(dbname=dbname)


@app.command("show")
@logged("metrics show")
def show_cmd(dbname: DbOpt = None, host_only: HostOnlyOpt = False) -> None:
    """Print one scrape in Prometheus exposition format.

    When the database is down only `donnadb_up 0` and this host's own figures are
    exported (exit 0), for the alert rule.
    """
    from donnadb.ops import metrics

    typer.echo(metrics.exposition(settings(), dbname=dbname, host_only=host_only), nl=False)


@app.command("textfile")
@logged("metrics textfile")
def textfile_cmd(
    path: Annotated[Path | None, typer.Argument(
        help="File to write (default: METRICS_TEXTFILE).")] = None,
    dbname: DbOpt = None,
    host_only: HostOnlyOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write one scrape to a node_exporter textfile, atomically (the timer's job)."""
    from prometheus_client.parser import text_string_to_metric_families

    from donnadb.ops import metrics

    s = settings()
    target = path or s.metrics_textfile
    text = metrics.write_textfile(target, s, dbname=dbname, host_only=host_only)
    if json:
        emit_json({"path": str(target), "host_only": host_only,
                   "families": sorted(f.name for f in text_string_to_metric_families(text))})


@app.command("serve")
@logged("metrics serve")
def serve_cmd(
    port: Annotated[int, typer.Option(
        help="Port to serve /metrics on (9187 is postgres_exporter's).")] = 9189,
    addr: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    dbname: DbOpt = None,
) -> None:
    """Serve /metrics over HTTP for Prometheus until stopped."""
    from donnadb.ops import metrics

    console.print(f"serving http://{addr}:{port}/metrics (Ctrl-C to stop)", highlight=False)
    metrics.serve(port, settings(), addr=addr, dbname=dbname)


@app.command("rules")
@logged("metrics rules")
def rules_cmd() -> None:
    """Print the Prometheus rules for this host's HEALTH_* and ALERT_* thresholds."""
    from donnadb.ops import alerts

    typer.echo(alerts.render_yaml(settings()), nl=False)

"""`donnactl dashboard`: the operator's page of the deployed Prometheus's figures.

Registered in main.GROUPS with an empty name, like `status`: a top-level command.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from donnadb.cli.opsrun import logged, settings
from donnadb.cli.options import JsonOpt
from donnadb.cli.output import console
from donnadb.errors import UsageError
from donnadb.ops.dashboard import DEFAULT_PORT

app = typer.Typer(no_args_is_help=True)


def _seconds(text: str) -> float:
    from donnadb.ops.dashboard import parse_range

    try:
        return parse_range(text)
    except ValueError as exc:
        raise UsageError(f"--range: {exc}") from exc


@app.command("dashboard")
@logged("dashboard")
def dashboard_cmd(
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus to read (default: PROMETHEUS_URL).")] = None,
    addr: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    range_: Annotated[str, typer.Option("--range", help="Time shown: 90s, 15m, 1h, 2d.")]
    = "1h",
    once: Annotated[Path | None, typer.Option(
        help="Write the page to this file once and exit.")] = None,
    json: JsonOpt = False,
) -> None:
    """Serve the dashboard page of Prometheus's figures until stopped.

    Throughput, statement latency, connections, PgBouncer waits, replication lag, WAL
    and backup age, disk, locks and the top statements. `--once FILE` writes the page
    once, `--json` prints its data; exit 1 when Prometheus does not answer.
    """
    from donnadb.config import load_settings
    from donnadb.dal.fileio import write_atomic
    from donnadb.ops import dashboard, dashboard_html
    from donnadb.ops.prometheus import Prometheus, PrometheusError

    s = settings() if prometheus is None else load_settings(prometheus_url=prometheus)
    client, seconds = Prometheus(s.prometheus_url), _seconds(range_)
    if json or once:
        snap = dashboard.snapshot(client, s.db_name, seconds)
        if json:
            typer.echo(jsonlib.dumps(snap.as_json(), indent=2))
        if once:
            # The old page stays whole if the disk is full.
            write_atomic(once, dashboard_html.page(snap).encode("utf-8"), mode=0o644)
        return

    def page() -> tuple[int, str]:
        try:
            return 200, dashboard_html.page(dashboard.snapshot(client, s.db_name, seconds))
        except PrometheusError as exc:
            return 503, dashboard_html.error_page(str(exc))

    console.print(f"serving http://{addr}:{port}/ from {s.prometheus_url} (Ctrl-C to stop)",
                  highlight=False)
    dashboard.serve(page, addr, port)

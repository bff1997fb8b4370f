"""The operator's dashboard: its panels as data, what Prometheus holds for them, and
a small HTTP server of the page (``donnactl dashboard``; the page is built by
:mod:`donnadb.ops.dashboard_html`).

The panels read the series of the deployed exporters (docs/monitoring.md, "Scrape
jobs"): postgres_exporter's ``pg_*`` (job ``postgres``; ``pg_stat_statements_*`` from
its custom query), node_exporter's filesystems and the ``donnadb_*`` textfile (job
``node``), and the recording rules of monitoring/alerts.yml.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from donnadb.ops.prometheus import Prometheus, QueryRefused

log = logging.getLogger(__name__)

#: `donnactl dashboard`'s port. Taken nearby: Prometheus 9090, Alertmanager 9093,
#: node_exporter 9100, postgres_exporter 9187, pgbouncer_exporter 9127.
DEFAULT_PORT = 9188
#: Samples a line chart asks for across its range (the step follows from it).
CHART_SAMPLES = 240
TOP_STATEMENTS = 10


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel; ``legend`` names each of its series, with
    ``{label}`` replaced by the series' label. ``drawn=False``: a limit, named in the
    legend and not drawn (it would flatten the chart)."""

    expr: str
    legend: str
    drawn: bool = True


#: A line computed here from what Prometheus holds: (client, start, end, step) -> samples.
Derive = Callable[[Prometheus, float, float, float], list[tuple[float, float]]]


@dataclass(frozen=True)
class Panel:
    """``kind`` "line" (a chart over the range) or "table" (the top statements now);
    ``unit`` "ops", "seconds", "ratio" or "count"; ``empty`` is shown without data;
    ``derived``: (legend, function) of lines PromQL cannot express."""

    key: str
    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "line"
    empty: str = "no data"
    derived: tuple[tuple[str, Derive], ...] = ()


def weighted_quantile(values: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of (value, weight) pairs: the least value whose share of the
    total weight, with every smaller value's, reaches ``q``."""
    total = sum(weight for _, weight in values)
    if total <= 0:
        return None
    seen = 0.0
    for value, weight in sorted(values):
        seen += weight
        if seen >= q * total:
            return value
    return max(value for value, _ in values)


def statement_p95(client: Prometheus, start: float, end: float,
                  step: float) -> list[tuple[float, float]]:
    """p95 statement latency, estimated from pg_stat_statements' deltas: each call of
    the last minute counted at its statement's mean over that minute (the view keeps a
    mean per statement, not a distribution, so a statement whose own calls vary widely
    makes this read low)."""
    def by_statement(expr: str) -> dict[tuple[str, float], float]:
        return {(s.labels.get("queryid", ""), t): v
                for s in client.query_range(expr, start, end, step) for t, v in s.samples}

    calls = by_statement("sum by (queryid) (rate(pg_stat_statements_calls[1m]))")
    spent = by_statement("sum by (queryid) (rate(pg_stat_statements_exec_seconds[1m]))")
    at: dict[float, list[tuple[float, float]]] = {}
    for (queryid, t), rate in calls.items():
        if rate > 0 and (queryid, t) in spent:
            at.setdefault(t, []).append((spent[queryid, t] / rate, rate))
    return [(t, p95) for t, pairs in sorted(at.items())
            if (p95 := weighted_quantile(pairs, 0.95)) is not None]


def panels(db_name: str) -> list[Panel]:
    """Every panel, in page order, for the application database ``db_name``."""
    db = f'datname="{_quoted(db_name)}"'
    return [
        Panel("throughput", "Transactions per second", "ops", (
            Query(f"sum(rate(pg_stat_database_xact_commit{{{db}}}[1m]))", "commits"),
            Query(f"sum(rate(pg_stat_database_xact_rollback{{{db}}}[1m]))", "rollbacks"))),
        Panel("latency", "Statement latency", "seconds", (
            Query("sum(rate(pg_stat_statements_exec_seconds[1m])) / "
                  "sum(rate(pg_stat_statements_calls[1m]))", "mean"),),
            derived=(("p95 (estimate)", statement_p95),)),
        Panel("connections", "Connections", "count", (
            Query(f"sum by (state) (pg_stat_activity_count{{{db}, "
                  'state=~"active|idle|idle in transaction.*"})', "{state}"),
            Query("max(pg_settings_max_connections)", "max_connections", drawn=False))),
        Panel("pgbouncer", "PgBouncer: clients waiting", "count", (
            Query("sum(donnadb_pgbouncer_cl_waiting)", "waiting"),
            Query("max(donnadb_pgbouncer_maxwait)", "oldest wait (s)"))),
        Panel("replication", "Replication lag", "seconds", (
            Query("max(donnadb_replication_lag_seconds)", "replay lag"),), empty="no replicas"),
        Panel("backups", "WAL archiving and backup age", "seconds", (
            Query("max(donnadb_wal_archive_lag_seconds)", "WAL archive lag"),
            Query("max(donnadb_backup_age_seconds)", "logical backup age"),
            Query("max by (repo) (donnadb_physical_backup_age_seconds)",
                  "physical backup age (repo {repo})"))),
        Panel("disk", "Free disk (data and WAL volumes)", "ratio", (
            Query("volume:node_filesystem_avail:ratio", "{volume} {mountpoint}"),)),
        Panel("locks", "Locks held", "count", (
            Query(f"sum by (mode) (pg_locks_count{{{db}}})", "{mode}"),)),
        Panel("statements", "Top statements by time spent (last 5 min)", "seconds", (
            Query(f"topk({TOP_STATEMENTS}, sum by (queryid, query) "
                  "(rate(pg_stat_statements_exec_seconds[5m])))", "time"),
            Query("sum by (queryid, query) (rate(pg_stat_statements_calls[5m]))", "calls")),
            kind="table"),
    ]


def _quoted(value: str) -> str:
    """``value`` inside a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass
class Line:
    name: str
    samples: list[tuple[float, float]]
    drawn: bool = True


@dataclass
class Statement:
    queryid: str
    query: str
    seconds_per_second: float
    calls_per_second: float

    @property
    def mean_seconds(self) -> float | None:
        return self.seconds_per_second / self.calls_per_second \
            if self.calls_per_second else None


@dataclass
class PanelData:
    """A panel and what Prometheus held for it; ``error``: a query it refused."""

    panel: Panel
    lines: list[Line] = field(default_factory=list)
    rows: list[Statement] = field(default_factory=list)
    error: str | None = None

    @property
    def points(self) -> int:
        """Samples drawn (a table: its rows); 0 shows the panel's ``empty`` text."""
        return len(self.rows) + sum(len(line.samples) for line in self.lines)

    def as_json(self) -> dict:
        return {"panel": self.panel.key, "title": self.panel.title, "unit": self.panel.unit,
                "kind": self.panel.kind, "points": self.points, "error": self.error,
                "series": [{"name": ln.name, "samples": ln.samples} for ln in self.lines],
                "rows": [{**vars(r), "mean_seconds": r.mean_seconds} for r in self.rows]}


@dataclass
class Snapshot:
    """The whole page's data: every panel over ``start``..``end`` from ``source``."""

    source: str
    db_name: str
    start: float
    end: float
    panels: list[PanelData]

    def as_json(self) -> dict:
        return {"prometheus": self.source, "db_name": self.db_name, "start": self.start,
                "end": self.end, "panels": [p.as_json() for p in self.panels]}


def legend(template: str, labels: dict[str, str]) -> str:
    """``template`` with each ``{label}`` replaced by the series' label value."""
    for name, value in labels.items():
        template = template.replace("{" + name + "}", value)
    return template


def _lines(client: Prometheus, panel: Panel, start: float, end: float) -> list[Line]:
    step = max(1.0, round((end - start) / CHART_SAMPLES))
    lines = []
    for q in panel.queries:
        for series in client.query_range(q.expr, start, end, step):
            lines.append(Line(legend(q.legend, series.labels), series.samples, q.drawn))
    for name, derive in panel.derived:
        samples = derive(client, start, end, step)
        if samples:
            lines.append(Line(name, samples))
    return lines


def _rows(client: Prometheus, panel: Panel, end: float) -> list[Statement]:
    spent, calls = (client.query(q.expr, at=end) for q in panel.queries)
    per_id = {s.labels.get("queryid", ""): s.samples[0][1] for s in calls}
    rows = [Statement(s.labels.get("queryid", ""), " ".join(s.labels.get("query", "").split()),
                      s.samples[0][1], per_id.get(s.labels.get("queryid", ""), 0.0))
            for s in spent]
    return sorted(rows, key=lambda r: r.seconds_per_second, reverse=True)


def _panel_data(client: Prometheus, panel: Panel, start: float, end: float) -> PanelData:
    data = PanelData(panel)
    try:
        if panel.kind == "table":
            data.rows = _rows(client, panel, end)
        else:
            data.lines = _lines(client, panel, start, end)
    except QueryRefused as exc:  # the panel shows it; no answer at all fails the page
        data.error = str(exc)
    return data


def snapshot(client: Prometheus, db_name: str, range_seconds: float,
             now: float | None = None) -> Snapshot:
    """Every panel's data over the last ``range_seconds``.

    :raises PrometheusError: Prometheus did not answer.
    """
    end = time.time() if now is None else now
    start = end - range_seconds
    return Snapshot(client.url, db_name, start, end,
                    [_panel_data(client, p, start, end) for p in panels(db_name)])


def parse_range(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` -> seconds.

    :raises ValueError: not a positive number followed by s, m, h or d.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise ValueError(f"{text!r} is not a range like 90s, 15m, 1h or 2d")
    return int(number) * units[unit]


def serve(page: Callable[[], tuple[int, str]], addr: str, port: int) -> None:
    """Serve ``page()`` (status, HTML) at ``/`` on ``addr:port`` until interrupted."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            status, html = page()
            body = html.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.info("dashboard request: " + format, *args)

    with ThreadingHTTPServer((addr, port), Handler) as server:
        server.serve_forever()


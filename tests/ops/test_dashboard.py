"""The dashboard against a real Prometheus scraping real exporters of a throwaway cluster
under a short load, read by the real `donnactl dashboard` and a headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from donnadb.ops import dashboard, dashboard_html
from donnadb.ops.dashboard import Line, Panel, PanelData, Query, Snapshot, Statement
from donnadb.ops.prometheus import Prometheus, PrometheusError, QueryRefused
from donnadb.provision import monitoring
from tests.ops.conftest import DONNACTL
from tests.ops.promstack import drive_load, free_port, monitoring_stack, psql
from tests.support import with_systemd

#: What the metrics timer would write for node_exporter's textfile collector on a
#: single host with PgBouncer and backups (the test cluster has neither).
TEXTFILE = """\
donnadb_volume_info{volume="data",mountpoint="/"} 1
donnadb_volume_info{volume="wal",mountpoint="/"} 1
donnadb_pgbouncer_cl_waiting{database="donna",user="donna_app"} 2
donnadb_pgbouncer_maxwait{database="donna",user="donna_app"} 0.4
donnadb_backup_age_seconds 5400
donnadb_wal_archive_lag_seconds 0
donnadb_physical_backup_age_seconds{repo="1"} 9000
"""
HOSTILE = "<script>alert(1)</script>"
#: Panels the load test fills; replication stays empty on one host.
FILLED = {"throughput", "latency", "connections", "pgbouncer", "backups", "disk", "locks",
          "statements"}
CHROMIUM_FIX = "apt-get install -y --no-install-recommends chromium-headless-shell"


@pytest.fixture(scope="module")
def stack():
    """The stack after a few hundred transactions and a hostile statement, each batch a
    few scrapes apart so every rate has samples."""
    with monitoring_stack(TEXTFILE) as st:
        for _ in range(3):
            drive_load(st.pg_port, 200)
            # A column alias survives pg_stat_statements' normalisation (constants do
            # not), and the sleep ranks the statement among the top ones.
            psql(st.pg_port, f'SELECT pg_sleep(0.02) AS "{HOSTILE}";' * 10)
            time.sleep(2)
        _wait_for_rates(Prometheus(st.prometheus_url))
        yield st


#: What the tests read, each a query that has a result once Prometheus holds it.
ARRIVED = ('rate(pg_stat_database_xact_rollback{datname="donna"}[1m]) > 0',
           'rate(pg_stat_statements_calls{query=~".*<script>.*"}[5m]) > 0',
           "volume:node_filesystem_avail:ratio")


def _wait_for_rates(client: Prometheus) -> None:
    """A busy machine may time out a scrape or two: wait until the figures are in."""
    deadline = time.monotonic() + 60
    for expr in ARRIVED:
        while not client.query(expr):
            assert time.monotonic() < deadline, \
                f"{expr} never arrived; up: {client.query('up')}"
            time.sleep(1)


def _points(html: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(
        r'data-panel="([^"]+)"[^>]*data-points="(\d+)"', html)}


def test_every_panel_has_data_from_the_real_exporters(stack):
    snap = dashboard.snapshot(Prometheus(stack.prometheus_url), "donna", 300)
    by_key = {p.panel.key: p for p in snap.panels}
    assert {k for k, p in by_key.items() if p.points > 0} == FILLED, \
        {k: (p.points, p.error) for k, p in by_key.items()}
    assert not any(p.error for p in snap.panels)
    throughput = {ln.name: ln for ln in by_key["throughput"].lines}
    assert max(v for _, v in throughput["commits"].samples) > 0
    assert max(v for _, v in throughput["rollbacks"].samples) > 0
    assert {ln.name for ln in by_key["backups"].lines} == {
        "WAL archive lag", "logical backup age", "physical backup age (repo 1)"}
    assert any("dash_load" in row.query for row in by_key["statements"].rows)
    # The p95 estimate (computed from the statements' calls and seconds) is drawn.
    latency = {ln.name: ln for ln in by_key["latency"].lines}
    p95 = [v for _, v in latency["p95 (estimate)"].samples]
    assert p95 and max(p95) > 0
    html = dashboard_html.page(snap)
    assert _points(html)["replication"] == 0 and "no replicas" in html


def test_a_hostile_statement_text_is_shown_escaped(stack):
    snap = dashboard.snapshot(Prometheus(stack.prometheus_url), "donna", 300)
    rows = next(p.rows for p in snap.panels if p.panel.key == "statements")
    assert any(HOSTILE in row.query for row in rows)  # the attack reached the page's data
    html = dashboard_html.page(snap)
    assert "<script" not in html
    assert "&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in html


def test_once_and_json_write_the_page_and_its_data(stack, tmp_path):
    out = tmp_path / "dashboard.html"
    done = subprocess.run([DONNACTL, "dashboard", "--prometheus", stack.prometheus_url,
                           "--range", "5m", "--once", str(out), "--json"],
                          capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {p["panel"] for p in data["panels"] if p["points"]} == FILLED
    assert _points(out.read_text()).keys() == {p["panel"] for p in data["panels"]}


def test_an_unanswering_prometheus_is_one_line_naming_it(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([DONNACTL, "dashboard", "--prometheus", url, "--once",
                           str(tmp_path / "x.html")], capture_output=True, text=True,
                          timeout=60, env=_env(tmp_path))
    assert done.returncode == 1
    assert url in done.stderr and "PROMETHEUS_URL" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.html").exists()


def test_a_query_prometheus_refuses_is_its_own_error(stack):
    with pytest.raises(QueryRefused, match="refused the query 'sum\\('"):
        Prometheus(stack.prometheus_url).query("sum(")
    with pytest.raises(PrometheusError):
        Prometheus(f"http://127.0.0.1:{free_port()}", timeout=2).query("up")


def test_the_served_page_in_a_real_browser(stack, tmp_path):
    """The page `donnactl dashboard` serves, loaded by headless Chromium: the DOM's
    panels have data, and the screenshot is a real picture."""
    browser = _chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen([DONNACTL, "dashboard", "--prometheus",
                                   stack.prometheus_url, "--port", str(port),
                                   "--range", "5m"], stdout=log, stderr=subprocess.STDOUT,
                                  env=_env(tmp_path))
    try:
        _wait_http(url, server, tmp_path / "serve.log")
        dom = _browse(browser, tmp_path, "--dump-dom", url).stdout
        png = tmp_path / "dashboard.png"
        _browse(browser, tmp_path, f"--screenshot={png}", url)
    finally:
        server.terminate()
        server.wait(timeout=30)
    points = _points(dom)
    assert {k for k, n in points.items() if n > 0} == FILLED, points
    assert "no replicas" in dom and "<svg" in dom
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000


def test_page_escapes_every_text_it_is_given():
    panel = Panel("locks", f"Locks {HOSTILE}", "count", (Query("x", "{mode}"),))
    table = Panel("statements", "Top", "seconds", (Query("a", "a"), Query("b", "b")),
                  kind="table")
    snap = Snapshot(f"http://p/{HOSTILE}", HOSTILE, 0.0, 60.0, [
        PanelData(panel, lines=[Line(HOSTILE, [(0.0, 1.0), (60.0, 2.0)])]),
        PanelData(table, rows=[Statement(HOSTILE, HOSTILE, 0.5, 10.0)]),
        PanelData(panel, error=HOSTILE)])
    html = dashboard_html.page(snap)
    assert "<script" not in html and html.count("&lt;script&gt;") == 8  # the title twice


def test_the_p95_estimate_weighs_each_statement_by_its_calls():
    # 90 calls at 1 ms, 10 calls at 200 ms: the 95th call is a slow one.
    assert dashboard.weighted_quantile([(0.001, 90.0), (0.2, 10.0)], 0.95) == 0.2
    # 99 calls at 1 ms, 1 at 2 s: p95 is fast, the mean (21 ms) would not say so.
    assert dashboard.weighted_quantile([(2.0, 1.0), (0.001, 99.0)], 0.95) == 0.001
    assert dashboard.weighted_quantile([], 0.95) is None
    assert dashboard.weighted_quantile([(0.5, 0.0)], 0.95) is None


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (12.34, "ops", "12.3/s"), (0.000034, "seconds", "34 µs"), (0.0123, "seconds", "12.3 ms"),
    (5400, "seconds", "1.5 h"), (0.171, "ratio", "17 %"), (1500, "count", "1.5k"),
    (0, "seconds", "0 s")])
def test_values_read_well(value, unit, shown):
    assert dashboard_html.fmt(value, unit) == shown


def test_range_parses_and_refuses():
    assert dashboard.parse_range("90s") == 90 and dashboard.parse_range("2h") == 7200
    for bad in ("", "h", "0m", "1.5h", "5x", "-1m"):
        with pytest.raises(ValueError, match="range like"):
            dashboard.parse_range(bad)


def test_the_database_name_is_quoted_in_promql():
    exprs = [q.expr for p in dashboard.panels('we"ird\\') for q in p.queries]
    assert any('datname="we\\"ird\\\\"' in e for e in exprs)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OPS_LOG_FILE": str(tmp_path / "donnactl.jsonl")}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    if found is None:
        pytest.fail(f"no headless Chromium: {CHROMIUM_FIX} (make test installs it)")
    return found


def _browse(browser: str, tmp_path: Path, action: str, url: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on ``url``, offline but for 127.0.0.1."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
         "--window-size=1400,1800", action, url],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path)


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
                assert answer.status == 200
                return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)


@pytest.mark.deploy
@with_systemd
def test_the_deployed_prometheus_fills_the_dashboard(deployed, deploy_settings):
    """On the deployed host, after the suite's own traffic (its load test among it): the
    page `donnactl dashboard` shows by default reads the deployed Prometheus and every
    panel a single host can fill has data."""
    done = subprocess.run([DONNACTL, "dashboard", "--range", "30m", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["prometheus"] == (f"http://{monitoring.listen_address(deploy_settings)}:"
                                  f"{monitoring.PROMETHEUS_PORT}")
    points = {p["panel"]: p["points"] for p in data["panels"]}
    filled = {"throughput", "latency", "connections", "pgbouncer", "backups", "disk", "locks",
              "statements"}
    assert {k for k, n in points.items() if n > 0} >= filled, points

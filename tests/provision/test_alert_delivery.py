"""An alert end to end on the deployed host: PostgreSQL stops, the deployed
postgres_exporter reports ``pg_up 0``, Prometheus fires DonnaPostgresDown after its
``for:``, Alertmanager delivers it to a webhook, and the resolution follows once
PostgreSQL is back.

The deploy's own settings files are rendered again (the same functions) with this
test's webhook and short scrape/evaluation and grouping intervals, so the test waits
the rule's ``for:`` and not a production ``group_interval``; the originals are put back
and the daemons reloaded afterwards.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from donnadb.provision import monitoring
from tests.support import with_systemd

ALERT = "DonnaPostgresDown"
#: What the pipeline may add to the rule's ``for:`` (2 s scrapes and evaluations, 1 s
#: group_wait, 5 s group_interval, a loaded CI machine).
BOUND_S = 45.0
PROMETHEUS_YML = f"{monitoring.CONFIG_DIR}/prometheus.yml"
ALERTMANAGER_YML = f"{monitoring.CONFIG_DIR}/alertmanager.yml"


class Webhook:
    """Alertmanager's webhook messages, as they arrive."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.arrived = threading.Condition()
        self.url = ""

    def wait_for(self, status: str, timeout: float) -> dict:
        """The first message with an ``ALERT`` alert in ``status``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for message in self.messages:
                    if any(a["labels"].get("alertname") == ALERT and a["status"] == status
                           for a in message["alerts"]):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {status} {ALERT} in {timeout:.0f} s; "
                                         f"received: {json.dumps(self.messages)[:2000]}")
                self.arrived.wait(left)


@contextmanager
def webhook_receiver():
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hook.arrived:
                hook.messages.append(json.loads(body))
                hook.arrived.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def _prometheus_interval(base: str) -> str:
    with urllib.request.urlopen(f"{base}/api/v1/status/config", timeout=10) as answer:  # noqa: S310
        config = yaml.safe_load(json.loads(answer.read())["data"]["yaml"])
    return config["global"]["scrape_interval"]


def _reload(base: str, interval: str) -> None:
    subprocess.run(["systemctl", "reload", "prometheus", "prometheus-alertmanager"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while _prometheus_interval(base) != interval:
        assert time.monotonic() < deadline, "Prometheus did not reload its settings"
        time.sleep(0.5)


@contextmanager
def pipeline_to(settings, url: str):
    """The deployed Prometheus and Alertmanager, sending to ``url``, quickly."""
    base = f"http://{monitoring.listen_address(settings)}:{monitoring.PROMETHEUS_PORT}"
    saved = {path: Path(path).read_bytes() for path in (PROMETHEUS_YML, ALERTMANAGER_YML)}
    Path(PROMETHEUS_YML).write_text(monitoring.prometheus_config(settings, interval="2s"))
    Path(ALERTMANAGER_YML).write_text(monitoring.alertmanager_config(
        url, group_wait="1s", group_interval="5s"))
    try:
        _reload(base, "2s")
        yield
    finally:
        for path, data in saved.items():
            Path(path).write_bytes(data)
        _reload(base, yaml.safe_load(saved[PROMETHEUS_YML])["global"]["scrape_interval"])


def _rule_for_seconds(alert: str) -> float:
    rules = yaml.safe_load(monitoring.RULES_SOURCE.read_text())
    wait = next(r["for"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert)
    return {"s": 1, "m": 60, "h": 3600}[wait[-1]] * float(wait[:-1])


def _postgres(action: str, settings) -> None:
    unit = f"postgresql@{settings.pg_version}-{settings.pg_cluster}"
    subprocess.run(["systemctl", action, unit], check=True, capture_output=True, timeout=120)


@pytest.mark.deploy
@with_systemd
def test_postgres_down_reaches_the_webhook_within_its_for_and_resolves(
        deployed, deploy_settings):
    with webhook_receiver() as hook, pipeline_to(deploy_settings, hook.url):
        time.sleep(5)  # a few evaluations with the server up: nothing of ours fires
        assert not [m for m in hook.messages
                    if any(a["labels"].get("alertname") == ALERT for a in m["alerts"])]
        stopped = time.monotonic()
        _postgres("stop", deploy_settings)
        try:
            fired = hook.wait_for("firing", _rule_for_seconds(ALERT) + BOUND_S)
            fired_after = time.monotonic() - stopped
        finally:
            _postgres("start", deploy_settings)
            # The metrics timer may have written donnadb_up 0 meanwhile: leave a fresh file.
            subprocess.run(["systemctl", "start", "donna-ops-metrics.service"],
                           capture_output=True, timeout=120)
        started = time.monotonic()
        resolved = hook.wait_for("resolved", BOUND_S)
    alert = next(a for a in fired["alerts"] if a["labels"]["alertname"] == ALERT)
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "postgres"
    assert alert["annotations"]["runbook_url"].endswith("#donnapostgresdown")
    # Not before the rule's for: (the server was down that long when it fired).
    assert fired_after >= _rule_for_seconds(ALERT)
    assert resolved["status"] == "resolved" or any(
        a["status"] == "resolved" for a in resolved["alerts"])
    assert time.monotonic() - started < BOUND_S + 5

"""An application host in dual-write exports its copy figures (the fleet's app host has
logs in dual-write): node_exporter on its own address, TLS only; the metrics job as
donna-ops, which never reads the database; the database host's Prometheus (the fleet's
monitor: it has no monitor host) scrapes it in job ``node``, labelled ``role="app"``,
and holds a copy PostgreSQL missed on the app host, with its entity; its
DonnaDualWriteCopiesFailing alert fires."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.fleet.conftest import Fleet
from tests.fleet.test_app import run_script
from tests.support import wait_for

TEXTFILE = "/var/lib/prometheus/node-exporter/donnadb.prom"
#: The database host's Prometheus, reached from this machine (one shared network).
PROMETHEUS = "http://127.0.0.11:9090"
#: A port where nothing listens on the database host: every copy to PostgreSQL fails.
DEAD_PORT = "1"


def query(expr: str) -> list[dict]:
    url = f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the fleet's loopback
        return json.loads(answer.read())["data"]["result"]


def textfile_samples(fleet: Fleet) -> dict[str, float]:
    lines = fleet.app.run(f"cat {TEXTFILE}").stdout.splitlines()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def test_node_exporter_listens_on_the_app_hosts_own_address_tls_only(fleet: Fleet):
    listening = fleet.app.run("ss -Hltnp").stdout.split("\n")
    ports = {line.split()[3] for line in listening if "users:" in line}
    assert f"{fleet.app.address}:9100" in ports
    assert [p for p in ports if p.endswith(":9100")] == [f"{fleet.app.address}:9100"]
    # Plain HTTP gets no metrics (the TLS server answers 400).
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{fleet.app.address}:9100/metrics", timeout=10)  # noqa: S310


def test_the_metrics_job_runs_as_the_ops_user_and_writes_host_figures_only(fleet: Fleet):
    assert fleet.app.run("systemctl is-enabled donna-ops-metrics.timer").stdout.strip() == \
        "enabled"
    shown = fleet.app.run("systemctl show -p User -p ExecStart donna-ops-metrics.service").stdout
    assert "User=donna-ops" in shown and "--host-only" in shown, shown
    fleet.app.start_unit("donna-ops-metrics.service", timeout=120)
    assert fleet.app.run(f"stat -c '%U %a' {TEXTFILE}").stdout.split() == ["donna-ops", "644"]
    samples = textfile_samples(fleet)
    assert samples['donnadb_storage_phase{entity="logs",phase="dual"}'] == 1
    # No database is read: no donnadb_up (DonnaDatabaseDown keys on it) and no credential.
    assert not [name for name in samples if name.startswith("donnadb_up")]
    assert fleet.app.run("ls /etc/donnadb/pgpass.d").stdout.split() == ["donna-app"]


def test_a_copy_the_app_host_failed_reaches_prometheus_with_its_entity(fleet: Fleet):
    marker = f"fleet-mirror-{uuid.uuid4().hex[:10]}"
    made = run_script(fleet.app, "mirror_failure.py", marker,
                      env=f"PGBOUNCER_PORT={DEAD_PORT} DB_CONNECT_TIMEOUT=2 "
                          f"DATA_DIR=/var/tmp/{marker}")
    assert made["phases"]["logs"] == "dual"
    assert (made["copies"], made["failures"]) == (1, 1), made
    fleet.app.start_unit("donna-ops-metrics.service", timeout=120)
    samples = textfile_samples(fleet)
    failures = samples['donnadb_mirror_failures_total{entity="logs"}']
    assert failures >= 1
    assert samples['donnadb_mirror_copy_seconds_count{entity="logs"}'] >= 1
    instance = f"{fleet.app.address}:9100"

    def scraped():
        found = query('donnadb_mirror_failures_total{entity="logs",role="app"}')
        return [s for s in found if s["metric"]["instance"] == instance
                and float(s["value"][1]) == failures]

    (series,) = wait_for("the app host's failed copy in Prometheus", scraped, timeout=150,
                         interval=3)
    assert series["metric"]["job"] == "node"
    up = query(f'up{{job="node",instance="{instance}"}}')
    assert [s["value"][1] for s in up] == ["1"]
    phase = query(f'donnadb_storage_phase{{instance="{instance}",entity="logs",phase="dual"}}')
    assert [s["value"][1] for s in phase] == ["1"]

    # Five more writes missed (one copy tried, four skipped while PostgreSQL is down):
    # once Prometheus sees the counters move, the alert fires, naming host and entity.
    again = run_script(fleet.app, "mirror_failure.py", f"{marker}-again", "5",
                       env=f"PGBOUNCER_PORT={DEAD_PORT} DB_CONNECT_TIMEOUT=2 "
                           f"DATA_DIR=/var/tmp/{marker}")
    assert (again["copies"], again["failures"]) == (1, 5), again
    fleet.app.start_unit("donna-ops-metrics.service", timeout=120)

    def firing():
        return query('ALERTS{alertname="DonnaDualWriteCopiesFailing",alertstate="firing",'
                     f'instance="{instance}",entity="logs"}}')

    alerts = wait_for("DonnaDualWriteCopiesFailing firing for the app host", firing,
                      timeout=150, interval=3)
    assert {a["metric"]["role"] for a in alerts} == {"app"}

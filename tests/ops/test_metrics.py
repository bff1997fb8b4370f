"""`donnactl metrics` and the alert rules in monitoring/alerts.yml."""

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from donnadb.config import Settings
from donnadb.ops import alerts, health, metrics
from tests.ops.conftest import DONNACTL

RULES_FILE = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"


def _samples(text: str) -> dict[str, float]:
    return {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_exposition_has_the_status_figures(settings):
    samples = _samples(metrics.exposition(settings))
    assert samples["donnadb_up"] == 1
    for name in ("donnadb_connections_used_pct", "donnadb_partitions_ahead",
                 "donnadb_xid_wraparound_pct", "donnadb_longest_query_seconds"):
        assert name in samples
    assert any(k.startswith("donnadb_health_status[('check', 'connections')]") for k in samples)


def test_database_down_exports_up_0(cli):
    done = cli("metrics", env={"DB_PORT": "1"})
    assert done.returncode == 0
    samples = _samples(done.stdout)
    assert samples["donnadb_up"] == 0 and "donnadb_connections_used_pct" not in samples


def test_textfile_is_written_atomically(cli, tmp_path):
    target = tmp_path / "donnadb.prom"
    done = cli("metrics", "textfile", str(target))
    assert done.returncode == 0, done.stderr
    assert _samples(target.read_text())["donnadb_up"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_serve_answers_scrapes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([DONNACTL, "metrics", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "OPS_LOG_FILE": str(tmp_path / "l")})
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None, "metrics server did not start"
        assert _samples(body)["donnadb_up"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rules_file_is_the_rendering_of_the_defaults():
    assert RULES_FILE.read_text() == alerts.render_yaml(Settings.model_construct())


def test_every_critical_threshold_has_a_rule_with_a_runbook_section():
    doc = yaml.safe_load(RULES_FILE.read_text())
    rules = doc["groups"][0]["rules"]
    checks = {r["labels"]["check"] for r in rules}
    # A failed restore drill is CRITICAL at once: a rule without a threshold.
    assert checks == (set(health.THRESHOLDS) | set(alerts.FLAGS)
                      | {"database", "backup_drill_failed"})
    runbook = (RULES_FILE.parents[1] / "docs" / "runbook.md").read_text().lower()
    for rule in rules:
        assert rule["labels"]["severity"] == "critical"
        assert f"### {rule['alert'].lower()}" in runbook, rule["alert"]


def test_rules_fire_exactly_when_health_says_critical(settings):
    """Evaluate each rule's expression against a real scrape, first with thresholds a
    healthy database cannot trip (nothing fires), then with every CRITICAL threshold set
    so it must trip (every rule but DatabaseDown fires, as health's checks do)."""
    text = metrics.exposition(settings)
    calm = settings.model_copy(update={
        "health_connections_crit_pct": 100.0, "health_cache_hit_crit_pct": 0.0,
        "health_long_query_crit_seconds": 1e9, "health_long_xact_crit_seconds": 1e9,
        "health_backup_crit_age_hours": 1e9, "health_partitions_ahead_crit": 0,
        "health_bloat_crit_pct": 101.0, "health_wraparound_crit_pct": 100.0,
        "health_tls_expiry_crit_days": 0.0, "health_archive_lag_crit_seconds": 1e9,
        "health_backup_drill_crit_age_hours": 1e9})
    fired = [r["alert"] for r in alerts.render_rules(calm)["groups"][0]["rules"]
             if alerts.evaluate(r["expr"], text)]
    assert fired == []
    tripping = settings.model_copy(update={
        "health_connections_crit_pct": 0.0, "health_cache_hit_crit_pct": 100.0,
        "health_long_query_crit_seconds": 0.0, "health_long_xact_crit_seconds": 0.0,
        "health_replication_lag_crit_seconds": 0.0, "health_backup_crit_age_hours": 0.0,
        "health_partitions_ahead_crit": 1000, "health_bloat_crit_pct": 0.0,
        "health_wraparound_crit_pct": 0.0, "health_tls_expiry_crit_days": 1e9,
        "health_archive_lag_crit_seconds": 0.0, "health_backup_drill_crit_age_hours": 0.0})
    fired = {r["labels"]["check"] for r in alerts.render_rules(tripping)["groups"][0]["rules"]
             if alerts.evaluate(r["expr"], text)}
    # Replication lag and backup age are absent on a primary without replicas or backups.
    samples = _samples(text)
    expected = set(health.THRESHOLDS) - {"replication_lag"}
    if "donnadb_backup_age_hours" not in samples:
        expected.discard("backup_age")
    if "donnadb_tls_cert_days_left" not in samples:
        expected.discard("tls_expiry")
    # Archiving figures exist with pgBackRest; a repository's age once a backup is known.
    for check, metric in (("archive_lag", "donnadb_wal_archive_lag_seconds"),
                          ("physical_backup_age", "donnadb_physical_backup_age_hours")):
        if not any(name.startswith(metric) for name in samples):
            expected.discard(check)
    # Drill gauges exist once a drill ran here; a failed one also fires its own rule.
    if not any(k.startswith("donnadb_backup_drill_age_seconds") for k in samples):
        expected.discard("backup_drill")
    if any(k.startswith("donnadb_backup_drill_failed") and v == 1 for k, v in samples.items()):
        expected.add("backup_drill_failed")
    assert fired == expected


def test_rule_expressions_must_stay_simple():
    with pytest.raises(ValueError, match="unsupported alert expression"):
        alerts.evaluate("rate(donnadb_up[5m]) > 0", "donnadb_up 1\n")
    assert alerts.evaluate("donnadb_up == 0", "donnadb_up 0\n")


def test_pgbouncer_gauges_only_when_configured(settings):
    assert "donnadb_pgbouncer_up" not in _samples(metrics.exposition(
        settings.model_copy(update={"pgbouncer_port": None})))
    down = _samples(metrics.exposition(settings.model_copy(update={"pgbouncer_port": 1})))
    assert down["donnadb_pgbouncer_up"] == 0 and down["donnadb_up"] == 1

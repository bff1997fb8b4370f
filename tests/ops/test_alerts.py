"""The alert rules (donnadb.ops.alerts): monitoring/ holds the rendering of the default
settings, promtool accepts it and its unit tests pass (one file per rule group), every
alert has both severities tested, a runbook section and a row in docs/monitoring.md, and
the rules on donnadb_* gauges fire exactly when `donnactl health` says CRITICAL."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from donnadb.config import Settings
from donnadb.ops import alerts, health, metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES_FILE = MONITORING / "alerts.yml"
INHIBIT_FILE = MONITORING / "alertmanager" / "inhibit.yml"
UNIT_TESTS = MONITORING / "tests"
RUNBOOK = ROOT / "docs" / "runbook.md"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
DEFAULTS = Settings.model_construct()


def _tool(name: str, package: str) -> str:
    """The path of a Prometheus tool; its absence fails (never skips) the test."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install {package} (make deploy installs it)",
                    pytrace=False)
    return path


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _unit_tests() -> dict[Path, dict]:
    return {path: yaml.safe_load(path.read_text()) for path in sorted(UNIT_TESTS.glob("*.yml"))}


def test_rules_file_is_the_rendering_of_the_defaults():
    assert RULES_FILE.read_text() == alerts.render_yaml(DEFAULTS)


def test_inhibit_file_is_the_rendering_of_inhibit_rules():
    assert INHIBIT_FILE.read_text() == alerts.render_inhibit_yaml()
    rule, = yaml.safe_load(INHIBIT_FILE.read_text())["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert rule["equal"][:2] == ["alertname", "instance"]


def test_promtool_checks_every_rules_file():
    promtool = _tool("promtool", "prometheus")
    files = sorted(str(p) for p in MONITORING.glob("*.yml"))
    assert files == [str(RULES_FILE)]
    done = _run(promtool, "check", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("group", alerts.GROUPS)
def test_promtool_unit_tests_of_each_group_pass(group):
    promtool = _tool("promtool", "prometheus")
    path = UNIT_TESTS / f"{group}.yml"
    assert path.is_file(), f"no unit tests for the donnadb-{group} rule group"
    done = _run(promtool, "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_accepts_the_inhibit_rules(tmp_path):
    amtool = _tool("amtool", "prometheus-alertmanager")
    config = {"route": {"receiver": "test"}, "receivers": [{"name": "test"}],
              "inhibit_rules": alerts.inhibit_rules()}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    done = _run(amtool, "check-config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_group_s_unit_tests_cover_its_alerts_both_ways():
    """Every (alert, severity) is expected to fire in some test of its group's file, and
    every alert is also expected silent at some time (below its threshold or its for:)."""
    tested = _unit_tests()
    for group in alerts.render_rules(DEFAULTS)["groups"]:
        path = UNIT_TESTS / f"{group['name'].removeprefix('donnadb-')}.yml"
        doc = tested[path]
        assert doc["rule_files"] == ["../alerts.yml"], path
        cases = [c for test in doc["tests"] for c in test["alert_rule_test"]]
        fired = {(c["alertname"], a["exp_labels"]["severity"])
                 for c in cases for a in c["exp_alerts"]}
        silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
        wanted = {(r["alert"], r["labels"]["severity"]) for r in group["rules"] if "alert" in r}
        assert fired == wanted, path
        assert silent == {alert for alert, _ in wanted}, path


def test_every_threshold_has_a_warning_and_a_critical_rule_of_one_name():
    by_check: dict[str, list[dict]] = {}
    for rule in alerts.alert_rules(DEFAULTS):
        by_check.setdefault(rule["labels"].get("check", ""), []).append(rule)
    for check in health.THRESHOLDS:
        rules = by_check[check]
        assert sorted(r["labels"]["severity"] for r in rules) == ["critical", "warning"], check
        assert len({r["alert"] for r in rules}) == 1, check


def test_the_thresholds_come_from_settings():
    tuned = DEFAULTS.model_copy(update={"health_connections_warn_pct": 60.0,
                                        "health_backup_crit_age_hours": 10.0,
                                        "alert_disk_free_ratio": (0.3, 0.05)})
    exprs = {(r["alert"], r["labels"]["severity"]): r["expr"] for r in alerts.alert_rules(tuned)}
    assert exprs["DonnaConnectionsNearMax", "warning"].endswith(">= 0.6")
    assert exprs["DonnaBackupTooOld", "critical"].endswith(">= 36000")
    assert exprs["DonnaDiskSpaceLow", "critical"].endswith("<= 0.05")


def test_up_rules_name_the_deploy_s_jobs():
    up = {r["expr"] for r in alerts.alert_rules(DEFAULTS) if r["alert"] == "DonnaTargetDown"}
    assert up == {f'up{{job=~"{"|".join(alerts.JOBS)}"}} == 0'}
    assert {"postgres", "node"} <= set(alerts.JOBS)


def test_every_runbook_url_points_at_a_runbook_section():
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    for rule in alerts.alert_rules(DEFAULTS):
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert base == "docs/runbook.md", rule["alert"]
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor} ({rule['alert']})"
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}


def test_the_runbook_base_url_is_a_setting():
    url = "https://git.example.org/donnadb/src/branch/main/docs/runbook.md"
    rules = alerts.alert_rules(DEFAULTS.model_copy(update={"alert_runbook_url": url}))
    assert all(r["annotations"]["runbook_url"].startswith(url + "#") for r in rules)


def test_docs_list_every_alert_with_its_severities():
    rows = [line for line in MONITORING_DOC.read_text().splitlines() if line.startswith("| ")]
    for rule in alerts.alert_rules(DEFAULTS):
        row = next((r for r in rows if f"`{rule['alert']}`" in r), None)
        assert row is not None, f"docs/monitoring.md has no row for {rule['alert']}"
        assert rule["labels"]["severity"] in row, rule["alert"]
        assert f"runbook.md#{rule['alert'].lower()}" in row, rule["alert"]


def test_critical_rules_fire_exactly_when_health_says_critical(settings):
    """Evaluate each rule on one donnadb_* gauge against a real scrape, first with
    thresholds a healthy database cannot trip (nothing fires), then with every CRITICAL
    threshold set so it must trip (every such rule fires, as health's checks do)."""
    text = metrics.exposition(settings)
    calm = settings.model_copy(update={
        "health_cache_hit_crit_pct": 0.0, "health_long_query_crit_seconds": 1e9,
        "health_backup_crit_age_hours": 1e9, "health_partitions_ahead_crit": 0,
        "health_bloat_crit_pct": 101.0, "health_wraparound_crit_pct": 100.0,
        "health_tls_expiry_crit_days": 0.0, "health_archive_lag_crit_seconds": 1e9,
        "health_backup_drill_crit_age_hours": 1e9})
    assert [r["alert"] for r in _gauge_rules(calm) if alerts.evaluate(r["expr"], text)] == []
    tripping = settings.model_copy(update={
        "health_cache_hit_crit_pct": 100.0, "health_long_query_crit_seconds": 0.0,
        "health_replication_lag_crit_seconds": 0.0, "health_backup_crit_age_hours": 0.0,
        "health_partitions_ahead_crit": 1000, "health_bloat_crit_pct": 0.0,
        "health_wraparound_crit_pct": 0.0, "health_tls_expiry_crit_days": 1e9,
        "health_archive_lag_crit_seconds": 0.0, "health_backup_drill_crit_age_hours": 0.0})
    fired = {r["labels"]["check"] for r in _gauge_rules(tripping)
             if alerts.evaluate(r["expr"], text)}
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    # Only the checks whose rule reads a donnadb_* gauge present on this host can fire.
    expected = {check for check, rule in alerts.HEALTH_RULES.items()
                if rule.series.startswith("donnadb_") and rule.series in names}
    assert fired == expected


def _gauge_rules(settings: Settings) -> list[dict]:
    """The critical threshold rules on one donnadb_* gauge (health's own figures)."""
    return [r for r in alerts.alert_rules(settings)
            if r["labels"]["severity"] == "critical" and r["labels"].get("check") in
            health.THRESHOLDS and r["expr"].startswith("donnadb_")]


def test_rule_expressions_must_stay_simple():
    with pytest.raises(ValueError, match="unsupported alert expression"):
        alerts.evaluate("rate(donnadb_up[5m]) > 0", "donnadb_up 1\n")
    assert alerts.evaluate("donnadb_up == 0", "donnadb_up 0\n")

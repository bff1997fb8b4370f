"""Monitoring as the deploy writes it: the daemons' settings, checked by the tools of
the packages the deploy installs (promtool, amtool), and, under systemd, the running
Prometheus scraping every target and holding our rules and series."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from donnadb.ops import alerts
from donnadb.provision import monitoring
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data
from tests.support import GroupData, wait_for, with_systemd


def settings(**extra):
    return load_deploy_settings(GroupData({**load_group_data(), **extra}))


def test_every_daemon_listens_on_the_hosts_own_address_never_a_wildcard():
    own = monitoring.daemon_args(settings(pg_listen_addresses="10.0.1.11"))
    assert all("--web.listen-address=10.0.1.11:" in args for args in own.values())
    assert "--cluster.listen-address= " in own["prometheus-alertmanager"] + " "
    local = monitoring.daemon_args(settings(pg_listen_addresses="localhost"))
    assert all("=127.0.0.1:" in args for args in local.values())
    wildcard = monitoring.daemon_args(settings(pg_listen_addresses="*"))
    assert all("=127.0.0.1:" in args for args in wildcard.values())


def test_node_exporter_reads_the_directory_the_metrics_timer_writes():
    default = monitoring.daemon_args(settings())["prometheus-node-exporter"]
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in default
    moved = settings(ops_env={"METRICS_TEXTFILE": "/srv/metrics/donnadb.prom"})
    assert "--collector.textfile.directory=/srv/metrics" in \
        monitoring.daemon_args(moved)["prometheus-node-exporter"]


def test_postgres_exporter_logs_in_as_the_monitor_role_over_verified_tls_with_a_passfile():
    text = monitoring.default_file("prometheus-postgres-exporter",
                                   settings(pg_listen_addresses="10.0.1.11"))
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    dsn = dict(pair.split("=", 1) for pair in env["DATA_SOURCE_NAME"].strip("'").split())
    assert dsn["user"] == "donna_monitor" and dsn["host"] == "10.0.1.11"
    assert dsn["sslmode"] == "verify-full" and dsn["sslrootcert"] == "/etc/donnadb/tls/ca.crt"
    assert env["PGPASSFILE"].strip("'") == "/etc/donnadb/pgpass.d/prometheus"
    assert "password" not in text.lower()
    assert "--web.listen-address=10.0.1.11:9187" in env["ARGS"]
    # The other packages' files carry their ARGS only.
    other = monitoring.default_file("prometheus", settings()).splitlines()
    assert [line.split("=")[0] for line in other if not line.startswith("#")] == ["ARGS"]


def test_prometheus_settings_and_rules_pass_promtool(tmp_path):
    config = yaml.safe_load(monitoring.prometheus_config(settings()))
    # Every job the rules watch (DonnaTargetDown), and nothing they do not.
    assert {job["job_name"] for job in config["scrape_configs"]} == set(alerts.JOBS)
    rules = tmp_path / "donnadb.yml"
    rules.write_text(monitoring.RULES_SOURCE.read_text())
    config["rule_files"] = [str(rules)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("webhook", [None, "https://chat.example.net/hooks/donna"])
def test_alertmanager_settings_pass_amtool(tmp_path, webhook):
    path = tmp_path / "alertmanager.yml"
    path.write_text(monitoring.alertmanager_config(webhook))
    done = subprocess.run(["amtool", "check-config", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(path.read_text())
    assert config["inhibit_rules"] == alerts.inhibit_rules()
    hooks = config["receivers"][0].get("webhook_configs", [])
    assert [h["url"] for h in hooks] == ([webhook] if webhook else [])


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our loopback
        return json.loads(answer.read())["data"]


@pytest.mark.deploy
@pytest.mark.both_hosts
def test_prometheus_holds_the_rules_of_this_hosts_thresholds(deployed):
    """The deploy writes `donnactl metrics rules` of the host (its ALERT_*/HEALTH_*
    settings), not the defaults' file; the exporter's passfile is its own, 0600."""
    rendered = subprocess.run(["donnactl", "metrics", "rules"], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    assert Path(monitoring.RULES_FILE).read_text() == rendered
    done = subprocess.run(["donnactl", "metrics", "rules"], capture_output=True, text=True,
                          check=True, timeout=60, env={**os.environ, "ALERT_DEADLOCKS": "[2, 7]"})
    assert "increase(pg_stat_database_deadlocks[10m]) >= 7" in done.stdout
    passfile = Path("/etc/donnadb/pgpass.d/prometheus")
    assert passfile.owner() == "prometheus" and stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert [line.split(":")[3] for line in passfile.read_text().splitlines()] == [
        "donna_monitor"]


@pytest.mark.deploy
@with_systemd
def test_the_deployed_prometheus_scrapes_every_target_and_holds_our_rules_and_series(
        deployed, deploy_settings):
    base = f"http://{monitoring.listen_address(deploy_settings)}:{monitoring.PROMETHEUS_PORT}"

    def all_up():
        targets = _get(f"{base}/api/v1/targets")["activeTargets"]
        up = {t["labels"]["job"]: t["health"] for t in targets}
        return up if set(up.values()) == {"up"} and len(up) == len(alerts.JOBS) else None

    assert set(wait_for("every target up", all_up)) == set(alerts.JOBS)
    groups = _get(f"{base}/api/v1/rules")["groups"]
    loaded = sum(len(g["rules"]) for g in groups)
    shipped = yaml.safe_load(Path(monitoring.RULES_SOURCE).read_text())
    assert loaded == sum(len(g["rules"]) for g in shipped["groups"])
    # The metrics timer's textfile, through node_exporter, as job "node".
    subprocess.run(["systemctl", "start", "donna-ops-metrics.service"], check=True,
                   capture_output=True, timeout=120)
    # Prometheus may still hold the file of an earlier run (an earlier test stopped the
    # server): wait for a scrape of the new one rather than read the first sample.
    query = f"{base}/api/v1/query?query={urllib.parse.quote('donnadb_up == 1')}"
    series = wait_for("donnadb_up 1 in Prometheus", lambda: _get(query)["result"])
    assert series[0]["metric"]["job"] == alerts.JOB_NODE
    # Alertmanager has its inhibit rules and Prometheus sends to it.
    managers = _get(f"{base}/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [m["url"] for m in managers] == [
        f"http://{monitoring.listen_address(deploy_settings)}:"
        f"{monitoring.ALERTMANAGER_PORT}/api/v2/alerts"]


def _inventory(addresses: dict[str, str]) -> SimpleNamespace:
    hosts = [SimpleNamespace(name=name, data=GroupData({**load_group_data(),
                                                        "pg_listen_addresses": address}))
             for name, address in addresses.items()]
    return SimpleNamespace(groups={"db_servers": hosts}, get_group=lambda name: hosts)


def test_a_monitor_host_scrapes_every_database_host_over_tls_with_a_client_certificate():
    inventory = _inventory({"pg1": "10.0.1.11", "pg2": "localhost,10.0.1.12"})
    scraped = monitoring.targets(inventory)
    assert scraped == [monitoring.Target("pg1", "10.0.1.11"),
                       monitoring.Target("pg2", "127.0.0.1")]
    config = yaml.safe_load(monitoring.prometheus_config(
        settings(), address="10.0.3.5", scraped=scraped, over_tls=True))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["node"]["static_configs"][0]["targets"] == ["10.0.1.11:9100", "127.0.0.1:9100"]
    assert jobs["postgres"]["static_configs"][0]["targets"] == [
        "10.0.1.11:9187", "127.0.0.1:9187"]
    for name in ("node", "postgres"):
        assert jobs[name]["scheme"] == "https"
        assert jobs[name]["tls_config"] == {"ca_file": monitoring.CLIENT_CA,
                                            "cert_file": monitoring.CLIENT_CERT,
                                            "key_file": monitoring.CLIENT_KEY}
    # Prometheus and Alertmanager are the monitor host's own, on its address.
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["10.0.3.5:9090"]
    # The exporters then demand a client certificate of the deploy's CA.
    web = yaml.safe_load(monitoring.web_config())["tls_server_config"]
    assert web["client_auth_type"] == "RequireAndVerifyClientCert"
    assert web["client_ca_file"] == "/etc/donnadb/tls/ca.crt"
    args = monitoring.daemon_args(settings(), web_tls=True)
    assert all(f"--web.config.file={monitoring.WEB_CONFIG}" in args[p]
               for p in monitoring.EXPORTERS)
    assert not any("--web.config.file" in args[p] for p in monitoring.SERVERS)


def _fleet_inventory() -> SimpleNamespace:
    """A database host, an application host in dual-write, one without it, and a host
    in both groups (its database host's metrics job covers it)."""
    base = load_group_data()
    dual = {"donnadb_env_extra": {"DATA_STORAGE_LOGS": "dual"}}

    def made(name: str, groups: list[str], **data):
        return SimpleNamespace(name=name, groups=groups, data=GroupData({**base, **data}))

    hosts = [made("db1", ["db_servers"], pg_listen_addresses="10.0.1.11"),
             made("app1", ["app_servers"], app_address="10.0.2.21", **dual),
             made("app2", ["app_servers"]),
             made("both", ["db_servers", "app_servers"], **dual)]
    groups = {g: [h for h in hosts if g in h.groups] for g in ("db_servers", "app_servers")}
    return SimpleNamespace(groups=groups, get_group=groups.__getitem__)


def test_prometheus_scrapes_the_app_hosts_in_dual_write_labelled_over_tls(tmp_path):
    apps = monitoring.app_targets(_fleet_inventory())
    assert apps == [monitoring.Target("app1", "10.0.2.21")]
    client = {"ca_file": monitoring.CLIENT_CA, "cert_file": monitoring.CLIENT_CERT,
              "key_file": monitoring.CLIENT_KEY}
    # A database host that monitors itself: its own exporter over HTTP, the app host's
    # over TLS with the client certificate (the target's __scheme__).
    config = yaml.safe_load(monitoring.prometheus_config(settings(), address="10.0.1.11",
                                                         apps=apps))
    node = {job["job_name"]: job for job in config["scrape_configs"]}["node"]
    assert "scheme" not in node and node["tls_config"] == client
    assert node["static_configs"] == [
        {"targets": ["10.0.1.11:9100"]},
        {"targets": ["10.0.2.21:9100"], "labels": {"role": "app", "__scheme__": "https"}}]
    # A monitor host: every exporter over TLS already.
    remote = yaml.safe_load(monitoring.prometheus_config(
        settings(), address="10.0.3.5", scraped=[monitoring.Target("db1", "10.0.1.11")],
        over_tls=True, apps=apps))
    node = {job["job_name"]: job for job in remote["scrape_configs"]}["node"]
    assert node["scheme"] == "https" and node["tls_config"] == client
    assert node["static_configs"][1] == {"targets": ["10.0.2.21:9100"],
                                         "labels": {"role": "app"}}
    # Without such an app host the settings are what they were.
    assert monitoring.prometheus_config(settings(), apps=[]) == \
        monitoring.prometheus_config(settings())
    # promtool looks for the client certificate's files: stand-ins here.
    for key in client:
        (tmp_path / key).write_text("")
    node = {job["job_name"]: job for job in config["scrape_configs"]}["node"]
    node["tls_config"] = {key: str(tmp_path / key) for key in client}
    config["rule_files"] = []
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_app_hosts_node_exporter_listens_on_its_address_over_tls_for_the_textfile():
    text = monitoring.default_file(monitoring.NODE_EXPORTER, settings(), "10.0.2.21",
                                   web_tls=True)
    assert ("--web.listen-address=10.0.2.21:9100 --collector.textfile.directory="
            f"/var/lib/prometheus/node-exporter --web.config.file={monitoring.WEB_CONFIG}") \
        in text

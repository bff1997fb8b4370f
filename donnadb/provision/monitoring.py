"""Monitoring on a database host: Prometheus, Alertmanager and node_exporter from
Debian's packages, on the host's own address.

node_exporter's textfile collector reads the directory the metrics timer writes
(``donnactl metrics textfile``, provision/opsjobs.py): the ``donnadb_*`` series reach
Prometheus as job ``node``. Prometheus evaluates the rules of ``monitoring/alerts.yml``
(donnadb/ops/alerts.py, the default thresholds) and sends alerts to Alertmanager,
which inhibits a warning while the critical of the same alert fires and delivers to the
receiver of group_data ``alertmanager_webhook_url`` (none: alerts are kept in
Alertmanager's own page and API only).

Every setting file is written BEFORE its package is installed: the packages start
their daemon at once, and dpkg keeps a configuration file that is already there
(pyinfra installs with ``--force-confold``), so no daemon ever listens on a wildcard
address with the package's defaults.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, systemd

from donnadb.ops import alerts
from donnadb.provision import opsjobs
from donnadb.provision.facts import SystemdRunning
from donnadb.provision.settings import DeploySettings
from donnadb.provision.tls import listen_names

RULES_SOURCE = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
CONFIG_DIR = "/etc/prometheus"
RULES_FILE = f"{CONFIG_DIR}/rules/donnadb.yml"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
NODE_PORT = 9100
#: Debian's packages; each one's unit has its name and reads ARGS from /etc/default/<it>.
SERVICES = ("prometheus-node-exporter", "prometheus-alertmanager", "prometheus")


def listen_address(settings: DeploySettings) -> str:
    """The host's own address: the first of pg_listen_addresses (``localhost``, or only
    a wildcard, is 127.0.0.1: the monitoring pages have no login)."""
    names = listen_names(settings.pg_listen_addresses)
    first = names[0] if names else "localhost"
    return "127.0.0.1" if first == "localhost" else first


def daemon_args(settings: DeploySettings) -> dict[str, str]:
    """package -> its ARGS line (the /etc/default file Debian's units read)."""
    address = listen_address(settings)
    return {
        "prometheus-node-exporter": f"--web.listen-address={address}:{NODE_PORT} "
                                    "--collector.textfile.directory="
                                    f"{opsjobs.textfile_dir(settings)}",
        "prometheus-alertmanager": f"--web.listen-address={address}:{ALERTMANAGER_PORT} "
                                   "--cluster.listen-address=",
        "prometheus": f"--web.listen-address={address}:{PROMETHEUS_PORT} "
                      "--storage.tsdb.retention.time=15d",
    }


def prometheus_config(settings: DeploySettings) -> str:
    address = listen_address(settings)

    def job(name: str, port: int) -> dict:
        return {"job_name": name, "static_configs": [{"targets": [f"{address}:{port}"]}]}

    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"{address}:{ALERTMANAGER_PORT}"]}]}]},
        "rule_files": [RULES_FILE],
        "scrape_configs": [job(alerts.JOB_PROMETHEUS, PROMETHEUS_PORT),
                           job(alerts.JOB_ALERTMANAGER, ALERTMANAGER_PORT),
                           job(alerts.JOB_NODE, NODE_PORT)],
    }
    return "# Managed by the donnadb deploy (provision/monitoring.py).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook_url: str | None) -> str:
    receiver: dict = {"name": "donna"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    config = {
        "route": {"receiver": "donna", "group_by": ["alertname", "instance"],
                  "group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h"},
        "receivers": [receiver],
        "inhibit_rules": alerts.inhibit_rules(),
    }
    return "# Managed by the donnadb deploy (provision/monitoring.py).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def _put(name: str, text: str, dest: str, mode: str = "644") -> OperationMeta:
    return files.put(name=name, src=StringIO(text), dest=dest, user="root", group="root",
                     mode=mode, create_remote_dir=True)


@deploy("Monitoring")
def install_monitoring(settings: DeploySettings) -> None:
    """Settings files first, then the packages, then (under systemd) the services,
    restarted when their settings changed."""
    webhook = host.data.get("alertmanager_webhook_url")
    changed: dict[str, list[OperationMeta]] = {package: [] for package in SERVICES}
    for package, args in daemon_args(settings).items():
        changed[package].append(_put(f"{package}: listen on {listen_address(settings)}",
                                     f'# Managed by the donnadb deploy.\nARGS="{args}"\n',
                                     f"/etc/default/{package}"))
    changed["prometheus"].append(_put("Prometheus: scrape and alert settings",
                                      prometheus_config(settings),
                                      f"{CONFIG_DIR}/prometheus.yml"))
    changed["prometheus"].append(_put("Prometheus: the donnadb alert rules",
                                      RULES_SOURCE.read_text(), RULES_FILE))
    changed["prometheus-alertmanager"].append(_put(
        "Alertmanager: route, receiver and inhibit rules", alertmanager_config(webhook),
        f"{CONFIG_DIR}/alertmanager.yml"))
    apt.packages(name="Install Prometheus, Alertmanager and node_exporter",
                 packages=list(SERVICES), extra_install_args="--no-install-recommends")
    if not host.get_fact(SystemdRunning):
        return
    for unit in SERVICES:
        started = systemd.service(name=f"{unit} runs and starts at boot", service=unit,
                                  running=True, enabled=True)
        ops = changed[unit]
        systemd.service(name=f"Restart {unit} (its settings changed)", service=unit,
                        restarted=True,
                        _if=lambda ops=ops, started=started: not started.did_change()
                        and any(op.did_change() for op in ops))

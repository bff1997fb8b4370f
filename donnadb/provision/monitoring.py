"""Monitoring on a database host: Prometheus, Alertmanager, node_exporter and
postgres_exporter from Debian's packages, on the host's own address.

postgres_exporter logs in as the deploy's monitor role (pg_monitor only: statistics,
never a row of data) over TLS (verify-full against the deploy's CA) with the password
from its own passfile (``pgpass.d/prometheus``, 0600, cut from the root passfile on
the host like every consumer's), and adds pg_stat_statements' top statements
(``monitoring/postgres_exporter.yml``).

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

import posixpath
from io import StringIO
from pathlib import Path

import yaml
from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from donnadb.ops import alerts
from donnadb.provision import consumers, install, opsjobs, passwords, tls
from donnadb.provision.facts import SystemdRunning
from donnadb.provision.settings import DeploySettings
from donnadb.provision.tls import listen_names

RULES_SOURCE = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
CONFIG_DIR = "/etc/prometheus"
RULES_FILE = f"{CONFIG_DIR}/rules/donnadb.yml"
QUERIES_SOURCE = RULES_SOURCE.parent / "postgres_exporter" / "queries.yml"
QUERIES_FILE = f"{CONFIG_DIR}/postgres_exporter.yml"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
NODE_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187
#: Debian's packages; each one's unit has its name and reads ARGS from /etc/default/<it>.
SERVICES = ("prometheus-node-exporter", "prometheus-postgres-exporter",
            "prometheus-alertmanager", "prometheus")
#: The packages' daemons run as this user; postgres_exporter's passfile is its.
EXPORTER_USER = "prometheus"
EXPORTER_KINDS = ("monitor",)


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
        "prometheus-postgres-exporter": f"--web.listen-address={address}:"
                                        f"{POSTGRES_EXPORTER_PORT} "
                                        f"--extend.query-path={QUERIES_FILE}",
        "prometheus-alertmanager": f"--web.listen-address={address}:{ALERTMANAGER_PORT} "
                                   "--cluster.listen-address=",
        "prometheus": f"--web.listen-address={address}:{PROMETHEUS_PORT} "
                      "--storage.tsdb.retention.time=15d",
    }


def exporter_environment(settings: DeploySettings) -> dict[str, str]:
    """postgres_exporter's connection: the monitor role, to this host's own server, over
    TLS verified against the deploy's CA; the password only in its passfile."""
    dsn = (f"host={listen_address(settings)} port={settings.pg_port} "
           f"dbname={settings.db_name} user={settings.role('monitor')} "
           f"sslmode=verify-full sslrootcert={tls.CA_FILE} "
           "application_name=postgres_exporter connect_timeout=5")
    return {"DATA_SOURCE_NAME": dsn,
            "PGPASSFILE": consumers.passfile_of(settings, EXPORTER_USER)}


def default_file(package: str, settings: DeploySettings) -> str:
    """/etc/default/<package>: its ARGS (and postgres_exporter's connection)."""
    lines = ["# Managed by the donnadb deploy (provision/monitoring.py)."]
    if package == "prometheus-postgres-exporter":
        lines += [f"{key}='{value}'" for key, value in exporter_environment(settings).items()]
    lines.append(f'ARGS="{daemon_args(settings)[package]}"')
    return "\n".join(lines) + "\n"


def prometheus_config(settings: DeploySettings, interval: str = "15s") -> str:
    """Scrape every exporter of the host and evaluate the rules every ``interval``."""
    address = listen_address(settings)

    def job(name: str, port: int) -> dict:
        return {"job_name": name, "static_configs": [{"targets": [f"{address}:{port}"]}]}

    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"{address}:{ALERTMANAGER_PORT}"]}]}]},
        "rule_files": [RULES_FILE],
        "scrape_configs": [job(alerts.JOB_PROMETHEUS, PROMETHEUS_PORT),
                           job(alerts.JOB_ALERTMANAGER, ALERTMANAGER_PORT),
                           job(alerts.JOB_NODE, NODE_PORT),
                           job(alerts.JOB_POSTGRES, POSTGRES_EXPORTER_PORT)],
    }
    return "# Managed by the donnadb deploy (provision/monitoring.py).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook_url: str | None, group_wait: str = "10s",
                        group_interval: str = "1m") -> str:
    """One route to the receiver ``donna`` (the webhook, when given, told of resolutions
    too). ``group_wait``: how long a new group gathers alerts before its first message;
    ``group_interval``: the least time between messages of a group (resolutions too)."""
    receiver: dict = {"name": "donna"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    config = {
        "route": {"receiver": "donna", "group_by": ["alertname", "instance"],
                  "group_wait": group_wait, "group_interval": group_interval,
                  "repeat_interval": "4h"},
        "receivers": [receiver],
        "inhibit_rules": alerts.inhibit_rules(),
    }
    return "# Managed by the donnadb deploy (provision/monitoring.py).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def _put(name: str, text: str, dest: str, mode: str = "644") -> OperationMeta:
    return files.put(name=name, src=StringIO(text), dest=dest, user="root", group="root",
                     mode=mode, create_remote_dir=True)


@operation()
def rules_rendered(donnactl: str, dest: str):
    """``dest`` holds ``donnactl metrics rules`` of this host: the thresholds of its own
    settings (ALERT_*, HEALTH_* in donnadb.env). A new rendering replaces the old only
    after ``promtool check rules`` accepts it."""
    same = host.get_fact(Command, command=f"{donnactl} metrics rules 2>/dev/null | "
                                          f"cmp -s - {dest} && echo same || echo differ")
    if same == "same":
        host.noop(f"{dest} is this host's rendering")
    else:
        yield (f"umask 022 && {donnactl} metrics rules > {dest}.new && "
               f"promtool check rules {dest}.new > /dev/null && mv {dest}.new {dest}")


def _exporter_credentials(settings: DeploySettings) -> list[OperationMeta]:
    """The packages' user (made by their install) reaches /etc/donnadb (group donnadb)
    and gets its own passfile holding the monitor role only."""
    target = consumers.passfile_of(settings, EXPORTER_USER)
    kinds = ", ".join(EXPORTER_KINDS)
    return [
        consumers.member_of(name=f"{EXPORTER_USER} reads the CA and its passfile "
                                 f"(group {consumers.GROUP})",
                            user=EXPORTER_USER, group=consumers.GROUP),
        consumers.passfile_shared(name=f"Passfile {target} ({kinds} only)",
                                  helper=passwords.helper_path(settings),
                                  passfile=settings.db_passfile, target=target,
                                  owner=EXPORTER_USER,
                                  roles=[settings.role(k) for k in EXPORTER_KINDS]),
    ]


@deploy("Monitoring")
def install_monitoring(settings: DeploySettings) -> None:
    """Settings files first, then the packages, then (under systemd) the services,
    restarted when their settings changed."""
    webhook = host.data.get("alertmanager_webhook_url")
    changed: dict[str, list[OperationMeta]] = {package: [] for package in SERVICES}
    for package in SERVICES:
        changed[package].append(_put(f"{package}: listen on {listen_address(settings)}",
                                     default_file(package, settings),
                                     f"/etc/default/{package}"))
    changed["prometheus-postgres-exporter"].append(_put(
        "postgres_exporter: the pg_stat_statements query", QUERIES_SOURCE.read_text(),
        QUERIES_FILE))
    changed["prometheus"].append(_put("Prometheus: scrape and alert settings",
                                      prometheus_config(settings),
                                      f"{CONFIG_DIR}/prometheus.yml"))
    changed["prometheus-alertmanager"].append(_put(
        "Alertmanager: route, receiver and inhibit rules", alertmanager_config(webhook),
        f"{CONFIG_DIR}/alertmanager.yml"))
    apt.packages(name="Install Prometheus, Alertmanager and node_exporter",
                 packages=list(SERVICES), extra_install_args="--no-install-recommends")
    changed["prometheus-postgres-exporter"] += _exporter_credentials(settings)
    files.directory(name=f"Create {posixpath.dirname(RULES_FILE)}",
                    path=posixpath.dirname(RULES_FILE), user="root", group="root",
                    mode="755")
    changed["prometheus"].append(rules_rendered(
        name="Prometheus: the alert rules for this host's thresholds",
        donnactl=install.donnactl_path(settings), dest=RULES_FILE))
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

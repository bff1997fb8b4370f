"""Monitoring from Debian's packages: exporters on every database host, Prometheus and
Alertmanager on the monitor host.

Every database host (a single host or a Patroni member) runs node_exporter, whose
textfile collector reads the directory the metrics timer writes (``donnactl metrics
textfile``, provision/opsjobs.py: the ``donnadb_*`` series come as job ``node``), and
postgres_exporter, which logs in as the deploy's monitor role (pg_monitor only:
statistics, never a row of data) over TLS (verify-full against the deploy's CA) with the
password from its own passfile (``pgpass.d/prometheus``, 0600, cut from the root
passfile on the host like every consumer's) and adds pg_stat_statements' top statements
(``monitoring/postgres_exporter/queries.yml``).

An application host (not also a database host) whose settings put some entity in
dual-write runs node_exporter alone, TLS only, for its metrics job's textfile (its own
dual-write figures: provision/appmetrics.py).

The monitor host runs Prometheus, which scrapes every database host of the inventory
(and those application hosts' node_exporter, job ``node`` with the label ``role="app"``)
and evaluates the rules of ``monitoring/alerts.yml``, and Alertmanager, which inhibits a
warning while the critical of the same alert fires and delivers to the receiver of
group_data ``alertmanager_webhook_url``. It is the inventory's ``monitor_servers``
host; without that group a single database host is its own monitor. When the monitor
is another host, the exporters speak TLS only and require a client certificate of the
deploy's CA (Prometheus presents its host's), so nothing else on the network reads them.

Every setting file is written BEFORE its package is installed (the deploy creates the
packages' ``prometheus`` user itself, as their maintainer scripts would): the packages
start their daemon at once, and dpkg keeps a configuration file that is already there
(pyinfra installs with ``--force-confold``), so no daemon ever listens on a wildcard
address with the package's defaults.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import yaml
from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command, Hostname
from pyinfra.operations import apt, files, server, systemd

from donnadb.ops import alerts
from donnadb.provision import consumers, dualstats, install, opsjobs, passwords, tls
from donnadb.provision.app import APP_GROUP, DB_GROUP, MONITOR_GROUP, address_of
from donnadb.provision.facts import SystemdRunning
from donnadb.provision.settings import DeploySettings, load_deploy_settings
from donnadb.provision.tls import listen_names

RULES_SOURCE = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
QUERIES_SOURCE = RULES_SOURCE.parent / "postgres_exporter" / "queries.yml"
CONFIG_DIR = "/etc/prometheus"
RULES_FILE = f"{CONFIG_DIR}/rules/donnadb.yml"
QUERIES_FILE = f"{CONFIG_DIR}/postgres_exporter.yml"
#: The exporters' TLS settings (exporter-toolkit's web config) and their certificate.
WEB_CONFIG = f"{CONFIG_DIR}/exporter-web.yml"
EXPORTER_CERT, EXPORTER_KEY = f"{CONFIG_DIR}/tls/exporter.crt", f"{CONFIG_DIR}/tls/exporter.key"
#: Prometheus's client certificate, presented to remote exporters, and the deploy's CA
#: it verifies them with (a copy: /etc/donnadb is the donnadb group's, which a monitor
#: host need not have).
CLIENT_CERT, CLIENT_KEY = f"{CONFIG_DIR}/tls/client.crt", f"{CONFIG_DIR}/tls/client.key"
CLIENT_CA = f"{CONFIG_DIR}/tls/ca.crt"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
NODE_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187
#: Debian's packages; each one's unit has its name and reads ARGS from /etc/default/<it>.
NODE_EXPORTER = "prometheus-node-exporter"
POSTGRES_EXPORTER = "prometheus-postgres-exporter"
EXPORTERS = (NODE_EXPORTER, POSTGRES_EXPORTER)
#: What each exporter package is called in the deploy's operation names.
SHORT_NAMES = {NODE_EXPORTER: "node_exporter", POSTGRES_EXPORTER: "postgres_exporter"}
#: The label Prometheus gives an application host's node_exporter (job ``node``).
APP_LABELS = {"role": "app"}
SERVERS = ("prometheus-alertmanager", "prometheus")
SERVICES = EXPORTERS + SERVERS
#: The packages' daemons run as this user; postgres_exporter's passfile is its.
EXPORTER_USER = "prometheus"
EXPORTER_HOME = "/var/lib/prometheus"
EXPORTER_KINDS = ("monitor",)


@dataclass(frozen=True)
class Target:
    """One database host's exporters as Prometheus dials them."""

    name: str
    address: str


def listen_address(settings: DeploySettings, data=None) -> str:
    """The host's own address: group_data ``monitor_listen_address``, else the first of
    pg_listen_addresses (``localhost``, or only a wildcard, is 127.0.0.1: the
    monitoring pages have no login)."""
    chosen = data.get("monitor_listen_address") if data is not None else None
    if chosen:
        return str(chosen)
    names = listen_names(settings.pg_listen_addresses)
    first = names[0] if names else "localhost"
    return "127.0.0.1" if first == "localhost" else first


def has_monitor_host(inventory) -> bool:
    return MONITOR_GROUP in inventory.groups and bool(inventory.get_group(MONITOR_GROUP))


def monitors_itself(settings: DeploySettings, inventory) -> bool:
    """A database host runs Prometheus and Alertmanager itself: a single host in an
    inventory without a monitor host (a cluster member never does)."""
    return not has_monitor_host(inventory) and settings.ha is None


def prometheus_address(settings: DeploySettings, inventory, data=None) -> str | None:
    """Where a database host's Prometheus listens: the monitor host's, else its own
    (a single host monitors itself); None on a cluster member without a monitor host."""
    if has_monitor_host(inventory):
        monitor = inventory.get_group(MONITOR_GROUP)[0]
        address = listen_address(load_deploy_settings(monitor.data), monitor.data)
    elif monitors_itself(settings, inventory):
        address = listen_address(settings, data)
    else:
        return None
    return f"http://{address}:{PROMETHEUS_PORT}"


def targets(inventory) -> list[Target]:
    """Every database host of the inventory, at the address its exporters listen on."""
    hosts = inventory.get_group(DB_GROUP) if DB_GROUP in inventory.groups else []
    return [Target(h.name, listen_address(load_deploy_settings(h.data), h.data))
            for h in hosts]


def app_targets(inventory) -> list[Target]:
    """Every application host of the inventory that runs node_exporter for its
    dual-write figures (not a database host; some entity in dual-write), at its own
    address (``app_address``, else its name)."""
    hosts = inventory.get_group(APP_GROUP) if APP_GROUP in inventory.groups else []
    return [Target(h.name, address_of(h)) for h in hosts
            if DB_GROUP not in h.groups
            and dualstats.stats_dir(load_deploy_settings(h.data)) is not None]


def daemon_args(settings: DeploySettings, address: str | None = None,
                web_tls: bool = False) -> dict[str, str]:
    """package -> its ARGS line (the /etc/default file Debian's units read)."""
    address = address or listen_address(settings)
    web = f" --web.config.file={WEB_CONFIG}" if web_tls else ""
    return {
        NODE_EXPORTER: f"--web.listen-address={address}:{NODE_PORT} "
                       "--collector.textfile.directory="
                       f"{opsjobs.textfile_dir(settings)}{web}",
        POSTGRES_EXPORTER: f"--web.listen-address={address}:{POSTGRES_EXPORTER_PORT} "
                           f"--extend.query-path={QUERIES_FILE}{web}",
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


def default_file(package: str, settings: DeploySettings, address: str | None = None,
                 web_tls: bool = False) -> str:
    """/etc/default/<package>: its ARGS (and postgres_exporter's connection)."""
    lines = ["# Managed by the donnadb deploy (provision/monitoring.py)."]
    if package == POSTGRES_EXPORTER:
        lines += [f"{key}='{value}'" for key, value in exporter_environment(settings).items()]
    lines.append(f'ARGS="{daemon_args(settings, address, web_tls)[package]}"')
    return "\n".join(lines) + "\n"


def web_config() -> str:
    """The exporters' TLS: their host's certificate, and a client certificate of the
    deploy's CA required from whoever scrapes them."""
    config = {"tls_server_config": {
        "cert_file": EXPORTER_CERT, "key_file": EXPORTER_KEY,
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": tls.CA_FILE,
        "min_version": "TLS12"}}
    return "# Managed by the donnadb deploy (provision/monitoring.py).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def prometheus_config(settings: DeploySettings, interval: str = "15s", *,
                      address: str | None = None, scraped: list[Target] | None = None,
                      over_tls: bool = False, apps: list[Target] | None = None) -> str:
    """Scrape Prometheus, Alertmanager (here, at ``address``) and the exporters of every
    database host in ``scraped`` (default: this host alone), over TLS with a client
    certificate when ``over_tls``, and the node_exporter of every application host in
    ``apps`` (labelled :data:`APP_LABELS`; always TLS: another host's); evaluate the
    rules every ``interval``."""
    address = address or listen_address(settings)
    scraped = scraped if scraped is not None else [Target("self", address)]
    client_tls = {"ca_file": CLIENT_CA, "cert_file": CLIENT_CERT, "key_file": CLIENT_KEY}

    def job(name: str, addresses: list[str], port: int, remote: bool = False) -> dict:
        entry = {"job_name": name,
                 "static_configs": [{"targets": [f"{a}:{port}" for a in addresses]}]}
        if remote:
            entry["scheme"] = "https"
            entry["tls_config"] = client_tls
        return entry

    dbs = [t.address for t in scraped]
    node = job(alerts.JOB_NODE, dbs, NODE_PORT, over_tls)
    if apps:
        # One job for every node_exporter, so the rules on job "node" cover these too; a
        # target's __scheme__ label wins over the job's scheme (a database host that
        # monitors itself scrapes its own exporter over plain HTTP).
        labels = APP_LABELS if over_tls else {**APP_LABELS, "__scheme__": "https"}
        node["static_configs"].append({"targets": [f"{t.address}:{NODE_PORT}" for t in apps],
                                       "labels": labels})
        node["tls_config"] = client_tls
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"{address}:{ALERTMANAGER_PORT}"]}]}]},
        "rule_files": [RULES_FILE],
        "scrape_configs": [job(alerts.JOB_PROMETHEUS, [address], PROMETHEUS_PORT),
                           job(alerts.JOB_ALERTMANAGER, [address], ALERTMANAGER_PORT),
                           node,
                           job(alerts.JOB_POSTGRES, dbs, POSTGRES_EXPORTER_PORT, over_tls)],
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


def _put(name: str, text: str, dest: str, mode: str = "644", owner: str = "root") -> OperationMeta:
    return files.put(name=name, src=StringIO(text), dest=dest, user=owner, group=owner,
                     mode=mode, create_remote_dir=True)


#: Files a package's maintainer script chowns on every configure: written as it leaves
#: them (postgres_exporter's may hold a DSN with a password elsewhere; ours holds none).
PACKAGE_OWNED = {"/etc/default/prometheus-postgres-exporter": (EXPORTER_USER, "640")}


def _put_default(package: str, text: str, address: str) -> OperationMeta:
    dest = f"/etc/default/{package}"
    owner, mode = PACKAGE_OWNED.get(dest, ("root", "644"))
    return _put(f"{package}: listen on {address}", text, dest, mode=mode, owner=owner)


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


def _packages_user() -> None:
    """The ``prometheus`` user as the packages' maintainer scripts make it (they keep an
    existing one), so the files it reads can be its before the daemons first start."""
    server.group(name=f"Group {EXPORTER_USER}", group=EXPORTER_USER, system=True)
    server.user(name=f"System user {EXPORTER_USER} (the packages' daemons)",
                user=EXPORTER_USER, group=EXPORTER_USER, system=True,
                shell=consumers.NOLOGIN, home=EXPORTER_HOME, create_home=False,
                ensure_home=False, comment="Prometheus daemon")


def _certificate(settings: DeploySettings, cert: str, key: str) -> list[OperationMeta]:
    """This host's certificate (the one its PostgreSQL has, same names: one kept
    certificate per host on the control machine) for the prometheus user."""
    files.directory(name=f"Create {posixpath.dirname(cert)}", path=posixpath.dirname(cert),
                    user="root", group=EXPORTER_USER, mode="750")
    names = tls.server_names(settings, host.name, host.get_fact(Hostname))
    return list(tls.put_certificate(settings, names, cert, key, EXPORTER_USER))


def _exporter_tls(settings: DeploySettings) -> list[OperationMeta]:
    """The exporters' web config and certificate (TLS only, client certificate required)."""
    return [_put("Exporters: TLS only, a client certificate of the deploy's CA required",
                 web_config(), WEB_CONFIG),
            *_certificate(settings, EXPORTER_CERT, EXPORTER_KEY)]


def _reads_donnadb_files() -> OperationMeta:
    """The exporters' user reads the CA and its passfile (group donnadb reaches
    /etc/donnadb)."""
    return consumers.member_of(name=f"{EXPORTER_USER} reads the CA and its passfile "
                                    f"(group {consumers.GROUP})",
                               user=EXPORTER_USER, group=consumers.GROUP)


def _postgres_exporter_files(settings: DeploySettings) -> list[OperationMeta]:
    """What postgres_exporter reads: its custom query, its own passfile (the monitor
    role only) and the CA."""
    target = consumers.passfile_of(settings, EXPORTER_USER)
    return [
        _put("postgres_exporter: the pg_stat_statements query", QUERIES_SOURCE.read_text(),
             QUERIES_FILE),
        _reads_donnadb_files(),
        consumers.passfile_shared(name=f"Passfile {target} ({', '.join(EXPORTER_KINDS)} "
                                       "only)",
                                  helper=passwords.helper_path(settings),
                                  passfile=settings.db_passfile, target=target,
                                  owner=EXPORTER_USER,
                                  roles=[settings.role(k) for k in EXPORTER_KINDS]),
    ]


def _services(units: tuple[str, ...], changed: dict[str, list[OperationMeta]]) -> None:
    """Under systemd: each unit runs, enabled, and restarts when its settings changed."""
    if not host.get_fact(SystemdRunning):
        return
    for unit in units:
        started = systemd.service(name=f"{unit} runs and starts at boot", service=unit,
                                  running=True, enabled=True)
        ops = changed[unit]
        systemd.service(name=f"Restart {unit} (its settings changed)", service=unit,
                        restarted=True,
                        _if=lambda ops=ops, started=started: not started.did_change()
                        and any(op.did_change() for op in ops))


@deploy("Monitoring: exporters")
def install_exporters(settings: DeploySettings, *, web_tls: bool = False,
                      address: str | None = None,
                      packages: tuple[str, ...] = EXPORTERS) -> None:
    """``packages`` (node_exporter and postgres_exporter) on this host's own address (a
    database host's, else ``address``); with ``web_tls`` (the monitor is another host)
    TLS only, a client certificate required."""
    address = address or listen_address(settings)
    _packages_user()
    changed: dict[str, list[OperationMeta]] = {package: [] for package in packages}
    for package in packages:
        changed[package].append(_put_default(
            package, default_file(package, settings, address, web_tls), address))
    if POSTGRES_EXPORTER in packages:
        changed[POSTGRES_EXPORTER] += _postgres_exporter_files(settings)
    elif web_tls:
        changed[NODE_EXPORTER].append(_reads_donnadb_files())
    if web_tls:
        secured = _exporter_tls(settings)
        for package in packages:
            changed[package] += secured
    apt.packages(name=f"Install {' and '.join(SHORT_NAMES[p] for p in packages)}",
                 packages=list(packages), extra_install_args="--no-install-recommends")
    _services(packages, changed)


@deploy("Monitoring: Prometheus and Alertmanager")
def install_server(settings: DeploySettings, *, scraped: list[Target] | None = None,
                   over_tls: bool = False, rules_from_host: bool = True) -> None:
    """Prometheus (scraping ``scraped``, default this host, and the inventory's
    :func:`app_targets`) and Alertmanager on this host's own address.
    ``rules_from_host``: the rules are ``donnactl metrics rules`` of this host (a
    database host's thresholds), else the shipped defaults."""
    apps = app_targets(host.inventory)
    address = listen_address(settings, host.data)
    webhook = host.data.get("alertmanager_webhook_url")
    _packages_user()
    changed: dict[str, list[OperationMeta]] = {package: [] for package in SERVERS}
    for package in SERVERS:
        changed[package].append(_put_default(package, default_file(package, settings, address),
                                             address))
    changed["prometheus"].append(_put(
        "Prometheus: scrape and alert settings",
        prometheus_config(settings, address=address, scraped=scraped, over_tls=over_tls,
                          apps=apps),
        f"{CONFIG_DIR}/prometheus.yml"))
    if over_tls or apps:
        changed["prometheus"] += [
            *_certificate(settings, CLIENT_CERT, CLIENT_KEY),
            _put("Prometheus: the deploy's CA certificate", tls.authority(settings).cert_pem,
                 CLIENT_CA)]
    changed["prometheus-alertmanager"].append(_put(
        "Alertmanager: route, receiver and inhibit rules", alertmanager_config(webhook),
        f"{CONFIG_DIR}/alertmanager.yml"))
    apt.packages(name="Install Prometheus and Alertmanager", packages=list(SERVERS),
                 extra_install_args="--no-install-recommends")
    if rules_from_host:
        files.directory(name=f"Create {posixpath.dirname(RULES_FILE)}",
                        path=posixpath.dirname(RULES_FILE), user="root", group="root",
                        mode="755")
        changed["prometheus"].append(rules_rendered(
            name="Prometheus: the alert rules for this host's thresholds",
            donnactl=install.donnactl_path(settings), dest=RULES_FILE))
    else:
        changed["prometheus"].append(_put("Prometheus: the alert rules (defaults)",
                                          RULES_SOURCE.read_text(), RULES_FILE))
    _services(SERVERS, changed)


def install_monitoring(settings: DeploySettings) -> None:
    """A database host's part: its exporters, and Prometheus and Alertmanager too when
    the inventory has no monitor host (a single host monitors itself)."""
    install_exporters(settings, web_tls=has_monitor_host(host.inventory))
    if monitors_itself(settings, host.inventory):
        install_server(settings)


def install_monitor(settings: DeploySettings) -> None:
    """The monitor host: Prometheus scraping every database host over TLS (a client
    certificate of the deploy's CA), and Alertmanager."""
    tls.install_ca(settings)
    install_server(settings, scraped=targets(host.inventory), over_tls=True,
                   rules_from_host=DB_GROUP in host.groups)

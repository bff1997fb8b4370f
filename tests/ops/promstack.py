"""A real monitoring stack for the dashboard tests, on 127.0.0.1 only: a throwaway
PostgreSQL 15 cluster with pg_stat_statements, Debian's prometheus-postgres-exporter
and prometheus-node-exporter scraping it and a textfile, and Debian's Prometheus
scraping both every 2 seconds. Everything started here is stopped on exit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from donnadb.ops import alerts

#: Prometheus and the exporters take free ports from here.
PORTS = range(19300, 19400)
#: The throwaway cluster's port comes from here.
PG_PORTS = range(5470, 5480)
DB = "donna"
RULES = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"

#: postgres_exporter's custom query, as the deploy gives it to the exporter.
QUERIES = Path(__file__).resolve().parents[2] / "monitoring" / "postgres_exporter" / \
    "queries.yml"


@dataclass(frozen=True)
class Stack:
    prometheus_url: str
    pg_port: int
    work: Path


def free_port(ports: range = PORTS, taken: frozenset[int] = frozenset()) -> int:
    for port in ports:
        with socket.socket() as probe:
            if port not in taken and probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {ports}")


def psql(port: int, sql: str, dbname: str = DB) -> str:
    """Run ``sql`` as the cluster's superuser over its socket (peer authentication)."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v",
         "ON_ERROR_STOP=1", "-p", str(port), "-d", dbname],
        input=sql, capture_output=True, text=True, check=True, cwd="/", timeout=120).stdout


@contextmanager
def pg_cluster() -> Iterator[int]:
    """A new cluster with pg_stat_statements and a ``donna`` database; dropped after."""
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                            check=True).stdout
    port = free_port(PG_PORTS, frozenset(int(ln.split()[2]) for ln in listed.splitlines()
                                         if ln.strip()))
    name = f"dash{uuid.uuid4().hex[:6]}"
    subprocess.run(["pg_createcluster", "15", name, "-p", str(port)], check=True,
                   capture_output=True, cwd="/")
    try:
        Path(f"/etc/postgresql/15/{name}/conf.d/dashboard.conf").write_text(
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "listen_addresses = '127.0.0.1'\n")
        subprocess.run(["pg_ctlcluster", "15", name, "start"], check=True, cwd="/")
        psql(port, f'CREATE DATABASE "{DB}"', dbname="postgres")
        psql(port, "CREATE EXTENSION pg_stat_statements")
        yield port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True,
                       check=False, cwd="/")
        shutil.rmtree(f"/etc/postgresql/15/{name}", ignore_errors=True)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (our loopback URL)
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered:\n{log.read_text()[-2000:]}") \
                    from None
            time.sleep(0.2)


@contextmanager
def _daemon(argv: list[str], log: Path, ready: str, **popen) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                **popen)
    try:
        _wait_http(ready, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _prometheus_config(targets: dict[str, int]) -> str:
    return yaml.safe_dump({
        # scrape_timeout is the interval: 2 s lets postgres_exporter answer on a busy host.
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": [
            {"targets": [f"127.0.0.1:{port}"]}]} for job, port in targets.items()]})


@contextmanager
def monitoring_stack(textfile: str) -> Iterator[Stack]:
    """The cluster, both exporters (node_exporter reads ``textfile`` as its textfile
    collector's one file) and Prometheus; yields where Prometheus answers."""
    # Not pytest's tmp_path: the postgres user must read the exporter's query file.
    work = Path(tempfile.mkdtemp(prefix="donna-dashboard-", dir="/var/tmp"))  # noqa: S108
    work.chmod(0o755)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        pg_port = stack.enter_context(pg_cluster())
        queries = work / "queries.yml"
        shutil.copyfile(QUERIES, queries)  # the exporter runs as postgres
        (work / "textfile").mkdir()
        (work / "textfile" / "donnadb.prom").write_text(textfile)
        ports: dict[str, int] = {}
        for job in (alerts.JOB_POSTGRES, alerts.JOB_NODE, alerts.JOB_PROMETHEUS):
            ports[job] = free_port(taken=frozenset(ports.values()))
        pg_exporter = ["/usr/bin/prometheus-postgres-exporter",
                       f"--web.listen-address=127.0.0.1:{ports[alerts.JOB_POSTGRES]}",
                       f"--extend.query-path={queries}"]
        dsn = f"host=/var/run/postgresql port={pg_port} user=postgres dbname={DB} " \
              "sslmode=disable"
        stack.enter_context(_daemon(
            pg_exporter, work / "postgres_exporter.log",
            f"http://127.0.0.1:{ports[alerts.JOB_POSTGRES]}/metrics", user="postgres",
            env={"DATA_SOURCE_NAME": dsn, "PATH": "/usr/bin:/bin"}))
        stack.enter_context(_daemon(
            ["/usr/bin/prometheus-node-exporter",
             f"--web.listen-address=127.0.0.1:{ports[alerts.JOB_NODE]}",
             "--collector.disable-defaults", "--collector.filesystem",
             "--collector.textfile", f"--collector.textfile.directory={work / 'textfile'}"],
            work / "node_exporter.log", f"http://127.0.0.1:{ports[alerts.JOB_NODE]}/metrics"))
        config = work / "prometheus.yml"
        config.write_text(_prometheus_config(ports))
        url = f"http://127.0.0.1:{ports[alerts.JOB_PROMETHEUS]}"
        stack.enter_context(_daemon(
            ["/usr/bin/prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports[alerts.JOB_PROMETHEUS]}"],
            work / "prometheus.log", f"{url}/-/ready"))
        _wait_scraped(url, len(ports), work / "prometheus.log")
        yield Stack(url, pg_port, work)


def _wait_scraped(url: str, targets: int, log: Path, timeout: float = 60) -> None:
    """Until every target's first scrape is in: Prometheus holds its targets back for
    about 5 s after it is ready, and a load driven before would be one flat sample."""
    deadline = time.monotonic() + timeout
    query = f"{url}/api/v1/query?query=sum(up)"
    while True:
        with urllib.request.urlopen(query, timeout=5) as answer:  # noqa: S310
            result = json.load(answer)["data"]["result"]
        if result and float(result[0]["value"][1]) == targets:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"targets never all up:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


def drive_load(port: int, transactions: int = 300) -> None:
    """``transactions`` short transactions, each a few statements, and some rollbacks:
    one psql session over the socket (bounded: a fixed count)."""
    script = ["CREATE TABLE IF NOT EXISTS dash_load (id serial PRIMARY KEY, body text);"]
    for i in range(transactions):
        script.append(f"BEGIN; INSERT INTO dash_load (body) VALUES ('m{i}'); "
                      f"SELECT count(*) FROM dash_load WHERE id > {i}; "
                      + ("ROLLBACK;" if i % 10 == 0 else "COMMIT;"))
    psql(port, "\n".join(script))

"""A throwaway local Patroni cluster: one etcd member and three Patroni nodes as child
processes, each on its own loopback address so nothing clashes with the deployed
PostgreSQL on 127.0.0.1:5432.

etcd listens on 127.0.0.40; the nodes on 127.0.0.41-43 (PostgreSQL 5432, REST 8008).
Patroni and PostgreSQL run as the postgres OS user (PostgreSQL refuses root); data and
configuration live in one temporary directory removed at the end. The timings are
small (ttl 10 s, loop_wait 1 s) so a failover takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ETCD_HOST = "127.0.0.40"
NODE_HOSTS = {"node1": "127.0.0.41", "node2": "127.0.0.42", "node3": "127.0.0.43"}
PG_BIN = "/usr/lib/postgresql/15/bin"
SCOPE = "donna-test"
#: Basic auth for Patroni's unsafe REST endpoints (switchover, restart, reinit...).
REST_USER = "patroni"
REST_PASSWORD = "rest-test-only"
BOOT_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15


def _postgres_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _wait(what: str, check, timeout: float, interval: float = 0.2):
    """Call ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - not up yet, try again
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def node_config(root: Path, name: str) -> dict:
    host = NODE_HOSTS[name]
    return {
        "scope": SCOPE,
        "name": name,
        "log": {"dir": str(root / "log" / name), "level": "INFO"},
        "restapi": {"listen": f"{host}:8008", "connect_address": f"{host}:8008",
                    "authentication": {"username": REST_USER, "password": REST_PASSWORD}},
        "ctl": {},
        "etcd3": {"hosts": [f"{ETCD_HOST}:2379"]},
        "bootstrap": {
            "dcs": {
                "ttl": 10, "loop_wait": 1, "retry_timeout": 4,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True, "use_slots": True,
                    "parameters": {"wal_level": "replica", "hot_standby": "on",
                                   "wal_log_hints": "on", "max_wal_senders": 10,
                                   "max_replication_slots": 10, "wal_keep_size": "64MB",
                                   "shared_buffers": "32MB", "fsync": "off"},
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "scram-sha-256"}],
        },
        "postgresql": {
            "listen": f"{host}:5432", "connect_address": f"{host}:5432",
            "data_dir": str(root / "data" / name), "bin_dir": PG_BIN,
            "pgpass": str(root / "sock" / name / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "super-test-only"},
                "replication": {"username": "replicator", "password": "repl-test-only"},
                "rewind": {"username": "rewinder", "password": "rewind-test-only"},
            },
            "parameters": {"unix_socket_directories": str(root / "sock" / name)},
            "pg_hba": ["local all all trust",
                       "host replication replicator 127.0.0.0/8 scram-sha-256",
                       "host all all 127.0.0.0/8 scram-sha-256"],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


@dataclass
class LocalCluster:
    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def config_path(self, name: str) -> Path:
        return self.root / f"{name}.yml"

    @property
    def config(self) -> Path:
        """The configuration donnactl is pointed at (node1's, as on a database host)."""
        return self.config_path("node1")

    # -- processes ---------------------------------------------------------------

    def start_etcd(self) -> None:
        data = self.root / "etcd"
        log = open(self.root / "log" / "etcd.log", "ab")  # noqa: SIM115 - kept by Popen
        self.procs["etcd"] = subprocess.Popen(
            ["etcd", "--name", "etcd0", "--data-dir", str(data),
             "--listen-client-urls", f"http://{ETCD_HOST}:2379",
             "--advertise-client-urls", f"http://{ETCD_HOST}:2379",
             "--listen-peer-urls", f"http://{ETCD_HOST}:2380",
             "--initial-advertise-peer-urls", f"http://{ETCD_HOST}:2380",
             "--initial-cluster", f"etcd0=http://{ETCD_HOST}:2380",
             "--initial-cluster-state", "new", "--heartbeat-interval", "50",
             "--election-timeout", "500"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait("etcd health", lambda: b"true" in urllib.request.urlopen(
            f"http://{ETCD_HOST}:2379/health", timeout=1).read(), 20)

    def start_node(self, name: str) -> None:
        uid, gid = _postgres_ids()
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept by Popen
        self.procs[name] = subprocess.Popen(
            ["patroni", str(self.config_path(name))], user=uid, group=gid,
            extra_groups=[], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.root, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})

    def kill_node(self, name: str) -> None:
        """The node's Patroni and its PostgreSQL die at once (SIGKILL, no clean-up)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)
        self._kill_postmaster(name, signal.SIGKILL)

    def _kill_postmaster(self, name: str, sig: int) -> None:
        pid_file = self.root / "data" / name / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        if sig == signal.SIGKILL:
            _wait(f"{name}'s postmaster gone", lambda: not Path(f"/proc/{pid}").exists(),
                  STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop every node then etcd; SIGKILL what outlives a bounded wait."""
        nodes = [n for n in self.procs if n != "etcd"]
        for name in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[name].pid, signal.SIGTERM)
        for name in nodes:
            proc = self.procs.pop(name)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        for name in NODE_HOSTS:  # a postmaster Patroni left behind (its own session)
            self._kill_postmaster(name, signal.SIGKILL)
        if "etcd" in self.procs:
            proc = self.procs.pop("etcd")
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)

    # -- what Patroni says ---------------------------------------------------------

    def members(self) -> list[dict]:
        """Patroni's /cluster, from the first running node that answers."""
        error: Exception = RuntimeError("no node is running")
        for name, host in NODE_HOSTS.items():
            if name not in self.procs:
                continue
            try:
                with urllib.request.urlopen(f"http://{host}:8008/cluster", timeout=2) as r:
                    return json.load(r)["members"]
            except OSError as exc:
                error = exc
        raise error

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members() if m["role"] == "leader"
                     and m["state"] == "running"), None)

    def wait_healthy(self, timeout: float = BOOT_TIMEOUT_S, *, exclude: str | None = None,
                     ) -> list[dict]:
        """Wait until a leader runs and every other node streams from it."""
        want = len(NODE_HOSTS) - (1 if exclude else 0)

        def ready():
            ms = [m for m in self.members() if m["name"] != exclude]
            leaders = [m for m in ms if m["role"] == "leader" and m["state"] == "running"]
            streaming = [m for m in ms if m["role"] in ("replica", "sync_standby")
                         and m["state"] in ("streaming", "running")
                         and m.get("lag", 1) == 0]
            sync = [m for m in ms if m["role"] == "sync_standby"]
            return ms if (len(leaders) == 1 and len(streaming) == want - 1 and sync) else None

        return _wait("a leader and streaming replicas", ready, timeout, 0.3)

    def heal(self) -> list[dict]:
        """Start every node a test stopped; wait until all stream from one leader."""
        for name in NODE_HOSTS:
            if name not in self.procs:
                self.start_node(name)
        if self.members() and self.leader() is None:
            # A pause left behind would keep the cluster from electing anyone.
            subprocess.run(["patronictl", "-c", str(self.config), "resume", "--wait"],
                           capture_output=True, timeout=60, check=False)
        try:
            # A killed leader may need crash recovery and pg_rewind before it streams.
            return self.wait_healthy(timeout=BOOT_TIMEOUT_S * 1.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}{self.log_tails()}") from None

    def log_tails(self) -> str:
        """The end of every node's and etcd's log, for a failure message."""
        return "".join(f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:]
                       for f in sorted((self.root / "log").glob("*.*")))

    def fault(self, kind: str) -> str:
        """Do ``kind`` for real; return the member it hit.

        ``leader-lost``: the leader's Patroni and PostgreSQL are killed; returns once
        Patroni has elected another leader (within ttl).
        """
        if kind != "leader-lost":
            raise ValueError(f"unknown fault {kind!r}")
        old = self.leader()
        self.kill_node(old)
        self.wait_healthy(timeout=60, exclude=old)
        return old

    def sql(self, name: str, query: str) -> str:
        """Run ``query`` on node ``name`` as postgres through its socket."""
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-XAtq",
             "-h", str(self.root / "sock" / name), "-p", "5432", "-d", "postgres",
             "-c", query], capture_output=True, text=True, check=True, timeout=20,
        ).stdout.strip()


def boot() -> LocalCluster:
    """Start etcd and three nodes; return once a leader and two replicas stream."""
    root = Path(tempfile.mkdtemp(prefix="donna-patroni-"))
    uid, gid = _postgres_ids()
    os.chmod(root, 0o755)  # noqa: S103 - postgres must reach its folders inside
    for sub in ("log", "data", "sock", *(f"log/{n}" for n in NODE_HOSTS),
                *(f"sock/{n}" for n in NODE_HOSTS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.chown(root / sub, uid, gid)
    (root / "data").chmod(0o700)
    for name in NODE_HOSTS:
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(node_config(root, name), sort_keys=False))
        path.chmod(0o600)
        os.chown(path, uid, gid)
    cluster = LocalCluster(root)
    try:
        cluster.start_etcd()
        cluster.start_node("node1")
        _wait("node1 leading", lambda: cluster.leader() == "node1", BOOT_TIMEOUT_S)
        cluster.start_node("node2")
        cluster.start_node("node3")
        cluster.wait_healthy()
    except BaseException as exc:
        logs = cluster.log_tails()
        cluster.stop()
        if isinstance(exc, TimeoutError):
            shutil.rmtree(root, ignore_errors=True)
            raise TimeoutError(f"{exc}{logs}") from None
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster

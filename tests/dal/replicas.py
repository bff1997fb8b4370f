"""A real replicated cluster for the DAL's routing tests, made with the Debian tools.

A throwaway primary (the deployed cluster's roles and passwords, copied with
``pg_dumpall --roles-only``; a migrated database) and two streaming hot standbys made
by ``pg_basebackup -R``: one on its own port (reached through ``DB_READ_PORT``, as the
routing layer's read port would), one on the primary's port but at ``::1`` (the primary
listens on 127.0.0.1 only), so that ``DB_HOST=127.0.0.1,::1`` is a libpq multi-host
list of the two. Every address is in the deploy's server certificate.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from donnadb import db
from donnadb.config import Settings
from donnadb.migrate import apply_migrations
from tests.support import give_deploy_tls, render_database_sql

PRIMARY_PORT = 5481
STANDBY_PORT = 5482


def sh(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True,
                          cwd="/").stdout


def psql(sql: str, *, port: int, host: str = "/var/run/postgresql", dbname: str = "postgres",
         stop_on_error: bool = True) -> str:
    """``sql`` as the postgres superuser (peer, over the cluster's socket)."""
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
           "-d", f"host={host} port={port} dbname={dbname}"]
    if stop_on_error:
        cmd += ["-v", "ON_ERROR_STOP=1"]
    return sh(*cmd, stdin=sql).strip()


@dataclass
class Node:
    name: str
    port: int
    socket_dir: str = "/var/run/postgresql"

    def sql(self, text: str, dbname: str = "postgres") -> str:
        return psql(text, port=self.port, host=self.socket_dir, dbname=dbname)

    @property
    def conf_d(self) -> Path:
        return Path(f"/etc/postgresql/15/{self.name}/conf.d")

    @property
    def data_dir(self) -> Path:
        return Path(f"/var/lib/postgresql/15/{self.name}")

    def ctl(self, action: str, *args: str) -> None:
        sh("pg_ctlcluster", "15", self.name, action, *args)


@dataclass
class ReplicaSet:
    primary: Node
    standby: Node  # 127.0.0.1:STANDBY_PORT
    twin: Node  # [::1]:PRIMARY_PORT
    dbname: str

    def settings(self, base: Settings, **update: object) -> Settings:
        """``base`` aimed at this cluster, reading from the standby through its port."""
        return base.model_copy(update={
            "db_host": "127.0.0.1", "db_port": self.primary.port, "pgbouncer_port": None,
            "db_read_from": "replicas", "db_read_port": self.standby.port, **update})

    def multi_host_settings(self, base: Settings, **update: object) -> Settings:
        """``base`` with DB_HOST the primary and its twin standby (same port)."""
        return self.settings(base, db_host="127.0.0.1,::1", db_read_port=None, **update)

    def wait_replayed(self, *nodes: Node, timeout: float = 20.0) -> None:
        """Until every standby in ``nodes`` replayed all the primary wrote so far."""
        target = self.primary.sql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        for node in nodes or (self.standby, self.twin):
            while node.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") != "t":
                assert time.monotonic() < deadline, f"{node.name} did not replay {target}"
                time.sleep(0.02)

    def empty(self, settings: Settings) -> None:
        with db.connection("migrator", settings=settings, dbname=self.dbname) as conn:
            conn.execute("TRUNCATE users, erasures, chat_sessions, messages, "
                         "user_memory, system_logs")
        self.wait_replayed()


def _new_cluster(node: Node, listen: str, extra: str = "") -> None:
    sh("pg_createcluster", "15", node.name, "-p", str(node.port))
    give_deploy_tls(15, node.name)
    (node.conf_d / "donna-replicas.conf").write_text(
        f"listen_addresses = '{listen}'\nport = {node.port}\n"
        f"unix_socket_directories = '{node.socket_dir}'\n{extra}")


def _standby_of(primary: Node, node: Node, listen: str) -> None:
    _new_cluster(node, listen)
    shutil.rmtree(node.data_dir)
    sh("runuser", "-u", "postgres", "--", "pg_basebackup", "-h", primary.socket_dir,
       "-p", str(primary.port), "-D", str(node.data_dir), "-R", "-X", "stream",
       "--checkpoint=fast")
    node.ctl("start")


def build(settings: Settings) -> ReplicaSet:
    """Make, start and fill the three clusters (about 10 s)."""
    tag = uuid.uuid4().hex[:6]
    primary = Node(f"dalp{tag}", PRIMARY_PORT)
    standby = Node(f"dals{tag}", STANDBY_PORT)
    twin_dir = f"/var/run/postgresql/dalt{tag}"
    twin = Node(f"dalt{tag}", PRIMARY_PORT, socket_dir=twin_dir)
    Path(twin_dir).mkdir()
    shutil.chown(twin_dir, "postgres", "postgres")
    # The deployed cluster's libraries: the bootstrap SQL creates their extensions.
    preload = psql("SHOW shared_preload_libraries", port=settings.db_port)
    rs = ReplicaSet(primary, standby, twin, f"donna_ha_{tag}")
    try:
        _fill(rs, settings, preload)
    except BaseException:
        drop(rs)
        raise
    return rs


def _fill(rs: ReplicaSet, settings: Settings, preload: str) -> None:
    primary, dbname = rs.primary, rs.dbname
    _new_cluster(primary, "127.0.0.1", f"shared_preload_libraries = '{preload}'\n")
    primary.ctl("start")
    # The deployed cluster's roles, password verifiers included (never in argv).
    roles = sh("runuser", "-u", "postgres", "--", "pg_dumpall", "--roles-only", "-p",
               str(settings.db_port))
    psql(roles, port=primary.port, stop_on_error=False)
    primary.sql(f'CREATE DATABASE "{dbname}"')
    primary.sql(render_database_sql(settings), dbname=dbname)
    apply_migrations(settings=rs.settings(settings, db_read_from="primary"), dbname=dbname)
    _standby_of(primary, rs.standby, "127.0.0.1")
    _standby_of(primary, rs.twin, "::1")
    rs.wait_replayed()


def rebuild_twin(rs: ReplicaSet) -> None:
    """A fresh twin standby of the primary (after a test promoted the old one)."""
    sh("pg_dropcluster", "--stop", "15", rs.twin.name)
    shutil.rmtree(rs.twin.conf_d.parent, ignore_errors=True)
    _standby_of(rs.primary, rs.twin, "::1")
    rs.wait_replayed(rs.twin)


def drop(rs: ReplicaSet) -> None:
    for node in (rs.twin, rs.standby, rs.primary):
        subprocess.run(["pg_dropcluster", "--stop", "15", node.name], capture_output=True,
                       check=False)
        shutil.rmtree(node.conf_d.parent, ignore_errors=True)
        shutil.rmtree(node.data_dir, ignore_errors=True)
    shutil.rmtree(rs.twin.socket_dir, ignore_errors=True)

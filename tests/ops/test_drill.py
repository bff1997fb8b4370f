"""The failure drill on a throwaway single-host cluster (never 15/main): it kills the
postmaster for real, starts it again, measures how long writes failed, and finds an
acknowledged write that went missing. The cluster path (Patroni) runs on the fleet;
here only its refusal off the leader, against a stand-in patronictl."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from donnadb import config
from donnadb.cli.main import main
from donnadb.config import load_settings
from donnadb.loadtest import seed
from donnadb.migrate import apply_migrations
from donnadb.ops import drill, drillfault, drillledger
from donnadb.provision.roles import role_statements
from tests.ops.conftest import DONNACTL
from tests.support import (
    give_deploy_tls,
    render_database_sql,
    superuser_psql,
    wait_for,
    without_systemd,
)

#: Ports this module's throwaway cluster may use.
PORTS = range(5480, 5490)
SCALE = seed.Scale(users=40, sessions=120, messages=1_000)
#: A short drill: a few users, seconds of load around the kill.
QUICK = ["--users", "10", "--spawn-rate", "10", "--writers", "4", "--warmup", "3",
         "--settle", "3", "--recovery-timeout", "60"]
DB = "donna_drill"
PRELOAD = "pg_stat_statements, pgaudit"
#: etcd's client and peer ports, Patroni's REST API: this module's, on 127.0.0.1.
ETCD_PORTS = (23790, 23800)
RESTAPI_PORT = 8091
PATRONI_YML = """\
scope: {scope}
name: m1
restapi:
  listen: 127.0.0.1:{restapi}
  connect_address: 127.0.0.1:{restapi}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
  initdb:
    - encoding: UTF8
postgresql:
  pg_hba:
    - local all all peer
    - hostssl all all 127.0.0.1/32 scram-sha-256
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  use_unix_socket: true
  data_dir: {work}/data
  bin_dir: /usr/lib/postgresql/15/bin
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    shared_preload_libraries: '{preload}'
    ssl: 'on'
    ssl_cert_file: {tls}/server.crt
    ssl_key_file: {tls}/server.key
    unix_socket_directories: /var/run/postgresql
"""


def _free_port() -> int:
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                            check=True).stdout
    taken = {int(line.split()[2]) for line in listed.splitlines() if line.strip()}
    for port in PORTS:
        with socket.socket() as probe:
            if port not in taken and probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail(f"no free port in {PORTS}: drop leftover clusters (pg_lsclusters)")


def _install_donna(port: int, tmp: Path, settings, deploy_settings, env: str, **over):
    """Our roles (passwords in a private passfile), a migrated and seeded database, and
    the env file a drill against it reads (DONNADB_HOST_ENV)."""
    passwords = {r.name: uuid.uuid4().hex for r in deploy_settings.roles.values() if r.login}
    superuser_psql("\n".join(role_statements(list(deploy_settings.roles.values()), None)
                             + [f"ALTER ROLE {r} PASSWORD '{p}';" for r, p in passwords.items()]
                             + [f'CREATE DATABASE "{DB}";']), port=port)
    passfile = tmp / "pgpass"
    passfile.write_text("".join(f"*:*:*:{r}:{p}\n" for r, p in passwords.items()))
    passfile.chmod(stat.S_IRUSR | stat.S_IWUSR)
    own = load_settings(db_port=port, db_name=DB, db_passfile=passfile,
                        **over).model_copy(update={"pgbouncer_port": None})
    # The drill's field encryption is the seed's (the host's settings file, as deployed).
    crypto = (f"CRYPTO_ENABLED=true\nCRYPTO_KEK_FILE={own.crypto_kek_file}\n"
              if own.crypto_enabled else "CRYPTO_ENABLED=false\n")
    env_file = tmp / "donnadb.env"
    env_file.write_text(f"DB_HOST=127.0.0.1\nDB_PORT={port}\nDB_NAME={DB}\n"
                        f"DB_PASSFILE={passfile}\nDB_SSLROOTCERT={settings.db_sslrootcert}\n"
                        + crypto + env)
    superuser_psql(render_database_sql(own), dbname=DB, port=port)
    apply_migrations(settings=own, dbname=DB)
    seed.seed(own, SCALE, dbname=DB)
    return {"settings": own, "port": port, "env_file": env_file,
            "env": {**os.environ, "DONNADB_HOST_ENV": str(env_file),
                    "OPS_LOG_FILE": str(tmp / "donnactl.jsonl"), "COLUMNS": "200"},
            "log": tmp / "donnactl.jsonl", "tmp": tmp}


@pytest.fixture(scope="module")
def single_host(settings, deploy_settings, tmp_path_factory):
    """A seeded Debian cluster of its own with the deploy's TLS."""
    tmp = tmp_path_factory.mktemp("drill")
    name, port = f"drill{uuid.uuid4().hex[:6]}", _free_port()
    subprocess.run(["pg_createcluster", "15", name, "-p", str(port)], check=True,
                   capture_output=True, cwd="/")
    try:
        give_deploy_tls(15, name)
        Path(f"/etc/postgresql/15/{name}/conf.d/drill.conf").write_text(
            f"shared_preload_libraries = '{PRELOAD}'\n")
        subprocess.run(["pg_ctlcluster", "15", name, "start"], check=True, cwd="/")
        made = _install_donna(port, tmp, settings, deploy_settings,
                              f"PG_VERSION=15\nPG_CLUSTER={name}\n", pg_cluster=name)
        yield {**made, "name": name}
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True,
                       check=False, cwd="/")
        # pg_dropcluster leaves the config directory holding our conf.d files.
        shutil.rmtree(f"/etc/postgresql/15/{name}", ignore_errors=True)


def _ports_free(*ports: int) -> None:
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken: stop what a previous run left behind")


@pytest.fixture(scope="module")
def patroni_leader(settings, deploy_settings):
    """A real one-member Patroni cluster (Debian's patroni, etcd on its own ports), its
    PostgreSQL holding our seeded database: the leader the cluster drill runs on."""
    port = _free_port()
    _ports_free(*ETCD_PORTS, RESTAPI_PORT)
    # Not pytest's tmp_path: the postgres user must reach it (/tmp/pytest-of-root is 0700).
    work = Path(tempfile.mkdtemp(prefix="donna-drill-patroni-", dir="/var/tmp"))  # noqa: S108
    shutil.chown(work, "postgres", "postgres")
    patroni_yml = work / "patroni.yml"
    patroni_yml.write_text(PATRONI_YML.format(
        scope=f"drill{uuid.uuid4().hex[:6]}", port=port, restapi=RESTAPI_PORT,
        etcd=ETCD_PORTS[0], work=work, preload=PRELOAD, tls=config.DEFAULT_TLS_DIR))
    shutil.chown(patroni_yml, "postgres", "postgres")
    patroni_yml.chmod(0o600)
    procs = []
    with (work / "etcd.log").open("w") as etcd_log, (work / "patroni.log").open("w") as plog:
        try:
            procs.append(subprocess.Popen(
                ["etcd", "--name", "drill", "--data-dir", str(work / "etcd"),
                 "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORTS[0]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORTS[0]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORTS[1]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORTS[1]}",
                 "--initial-cluster", f"drill=http://127.0.0.1:{ETCD_PORTS[1]}"],
                stdout=etcd_log, stderr=subprocess.STDOUT, cwd="/"))
            procs.append(subprocess.Popen(["runuser", "-u", "postgres", "--", "patroni",
                                           str(patroni_yml)], stdout=plog,
                                          stderr=subprocess.STDOUT, cwd="/"))
            deadline = time.monotonic() + 90
            while not _leads(patroni_yml, "m1"):
                assert time.monotonic() < deadline, (work / "patroni.log").read_text()[-3000:]
                time.sleep(1)
            tmp = work / "donna"
            tmp.mkdir(mode=0o700)
            yield _install_donna(port, tmp, settings, deploy_settings,
                                 f"PATRONI_CONFIG={patroni_yml}\n"
                                 f"PG_DATA_DIR={work / 'data'}\n",
                                 patroni_config=patroni_yml, pg_data_dir=work / "data")
        finally:
            for proc in reversed(procs):  # Patroni stops its PostgreSQL, then etcd goes
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(work, ignore_errors=True)


def _leads(config: Path, member: str) -> bool:
    try:
        lead = drillfault.leader(drillfault.members(config))
    except drillfault.FaultFailed:
        return False
    return lead is not None and lead.name == member and lead.state == "running"


def _pid(cluster) -> int:
    return drillfault.postmaster_pid(cluster["settings"].pg_data_dir)


def _donnactl(cluster, *args: str, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([DONNACTL, "cluster", "drill", *args], capture_output=True,
                          text=True, env=cluster["env"], input=input, timeout=300, cwd="/")


def test_dry_run_and_no_answer_leave_postgresql_alone(single_host):
    before = _pid(single_host)
    done = _donnactl(single_host, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["target"] == "single"
    data_dir = single_host["settings"].pg_data_dir
    assert doc["action"].startswith(f"SIGKILL the postmaster of {data_dir}")
    # How this host starts it: systemd's unit where systemd is PID 1, else pg_ctlcluster.
    assert " ".join(drillfault.start_command(15, single_host["name"])) in doc["action"]
    refused = _donnactl(single_host, *QUICK, input="n\n")
    assert refused.returncode == 130, refused.stderr
    assert _pid(single_host) == before


def test_the_drill_kills_postgresql_and_loses_no_acknowledged_write(single_host):
    before = _pid(single_host)
    out = single_host["tmp"] / "cli-run"
    done = _donnactl(single_host, *QUICK, "--rounds", "2", "--yes", "--json", "--out",
                     str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert _pid(single_host) != before  # killed and started again for real
    assert report["ok"] and report["lost"] == 0 and report["stopped"] is None
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert r["lost"] == 0 and r["downtime_s"] >= 0 and r["restart_s"] > 0
        assert r["acknowledged"] > 50
        assert r["requests"]["before"]["requests"] > 0 and r["requests"]["before"]["p95_ms"]
        assert r["requests"]["after"]["requests"] > 0
        assert (out / f"round-{r['round']}" / "requests.log").stat().st_size > 0
        # An outage is reported only where writes failed. None may fail at all: the
        # DAL's pool checks a connection before handing it out and opens a new one, so
        # only a write in flight at the kill fails, and a quick restart under systemd
        # can fall between two (the new postmaster above proves the fault; the cluster
        # drills on the fleet assert the failed-write window).
        assert r["downtime_s"] == 0 or r["ledger_failed"] > 0, r
    downtimes = sorted(r["downtime_s"] for r in report["rounds"])
    assert report["range"]["downtime_s"] == {"min": downtimes[0], "max": downtimes[1]}
    # the drill's chat is gone, and the kill is in the audit log
    assert superuser_psql("SELECT count(*) FROM chat_sessions WHERE chat_id LIKE 'drill\\_%'",
                          dbname=DB, port=single_host["port"]) == "0"
    assert single_host["log"].read_text().count("failure drill: postmaster killed") >= 2


def test_a_missing_acknowledged_write_fails_the_drill(single_host, monkeypatch, capsys):
    """donnactl's own main(), with a hook that deletes one acknowledged message between
    the fault and the read-back: the drill must notice and exit 1."""
    planted: list[str] = []

    def delete_one(chat_id: str, acked: list[str]) -> None:
        planted.append(acked[len(acked) // 2])
        superuser_psql(f"DELETE FROM messages WHERE id = '{planted[0]}'", dbname=DB,
                       port=single_host["port"])

    monkeypatch.setattr(drill, "run", functools.partial(drill.run, check_hook=delete_one))
    # The command's settings and Locust's come from the throwaway cluster's env file.
    monkeypatch.setattr(config, "HOST_ENV_FILE", single_host["env_file"])
    monkeypatch.setenv("DONNADB_HOST_ENV", str(single_host["env_file"]))
    monkeypatch.setenv("OPS_LOG_FILE", str(single_host["log"]))
    monkeypatch.setattr(sys, "argv", ["donnactl", "cluster", "drill", *QUICK, "--writers",
                                      "2", "--yes", "--json", "--out",
                                      str(single_host["tmp"] / "lost")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["rounds"][0]["lost_ids"] == planted
    assert "1 acknowledged write(s) missing on the leader" in err
    assert len(err.strip().splitlines()) == 1


def test_on_a_patroni_leader_patroni_restarts_the_killed_postmaster(patroni_leader):
    before = _pid(patroni_leader)
    done = _donnactl(patroni_leader, *QUICK, "--fault", "postmaster", "--rejoin-timeout",
                     "90", "--yes", "--json", "--out", str(patroni_leader["tmp"] / "run"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    (r,) = report["rounds"]
    assert report["target"] == "cluster" and report["ok"] and r["lost"] == 0
    assert _pid(patroni_leader) != before  # Patroni, not the drill, started it again
    assert r["restart_s"] is None and r["downtime_s"] > 0 and r["acknowledged"] > 50
    assert r["leader_before"] == r["leader_after"] == "m1"
    assert r["rejoined"] is True and r["rejoin_s"] > 0
    # Patroni publishes the restarted member's timeline (TL) a moment after it leads
    # again: wait for it (bounded) before reading it.
    def timeline_published():
        (member,) = drillfault.members(patroni_leader["settings"].patroni_config)
        return member if member.timeline is not None else None

    member = wait_for("the member's timeline in patronictl list", timeline_published,
                      timeout=30, interval=1)
    assert member.timeline >= 2  # crash recovery, then promoted again: a new timeline


@pytest.fixture
def stand_in_cluster(tmp_path):
    """A Patroni config naming this member db1 and a patronictl printing ``members``."""
    config = tmp_path / "15-main.yml"
    config.write_text("scope: donna\nname: db1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def cluster(leader: str) -> dict[str, str]:
        members = [{"Cluster": "donna", "Member": name, "Host": host, "State": "running",
                    "Role": "Leader" if name == leader else "Replica", "TL": 2}
                   for name, host in (("db1", "10.0.0.1"), ("db2", "10.0.0.2"))]
        fake = bin_dir / "patronictl"
        fake.write_text(f"#!/bin/sh\necho '{json.dumps(members)}'\n")
        fake.chmod(0o755)
        return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "PATRONI_CONFIG": str(config), "OPS_LOG_FILE": str(tmp_path / "log.jsonl")}

    return cluster


def _drill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DONNACTL, "cluster", "drill", *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")


def test_off_the_leader_the_drill_refuses_naming_the_leader(stand_in_cluster):
    env = stand_in_cluster(leader="db2")
    done = _drill(env, "--dry-run", "--yes")
    assert done.returncode == 11
    assert "not the leader: run the drill on the leader db2 (10.0.0.2)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # a planned switchover may start anywhere
    planned = _drill(env, "--switchover", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["action"] == ("switch over from the leader db2 "
                                                    "(patronictl switchover)")


def test_on_the_leader_the_drill_plans_the_fault(stand_in_cluster):
    env = stand_in_cluster(leader="db1")
    done = _drill(env, "--fault", "postmaster", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["target"] == "cluster"
    assert doc["action"] == "SIGKILL the postmaster of the leader db1 (Patroni restarts it)"


@without_systemd
def test_the_node_fault_needs_systemd(stand_in_cluster):
    done = _drill(stand_in_cluster(leader="db1"), "--dry-run")
    assert done.returncode == 11
    assert "systemd, which is not PID 1 here; use --fault postmaster" in done.stderr


def _attempt(start: float, end: float | None, ok: bool) -> drillledger.Attempt:
    return drillledger.Attempt(start, end, "id" if ok else None, None if ok else "DatabaseError")


def test_the_outage_runs_from_the_first_failed_write_to_the_next_acknowledged_one():
    attempts = [_attempt(9.0, 9.1, True), _attempt(10.2, 10.3, False),
                _attempt(10.5, 10.6, False), _attempt(12.0, 12.4, True)]
    assert drillledger.outage(attempts, 10.0, 20.0) == (10.2, 12.4)
    # a write that hangs past the timeout fails, even if it is answered much later
    hung = [_attempt(10.1, 10.1 + drillledger.WRITE_TIMEOUT + 1, True), _attempt(11.0, 11.2, True)]
    assert drillledger.outage(hung, 10.0, 30.0) == (10.1, 11.2)
    assert drillledger.outage([_attempt(10.1, None, False)], 10.0, 11.0) == (10.1, None)
    assert drillledger.outage([_attempt(10.1, 10.2, True)], 10.0, 11.0) == (10.0, 10.0)


def test_latencies_are_split_at_the_fault_and_the_recovery():
    # (end time, failed, ms), as Locust logs them; the request at 5.5 hangs until 8.5
    rows = [(t + t / 100, False, 10.0 * t) for t in range(1, 11)] + [(8.5, True, 3000.0)]
    split = drillledger.split_requests(rows, loaded_at=2, fault_at=5, recovered_at=7)
    assert split["before"] == {"requests": 3, "failed": 0, "p95_ms": 40.0}
    assert split["during"] == {"requests": 3, "failed": 1, "p95_ms": 60.0}
    assert split["after"] == {"requests": 4, "failed": 0, "p95_ms": 100.0}
    assert split["total"] == {"requests": 10, "failed": 1, "failed_pct": 10.0}


def test_the_table_shows_each_round_and_the_range():
    from donnadb.cli.drill import _print
    from donnadb.cli.output import console

    split = drillledger.split_requests([(1.0, False, 5.0), (9.0, False, 8.0)], 0, 3, 6)
    rounds = [drill.RoundResult(round=n, action="a", downtime_s=float(n), acknowledged=9,
                                lost=n - 1, lost_ids=[], ledger_failed=1,
                                ledger_failed_in_window=1, ledger_errors={},
                                requests=split, restart_s=0.5) for n in (1, 2)]
    with console.capture() as captured:
        _print(drill.DrillReport("single", "kill", rounds))
    text = captured.get()
    assert "round 1" in text and "round 2" in text
    assert "writes back after: 1-2 s over 2 rounds" in text
    assert re.search(r"lost writes\s*│\s*0\s*│\s*1\s*│", text), text
    assert re.search(r"restart \(s\)\s*│\s*0.5\s*│\s*0.5\s*│", text), text


def test_an_old_leader_that_does_not_rejoin_fails_the_drill():
    split = drillledger.split_requests([], 0, 1, 2)
    stuck = drill.RoundResult(round=1, action="a", downtime_s=3.0, acknowledged=9, lost=0,
                              lost_ids=[], ledger_failed=1, ledger_failed_in_window=1,
                              ledger_errors={}, requests=split, leader_before="db1",
                              leader_after="db2", rejoined=False)
    report = drill.DrillReport("cluster", "freeze", [stuck])
    assert report.to_dict()["ok"] is False
    with pytest.raises(drill.DrillFailed, match="old leader db1 did not rejoin"):
        drill.raise_for_failure(report)
    stuck.rejoined, stuck.rejoin_s = True, 20.0
    drill.raise_for_failure(report)
    assert report.to_dict()["ok"] is True

"""`status`, `health` and `metrics` know the cluster when PATRONI_CONFIG is set, and the
scheduled jobs skip on a replica; both against the real local Patroni cluster."""

from __future__ import annotations

import json
import os
import signal
import time

from prometheus_client.parser import text_string_to_metric_families

from donnadb.config import load_settings
from tests.ops.test_health import CALM


def _checks(run) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(run.stdout)["checks"]}


def _cluster_check_until(cli, env, text: str, timeout: float = 25) -> tuple[dict, int]:
    """Patroni learns of a change within its ttl: poll `health` until ``text`` shows."""
    deadline = time.monotonic() + timeout
    while True:
        run = cli("health", "--json", env=env)
        check = _checks(run)["cluster"]
        if text in check["summary"] or time.monotonic() > deadline:
            return check, run.returncode
        time.sleep(1)


def test_status_lists_the_members(cli, in_cluster, healthy):
    report = json.loads(cli("status", "--json", env=in_cluster).stdout)
    assert report["cluster"]["leader"] == healthy.leader()
    assert len(report["cluster"]["members"]) == 3
    text = cli("status", env=in_cluster)
    assert text.returncode == 0 and f"leader {healthy.leader()}" in text.stdout


def test_single_host_status_and_health_have_no_cluster(cli):
    report = json.loads(cli("status", "--json", env={"PATRONI_CONFIG": ""}).stdout)
    assert report["cluster"] is None
    run = cli("health", "--json", env={**CALM, "PATRONI_CONFIG": ""})
    assert "cluster" not in _checks(run)


def test_health_is_ok_on_a_healthy_cluster_and_warns_when_paused(cli, in_cluster, healthy):
    env = {**CALM, **in_cluster}
    run = cli("health", "--json", env=env)
    assert run.returncode == 0, run.stdout
    assert _checks(run)["cluster"]["severity"] == "OK"
    assert cli("cluster", "pause", "--yes", env=in_cluster).returncode == 0
    try:
        run = cli("health", env=env)
        assert run.returncode == 1, run.stdout
        assert run.stdout.startswith("DONNADB WARNING - cluster") and "paused" in run.stdout
    finally:
        assert cli("cluster", "resume", env=in_cluster).returncode == 0


def test_health_warns_when_a_member_is_missing(cli, in_cluster, healthy):
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    healthy.kill_node(replica)
    check, code = _cluster_check_until(cli, {**CALM, **in_cluster}, "2 of 3 members running")
    assert code == 1 and check["severity"] == "WARNING", check
    assert "2 of 3 members running" in check["summary"], check


def test_health_warns_when_a_replica_lags(cli, in_cluster, healthy):
    # The asynchronous replica's WAL receiver is frozen while the leader moves on a WAL
    # segment (16 MB) twice.
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    leader = healthy.leader()
    receiver = int(healthy.sql(replica, "SELECT pid FROM pg_stat_wal_receiver"))
    os.kill(receiver, signal.SIGSTOP)
    try:
        for _ in range(2):
            healthy.sql(leader, "CREATE TABLE IF NOT EXISTS lagger (x text); "
                                "INSERT INTO lagger VALUES ('x'); SELECT pg_switch_wal()")
        env = {**CALM, **in_cluster, "HEALTH_CLUSTER_LAG_WARN_BYTES": str(1024 * 1024)}
        check, code = _cluster_check_until(cli, env, f"{replica} lags")
        assert code == 1 and check["severity"] == "WARNING", check
        assert f"{replica} lags" in check["summary"], check
    finally:
        os.kill(receiver, signal.SIGCONT)
        healthy.sql(leader, "DROP TABLE IF EXISTS lagger")
    healthy.wait_healthy()


def test_metrics_export_the_cluster(cli, in_cluster, healthy):
    run = cli("metrics", "show", env=in_cluster)
    assert run.returncode == 0, run.stderr
    samples = {s.name + str(sorted(s.labels.items())): s.value
               for fam in text_string_to_metric_families(run.stdout) for s in fam.samples}
    leader = healthy.leader()
    assert samples["donnadb_cluster_members[]"] == 3
    assert samples["donnadb_cluster_paused[]"] == 0
    assert samples["donnadb_cluster_timeline[]"] >= 1
    assert samples[f"donnadb_cluster_leader[('member', '{leader}')]"] == 1
    replicas = [m["name"] for m in healthy.members() if m["name"] != leader]
    for name in replicas:
        assert samples[f"donnadb_cluster_leader[('member', '{name}')]"] == 0
        assert samples[f"donnadb_cluster_replica_lag_bytes[('member', '{name}')]"] == 0


def _replica_env(healthy, in_cluster) -> tuple[str, dict[str, str]]:
    """donnactl pointed at a replica's PostgreSQL through its socket (trust, no password)."""
    s = load_settings()
    leader = healthy.leader()
    for kind in ("readonly", "migrator", "app", "backup"):
        role = s.role(kind)
        healthy.sql(leader, f"DO $$ BEGIN CREATE ROLE {role} LOGIN; "
                            "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    return replica, {**in_cluster, "DB_HOST": str(healthy.root / "sock" / replica),
                     "DB_PORT": "5432", "DB_NAME": "postgres"}


def test_scheduled_jobs_skip_on_a_replica(cli, in_cluster, healthy):
    replica, env = _replica_env(healthy, in_cluster)
    leader = healthy.leader()
    # The restore check of a backup needs a writable server too (it creates a database).
    for job in (("partitions", "maintain", "--yes"), ("retention", "run", "--yes"),
                ("vacuum", "run", "--yes"), ("backup", "verify", "latest", "--restore")):
        run = cli(*job, "--json", env=env)
        assert run.returncode == 0, (job, run.stdout, run.stderr)
        doc = json.loads(run.stdout)
        assert doc["skipped"] is True and doc["leader"] == leader, doc
        text = cli(*job, env=env)
        assert text.returncode == 0
        assert text.stdout.strip() == f"skipped: this node is a replica (leader: {leader})"
    log = cli.log_file.read_text()
    assert f"skipped: this node is a replica (leader: {leader})" in log


def test_scheduled_jobs_skip_on_a_replica_without_patroni(cli, in_cluster, healthy):
    replica, env = _replica_env(healthy, in_cluster)
    run = cli("retention", "run", "--yes", env={**env, "PATRONI_CONFIG": ""})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("skipped: this node is a replica (leader: ")

"""On a cluster one member takes the scheduled backups (a healthy replica, else the
leader) and the others skip; the restore drill runs on the leader. Against the real
local Patroni cluster, and the choice itself over the member lists patronictl gives."""

from __future__ import annotations

import json

from donnadb.ops.cluster import backup_member
from tests.cluster.localcluster import NODE_HOSTS
from tests.cluster.test_cluster_status import _replica_env

MIB = 1024 * 1024


def _member(name: str, role: str, state: str = "streaming", lag: int | None = 0) -> dict:
    return {"name": name, "role": role, "state": state, "lag_bytes": lag}


def test_the_backup_member_is_the_first_healthy_replica_within_the_lag_bound():
    ms = [_member("c", "leader", "running"), _member("b", "sync_standby"),
          _member("a", "replica", lag=64 * MIB)]
    assert backup_member(ms, 16 * MIB) == "b"  # a lags too far behind
    assert backup_member(ms, 128 * MIB) == "a"
    ms[1] = _member("b", "sync_standby", "stopped")
    ms[2] = _member("a", "replica", lag=None)  # lag unknown: not trusted
    assert backup_member(ms, 128 * MIB) == "c"  # no healthy replica: the leader
    assert backup_member([_member("c", "leader", "stopped")], 16 * MIB) is None


def test_only_the_backup_member_takes_and_checks_the_backups(cli, healthy, tmp_path):
    leader = healthy.leader()
    chosen = min(name for name in NODE_HOSTS if name != leader)
    empty = {"BACKUP_REPO_DIR": str(tmp_path / "empty"), "BACKUP_S3_BUCKET": "",
             "PGBACKREST_ENABLED": "false"}
    for name in NODE_HOSTS:
        env = {**empty, "PATRONI_CONFIG": str(healthy.config_path(name))}
        if name == chosen:
            # It goes on: the check reports this (empty) repository and fails.
            run = cli("backup", "check", "--if-backup-member", "--json", env=env)
            assert run.returncode == 8, (run.stdout, run.stderr)
            assert "skipped" not in json.loads(run.stdout)
            continue
        for job in (("backup", "create"), ("backup", "check")):
            run = cli(*job, "--if-backup-member", "--json", env=env)
            assert run.returncode == 0, (name, job, run.stderr)
            assert json.loads(run.stdout) == {
                "skipped": True, "reason": "backup_member", "member": chosen,
                "message": f"skipped: {chosen} takes the cluster's backups"}
        assert not list((tmp_path / "empty").glob("*")), "a skipped member wrote a backup"
    # Without the flag (an operator's own run) any member checks its own repository.
    env = {**empty, "PATRONI_CONFIG": str(healthy.config_path(leader))}
    run = cli("backup", "check", "--json", env=env)
    assert run.returncode == 8 and "skipped" not in json.loads(run.stdout)


def test_the_leader_without_a_backup_or_s3_skips_the_restore_drill(cli, healthy, tmp_path):
    leader = healthy.leader()
    _, env = _replica_env(healthy, {"PATRONI_CONFIG": str(healthy.config_path(leader))})
    env = {**env, "DB_HOST": str(healthy.root / "sock" / leader),
           "BACKUP_REPO_DIR": str(tmp_path / "empty"), "BACKUP_S3_BUCKET": ""}
    run = cli("backup", "verify", "latest", "--restore", "--json", env=env)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["skipped"] is True and doc["reason"] == "no_backup_here", doc
    # A single host with no backup still fails: nothing else would take one.
    single = cli("backup", "verify", "latest", "--restore", "--json",
                 env={"BACKUP_REPO_DIR": str(tmp_path / "empty"), "BACKUP_S3_BUCKET": ""})
    assert single.returncode != 0 and "skipped" not in single.stdout

"""`donnactl cluster ...` against the real local Patroni cluster (tests/cluster/localcluster.py)."""

from __future__ import annotations

import json
import time

import pytest

from donnadb.config import load_settings
from donnadb.errors import ClusterError
from donnadb.ops import cluster as ops_cluster


def _json(run) -> dict:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _one_line_error(run, code: int, *needles: str) -> str:
    assert run.returncode == code, (run.stdout, run.stderr)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("verb", ["list", "history", "switchover --yes",
                                  "failover --candidate x --yes", "restart --yes",
                                  "reinit x --yes", "pause --yes", "resume"])
def test_every_verb_refuses_outside_a_cluster(cli, verb):
    run = cli("cluster", *verb.split(), "--json", env={"PATRONI_CONFIG": ""})
    _one_line_error(run, 3, "not in a Patroni cluster (PATRONI_CONFIG is not set)",
                    "set ha = True in group_data and deploy")


def test_a_missing_config_file_is_refused(cli, tmp_path):
    run = cli("cluster", "list", env={"PATRONI_CONFIG": str(tmp_path / "nope.yml")})
    _one_line_error(run, 3, "nope.yml", "does not exist")


def test_list_shows_the_leader_and_streaming_replicas(cli, in_cluster, healthy):
    view = _json(cli("cluster", "list", "--json", env=in_cluster))
    assert view["cluster"] == "donna-test"
    assert view["paused"] is False and view["leader_running"] is True
    roles = sorted(m["role"] for m in view["members"])
    assert roles == ["leader", "replica", "sync_standby"]
    assert view["leader"] == healthy.leader()
    for m in view["members"]:
        assert set(m) >= {"name", "host", "role", "state", "timeline", "lag_bytes"}
        if m["role"] != "leader":
            assert m["lag_bytes"] == 0
    text = cli("cluster", "list", env=in_cluster)
    assert text.returncode == 0 and view["leader"] in text.stdout


def test_history_is_a_list_of_timeline_switches(cli, in_cluster):
    doc = _json(cli("cluster", "history", "--json", env=in_cluster))
    assert isinstance(doc["history"], list)
    for row in doc["history"]:
        assert set(row) == {"timeline", "lsn", "reason", "timestamp", "new_leader"}


def test_a_candidate_that_is_not_a_member_is_refused(cli, in_cluster, healthy):
    before = healthy.leader()
    run = cli("cluster", "switchover", "--candidate", "node9", "--yes", env=in_cluster)
    _one_line_error(run, 1, "node9 is not a member", "node1")
    assert healthy.leader() == before


def test_failover_while_the_leader_runs_needs_force(cli, in_cluster, healthy):
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    run = cli("cluster", "failover", "--candidate", replica, "--yes", env=in_cluster)
    _one_line_error(run, 1, "is running", "switchover")


def test_what_patronictl_refuses_comes_back_as_one_line(cli, in_cluster, healthy):
    # synchronous_mode: Patroni only switches over to the synchronous standby.
    leader = healthy.leader()
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    run = cli("cluster", "switchover", "--candidate", replica, "--yes", env=in_cluster)
    _one_line_error(run, 1, "patronictl switchover refused")
    assert healthy.leader() == leader


def test_switchover_dry_run_changes_nothing(cli, in_cluster, healthy):
    leader = healthy.leader()
    plan = _json(cli("cluster", "switchover", "--dry-run", "--json", env=in_cluster))
    assert plan["dry_run"] is True and plan["old_leader"] == leader
    assert "switchover --leader" in plan["command"] and plan["candidate"] != leader
    assert healthy.leader() == leader


def test_switchover_asks_unless_yes(cli, in_cluster, healthy):
    leader = healthy.leader()
    run = cli("cluster", "switchover", env=in_cluster, input="n\n")
    assert run.returncode != 0
    assert healthy.leader() == leader


def test_switchover_moves_the_leader_to_the_sync_standby(cli, in_cluster, healthy):
    old = healthy.leader()
    sync = next(m["name"] for m in healthy.members() if m["role"] == "sync_standby")
    result = _json(cli("cluster", "switchover", "--yes", "--json", env=in_cluster))
    assert result["old_leader"] == old and result["new_leader"] == sync
    assert 0 < result["seconds"] < 40
    assert healthy.leader() == sync
    # Patroni's history is what its leader last recorded, in its next cycle (loop_wait).
    deadline = time.monotonic() + 30
    history = _json(cli("cluster", "history", "--json", env=in_cluster))["history"]
    while not history and time.monotonic() < deadline:
        time.sleep(1)
        history = _json(cli("cluster", "history", "--json", env=in_cluster))["history"]
    assert history and history[-1]["new_leader"] == sync, history
    audit = [json.loads(ln) for ln in cli.log_file.read_text().splitlines()]
    assert any(a.get("context", {}).get("command") == "cluster switchover"
               and a["context"].get("exit_code") == 0 for a in audit)


def test_pause_and_resume(cli, in_cluster, healthy):
    dry = _json(cli("cluster", "pause", "--dry-run", "--json", env=in_cluster))
    assert dry["dry_run"] is True
    assert _json(cli("cluster", "list", "--json", env=in_cluster))["paused"] is False
    assert _json(cli("cluster", "pause", "--yes", "--json", env=in_cluster))["paused"] is True
    try:
        assert _json(cli("cluster", "list", "--json", env=in_cluster))["paused"] is True
        again = cli("cluster", "pause", "--yes", env=in_cluster)
        _one_line_error(again, 1, "already paused")
    finally:
        resumed = _json(cli("cluster", "resume", "--json", env=in_cluster))
    assert resumed["paused"] is False


def test_reinit_rebuilds_a_replica_and_refuses_the_leader(cli, in_cluster, healthy):
    leader = healthy.leader()
    refused = cli("cluster", "reinit", leader, "--yes", env=in_cluster)
    _one_line_error(refused, 1, "is the leader")
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    marker = healthy.root / "data" / replica / "donna-reinit-marker"
    marker.write_text("gone after a reinit")
    result = _json(cli("cluster", "reinit", replica, "--yes", "--json", env=in_cluster,
                       timeout=120))
    assert result["member"] == replica
    assert not marker.exists()
    healthy.wait_healthy()


def test_restart_restarts_postgres_on_a_member(cli, in_cluster, healthy):
    replica = next(m["name"] for m in healthy.members() if m["role"] == "replica")
    before = healthy.sql(replica, "SELECT pg_postmaster_start_time()")
    dry = _json(cli("cluster", "restart", replica, "--dry-run", "--json", env=in_cluster))
    assert dry["dry_run"] is True and healthy.sql(
        replica, "SELECT pg_postmaster_start_time()") == before
    _json(cli("cluster", "restart", replica, "--yes", "--json", env=in_cluster, timeout=120))
    healthy.wait_healthy()
    assert healthy.sql(replica, "SELECT pg_postmaster_start_time()") != before


def test_primary_lost_fails_over_and_the_old_leader_rejoins(cli, in_cluster, healthy):
    old = healthy.leader()
    healthy.kill_node(old)
    ms = healthy.wait_healthy(timeout=60, exclude=old)
    new = next(m["name"] for m in ms if m["role"] == "leader")
    assert new != old
    view = _json(cli("cluster", "list", "--json", env=in_cluster))
    assert view["leader"] == new
    healthy.start_node(old)
    ms = healthy.wait_healthy(timeout=60)
    assert {m["name"]: m["role"] for m in ms}[old] in ("replica", "sync_standby")
    view = _json(cli("cluster", "list", "--json", env=in_cluster))
    assert view["leader"] == new and len(view["members"]) == 3


def test_library_refuses_switchover_without_a_healthy_sync_standby(healthy, monkeypatch):
    monkeypatch.setenv("PATRONI_CONFIG", str(healthy.config))
    s = load_settings()
    sync = next(m["name"] for m in healthy.members() if m["role"] == "sync_standby")
    healthy.kill_node(sync)
    try:
        # Until Patroni picks the other replica as sync, there is no healthy sync standby.
        with pytest.raises(ClusterError, match="no healthy synchronous standby|patronictl"):
            ops_cluster.switch(s, "switchover", None)
    finally:
        healthy.start_node(sync)


def test_failover_promotes_the_candidate_when_the_leader_is_lost(cli, in_cluster, healthy):
    # Paused, Patroni does not fail over by itself: the operator's failover does it.
    assert cli("cluster", "pause", "--yes", env=in_cluster).returncode == 0
    try:
        old = healthy.leader()
        sync = next(m["name"] for m in healthy.members() if m["role"] == "sync_standby")
        healthy.kill_node(old)
        result = _json(cli("cluster", "failover", "--candidate", sync, "--force", "--yes",
                           "--json", env=in_cluster, timeout=90))
        assert result["old_leader"] == old and result["new_leader"] == sync
        assert healthy.leader() == sync
    finally:
        assert cli("cluster", "resume", env=in_cluster).returncode == 0

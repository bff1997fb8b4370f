"""A minor update of the deployed cluster, for real: the members go back to the older
minor version (15.18 from bookworm), then `donnactl cluster update` runs on each replica
and last on the leader, which switches over; the application's writes through the router
go on the whole time.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.fleet.ha.conftest import PATRONICTL, Cluster, all_streaming
from tests.fleet.test_app import run_script

PACKAGES = ("postgresql-15", "postgresql-client-15", "libpq5", "libpq-dev")
SCOPE_CMD = f"{PATRONICTL} list --format json"
#: Where the writer's stop file is, inside the application host (not its /tmp tmpfs).
STOP_DIR = "/usr/local/lib/donnadb-fleet"


def _policy(member, package: str) -> tuple[str, str, list[str]]:
    out = member.run(f"LC_ALL=C apt-cache policy {package}").stdout
    lines = [ln.split() for ln in out.splitlines()]
    installed = next(w[1] for w in lines if w[:1] == ["Installed:"])
    candidate = next(w[1] for w in lines if w[:1] == ["Candidate:"])
    table = [w[-2] if w[0] == "***" else w[0] for w in lines
             if len(w) >= 2 and w[-1].isdigit() and w[0][:1] in "0123456789*"]
    return installed, candidate, table


def _go_back(member, old: str) -> None:
    """Install the older packages on ``member`` (nothing restarted: Patroni owns it)."""
    wanted = " ".join(f"{p}={old}" for p in PACKAGES
                      if _policy(member, p)[0] not in ("(none)", old))
    if wanted:
        member.run("DEBIAN_FRONTEND=noninteractive SYSTEMD_OFFLINE=1 apt-get install -y -q "
                   f"--allow-downgrades {wanted}", timeout=600)


def _versions(cluster: Cluster) -> dict[str, str]:
    leader = cluster.member(cluster.leader())
    scope = json.loads(leader.run(SCOPE_CMD).stdout)[0]["Cluster"]
    out = leader.run(f"{PATRONICTL} version {scope}").stdout
    return {ln.split(":")[0]: ln.rsplit(" ", 1)[-1] for ln in out.splitlines()
            if "PostgreSQL" in ln}


def _update(member) -> dict:
    done = member.run("cd /root && donnactl cluster update --yes --json", check=False,
                      timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_replicas_then_the_leader_update_while_the_app_writes(cluster: Cluster):
    new, old = _policy(cluster.members[0], "postgresql-15")[1], None
    table = _policy(cluster.members[0], "postgresql-15")[2]
    old = next(v for v in table if v != new)
    with ThreadPoolExecutor(len(cluster.members)) as pool:
        list(pool.map(lambda m: _go_back(m, old), cluster.members))
    leader = cluster.member(cluster.leader())
    scope = json.loads(leader.run(SCOPE_CMD).stdout)[0]["Cluster"]
    leader.run(f"{PATRONICTL} restart {scope} --force", timeout=300)
    cluster.wait(all_streaming, what="every member restarted onto the older version")
    old_minor = old.split("-")[0]
    assert set(_versions(cluster).values()) == {old_minor}

    marker = f"upd{uuid.uuid4().hex[:8]}"
    stop = f"{STOP_DIR}/stop-{marker}"
    with ThreadPoolExecutor(1) as pool:
        writes = pool.submit(run_script, cluster.app, "ha/update_writer.py", marker, stop,
                             "600")
        try:
            first_leader = cluster.leader()
            for member in cluster.members:
                if member.name != first_leader:
                    result = _update(member)
                    assert result["mode"] == "replica" and result["restarted"] is True
                    assert result["after"]["server_version"] == new.split("-")[0]
                    assert result["after"]["packages"]["postgresql-15"] == new
                    cluster.wait(all_streaming, what=f"{member.name} streaming again")
            result = _update(cluster.member(first_leader))
            assert result["mode"] == "leader"
            assert result["switchover"]["old_leader"] == first_leader
            assert result["after"]["server_version"] == new.split("-")[0]
            cluster.wait(all_streaming, what="the old leader streaming as a replica")
        finally:
            (cluster.app.root / stop.lstrip("/")).write_text("")
        written = writes.result(timeout=120)

    assert cluster.leader() != first_leader
    assert set(_versions(cluster).values()) == {new.split("-")[0]}
    # The application kept writing: nothing acknowledged was lost, and it writes again.
    assert written["acknowledged"] > 0 and written["lost"] == [], written
    assert written["ok_since_last_failure"] > 0, written
    again = _update(cluster.member(first_leader))
    assert again["nothing_to_do"] is True

"""The load test from the application host against the database host, through
PgBouncer over TLS: the SLO gate passes."""

from __future__ import annotations

import json

from tests.fleet.conftest import Fleet

#: Bounded: 100 users for one minute after the ramp (the plan's 100+ concurrent users).
ARGS = "--users 100 --spawn-rate 50 --duration 60s --processes 1"


def test_the_gate_passes_from_the_app_host(fleet: Fleet):
    # Seeding is an operator's job on the database host (the migrator's credential).
    fleet.db.run("donnactl loadtest seed --scale small --json", timeout=900)
    done = fleet.app.run(f"donnactl loadtest run {ARGS} --out /root/loadtest --json",
                         check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["verdict"]["passed"] is True, result["verdict"]
    assert result["options"]["pgbouncer_port"] == 6432
    # The first burst waits for PgBouncer's server connections (TLS, SCRAM, one at a
    # time): the default warm-up leaves it out of the verdict.
    assert result["options"]["warmup"] == 10
    checks = {c["what"]: c for c in result["verdict"]["checks"]}
    assert checks["failed requests"]["value"] == 0
    assert any(name.startswith("p95") and c["ok"] for name, c in checks.items())
    assert "requests after ramp-up" not in checks  # that check appears only when 0

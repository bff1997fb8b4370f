"""The application host uses its database host as the application will: the DAL over
TLS through PgBouncer, with only its own credential."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

from tests.fleet.conftest import Fleet
from tests.hosts import machine

HERE = Path(__file__).parent


def run_as_app(fleet: Fleet, script: str, *args: str, check: bool = True) -> dict:
    """tests/fleet/``script`` run on the app host by donna-app with the shipped venv; its
    JSON output."""
    return run_script(fleet.app, script, *args, check=check)


def run_script(app: machine.Host, script: str, *args: str, check: bool = True,
               env: str = "") -> dict:
    """tests/fleet/``script`` run on ``app`` by donna-app with the shipped venv (``env``:
    NAME=value words laid over its settings); its JSON output."""
    # Not /tmp: the host mounts its own tmpfs there.
    inside = f"/usr/local/lib/donnadb-fleet/{script}"
    target = app.root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((HERE / script).read_text())
    target.chmod(0o644)
    quoted = " ".join(shlex.quote(a) for a in args)
    done = app.run(f"runuser -u donna-app -- env {env} /opt/donnadb/venv/bin/python {inside} "
                   f"{quoted}", check=False, cwd="/")
    assert done.returncode == 0 or not check, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_contract(fleet: Fleet, marker: str) -> dict:
    return run_as_app(fleet, "app_contract.py", marker)


def test_the_dal_contract_holds_from_the_app_host_through_pgbouncer(fleet: Fleet):
    result = run_contract(fleet, f"m{uuid.uuid4().hex[:10]}")
    assert result["health"] == "ok"
    assert result["wire"]["host"] == fleet.db.address
    assert result["wire"]["port"] == 6432

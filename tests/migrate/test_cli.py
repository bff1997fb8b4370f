"""``donnactl migrate ...`` and ``donnactl db check`` as an operator runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DONNACTL = Path(sys.executable).parent / "donnactl"


def donnactl(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DONNACTL), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=120)


def test_status_plan_apply_round_trip(empty_db):
    st = donnactl("migrate", "status", "--json", "--dbname", empty_db)
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["applied"] == [] and doc["current_version"] is None and doc["pending"]
    planned = donnactl("migrate", "plan", "--json", "--dbname", empty_db)
    assert [p["version"] for p in json.loads(planned.stdout)["would_apply"]] == [
        p["version"] for p in doc["pending"]]
    applied = donnactl("migrate", "apply", "--dbname", empty_db)
    assert applied.returncode == 0 and "applied 0001_" in applied.stdout
    doc = json.loads(donnactl("migrate", "status", "--json", "--dbname", empty_db).stdout)
    assert doc["pending"] == [] and doc["current_version"] == doc["applied"][-1]["version"]
    again = donnactl("migrate", "apply", "--dbname", empty_db)
    assert again.returncode == 0 and "nothing to apply" in again.stdout


def test_db_check_passes_on_a_migrated_database(scratch_db):
    done = donnactl("db", "check", "--json", "--dbname", scratch_db)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["server_version"].startswith("15")
    assert doc["schema_version"] is not None
    names = [c["name"] for c in doc["checks"]]
    assert {"schema version", "role privileges", "system_logs partitions"} <= set(names)
    assert sum(n.startswith("connect as ") for n in names) == 4
    table = donnactl("db", "check", "--dbname", scratch_db)
    assert table.returncode == 0 and "all checks passed" in table.stdout


def test_db_check_fails_on_an_unmigrated_database(empty_db):
    done = donnactl("db", "check", "--json", "--dbname", empty_db)
    assert done.returncode == 1
    failed = {c["name"] for c in json.loads(done.stdout)["checks"] if not c["ok"]}
    assert {"schema version", "system_logs partitions"} <= failed


def test_dead_database_is_one_line_not_a_traceback():
    for args in (("db", "check"), ("migrate", "status")):
        done = donnactl(*args, DB_PORT="1", PGBOUNCER_PORT="2")
        assert done.returncode == 4, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "cannot connect" in done.stderr


def test_edited_migration_exits_5_with_one_line(tmp_path, settings, empty_db):
    import shutil

    target = tmp_path / "migrations"
    shutil.copytree(settings.schema_dir, target)
    env = {"SCHEMA_DIR": str(target)}
    assert donnactl("migrate", "apply", "--dbname", empty_db, **env).returncode == 0
    first = sorted(target.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    for cmd in ("apply", "plan", "status"):
        done = donnactl("migrate", cmd, "--dbname", empty_db, **env)
        assert done.returncode == 5, (cmd, done.stderr)
        assert "was edited after it was applied" in done.stderr
        assert "Traceback" not in done.stderr

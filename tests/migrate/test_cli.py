"""``donnactl migrate ...`` and ``donnactl db check`` as an operator runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from donnadb.errors import DatabaseError
from donnadb.migrate import check

DONNACTL = Path(sys.executable).parent / "donnactl"


def donnactl(*args: str, input: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DONNACTL), *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=120, input=input)


def test_status_plan_apply_round_trip(empty_db, tmp_path):
    log = {"OPS_LOG_FILE": str(tmp_path / "donnactl.jsonl")}
    st = donnactl("migrate", "status", "--json", "--dbname", empty_db)
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["applied"] == [] and doc["current_version"] is None and doc["pending"]
    planned = donnactl("migrate", "plan", "--json", "--dbname", empty_db)
    assert [p["version"] for p in json.loads(planned.stdout)["would_apply"]] == [
        p["version"] for p in doc["pending"]]
    dry = donnactl("migrate", "apply", "--dry-run", "--json", "--dbname", empty_db, **log)
    assert json.loads(dry.stdout) == json.loads(planned.stdout)
    refused = donnactl("migrate", "apply", "--dbname", empty_db, input="n\n", **log)
    assert refused.returncode == 130 and "0001_" in refused.stdout  # it lists what it asks
    assert json.loads(donnactl("migrate", "status", "--json", "--dbname", empty_db).stdout
                      )["applied"] == []
    applied = donnactl("migrate", "apply", "--yes", "--dbname", empty_db, **log)
    assert applied.returncode == 0 and "applied 0001_" in applied.stdout
    audit = [json.loads(line) for line in (tmp_path / "donnactl.jsonl").read_text().splitlines()
             if '"command finished"' in line]
    assert [(a["context"]["command"], a["context"]["exit_code"]) for a in audit] == [
        ("migrate apply", 0), ("migrate apply", 130), ("migrate apply", 0)]
    assert audit[-1]["context"]["params"]["dbname"] == empty_db and audit[-1]["context"]["user"]
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
    assert sum(n.startswith("connect as ") for n in names) == len(check.LOGIN_KINDS)
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
    assert donnactl("migrate", "apply", "--yes", "--dbname", empty_db, **env).returncode == 0
    first = sorted(target.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    for cmd in ("apply", "plan", "status"):
        done = donnactl("migrate", cmd, "--dbname", empty_db, **env)
        assert done.returncode == 5, (cmd, done.stderr)
        assert "was edited after it was applied" in done.stderr
        assert "Traceback" not in done.stderr


def test_db_check_names_an_index_an_interrupted_concurrent_build_left(scratch_db, connect_as,
                                                                      settings):
    owner = connect_as("migrator", dbname=scratch_db, autocommit=True)
    owner.execute(f"SET ROLE {settings.db_role_owner}")
    owner.execute("INSERT INTO users (clerk_id) VALUES ('a'), ('b')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        owner.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_half_built ON users (name)"
                      " NULLS NOT DISTINCT")
    done = donnactl("db", "check", "--json", "--dbname", scratch_db)
    assert done.returncode == 1
    failed = {c["name"]: c["detail"] for c in json.loads(done.stdout)["checks"] if not c["ok"]}
    assert list(failed) == ["indexes"] and "idx_half_built" in failed["indexes"]


def _fill_role(connect_as, settings, kind: str, dbname: str) -> list:
    """Every free slot of ``kind``'s CONNECTION LIMIT, held (bounded by the limit)."""
    held = []
    limit = connect_as("migrator", dbname=dbname, autocommit=True).execute(
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", [settings.role(kind)]).fetchone()[0]
    assert 0 < limit <= 20, limit
    for _ in range(limit):
        try:
            held.append(connect_as(kind, dbname=dbname, autocommit=True))
        except DatabaseError as exc:
            assert check.ROLE_FULL in str(exc)
            break
    return held


def test_db_check_waits_for_a_role_at_its_connection_limit(scratch_db, connect_as, settings):
    """postgres_exporter's scrapes hold the monitor role's slots for moments: a login
    refused for the role's limit is tried again, not reported as a broken role."""
    held = _fill_role(connect_as, settings, "monitor", scratch_db)
    threading.Timer(1.5, held[-1].close).start()
    report = check.run_checks(settings=settings, dbname=scratch_db)
    monitor = next(c for c in report.checks if c.name == f"connect as {settings.role('monitor')}")
    assert monitor.ok and "connection limit" in monitor.detail, monitor
    assert report.ok, [c for c in report.checks if not c.ok]


def test_db_check_names_the_limit_of_a_role_that_stays_full(scratch_db, connect_as, settings,
                                                          monkeypatch):
    _fill_role(connect_as, settings, "monitor", scratch_db)
    monkeypatch.setattr(check, "BUSY_ROLE_WAIT", 1.0)
    report = check.run_checks(settings=settings, dbname=scratch_db)
    monitor = next(c for c in report.checks if c.name == f"connect as {settings.role('monitor')}")
    assert not monitor.ok and not report.ok
    assert "too many connections" in monitor.detail
    assert "pg_role_connection_limits" in monitor.detail

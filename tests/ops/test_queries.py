"""`queries top|cancel|terminate` against the deployed server and a scratch database."""

import json
import threading
import time

import psycopg
import pytest

from donnadb.errors import PreconditionError
from donnadb.ops import queries
from tests.support import superuser_psql


def test_top_reads_pg_stat_statements(cli):
    done = cli("queries", "top", "--by", "calls", "--limit", "3", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert 1 <= len(rows) <= 3
    assert rows == sorted(rows, key=lambda r: r["calls"], reverse=True)


def test_top_rejects_an_unknown_order(cli):
    done = cli("queries", "top", "--by", "rows")
    assert done.returncode == 3 and "--by must be one of" in done.stderr


def test_missing_pg_stat_statements_is_one_clear_line(cli, settings, empty_db):
    superuser_psql("DROP EXTENSION pg_stat_statements", empty_db)
    with pytest.raises(PreconditionError, match="pg_stat_statements is not installed"):
        queries.top(settings, dbname=empty_db)
    done = cli("queries", "top", "--dbname", empty_db)
    assert done.returncode == 11 and done.stderr.count("\n") == 1
    assert "make deploy" in done.stderr


def _sleeper(settings, dbname):
    """An app session running pg_sleep in a thread; returns (conn, thread, outcome)."""
    from donnadb import db

    conn = db.connect("app", settings=settings, dbname=dbname, autocommit=True)
    outcome: dict = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(60)")
            outcome["done"] = True
        except psycopg.Error as exc:
            outcome["error"] = type(exc).__name__

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(100):
        row = superuser_psql("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND "
                             f"query = 'SELECT pg_sleep(60)' AND datname = '{dbname}'")
        if row:
            return conn, thread, outcome, int(row.splitlines()[0])
        time.sleep(0.05)
    raise AssertionError("the sleeping query never showed up")


@pytest.mark.parametrize(("action", "error"), [("cancel", "QueryCanceled"),
                                               ("terminate", "")])
def test_cancel_and_terminate_a_runaway_query(cli, settings, empty_db, action, error):
    conn, thread, outcome, pid = _sleeper(settings, empty_db)
    try:
        done = cli("queries", action, str(pid), "--yes", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["signalled"] is True
        thread.join(timeout=10)
        assert not thread.is_alive() and "done" not in outcome
        assert outcome["error"].startswith(error)
    finally:
        conn.close()


@pytest.mark.parametrize("action", ["cancel", "terminate"])
def test_a_dry_run_shows_the_backend_and_leaves_it_running(cli, settings, empty_db, action):
    conn, thread, outcome, pid = _sleeper(settings, empty_db)
    try:
        done = cli("queries", action, str(pid), "--dry-run", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["dry_run"] is True and doc["signalled"] is False
        assert (doc["pid"], doc["action"], doc["role"], doc["state"], doc["query"]) == (
            pid, action, settings.role("app"), "active", "SELECT pg_sleep(60)")
        assert doc["query_start"] and doc["seconds"] >= 0
        shown = cli("queries", action, str(pid), "--dry-run")  # no --yes: asks nothing
        assert shown.returncode == 0, shown.stderr
        assert f"dry run: would {action} pid {pid} (user {settings.role('app')}, active, " \
               "query started " in shown.stdout and "'SELECT pg_sleep(60)'" in shown.stdout
        time.sleep(0.5)
        assert thread.is_alive() and not outcome
        assert superuser_psql(f"SELECT state FROM pg_stat_activity WHERE pid = {pid}") == "active"
        audit = [json.loads(line)["context"] for line in cli.log_file.read_text().splitlines()
                 if '"command finished"' in line]
        assert [(a["command"], a["params"]["dry_run"], a["exit_code"]) for a in audit] == [
            (f"queries {action}", True, 0)] * 2
        assert cli("queries", "cancel", str(pid), "--yes").returncode == 0
        thread.join(timeout=10)
        assert outcome["error"] == "QueryCanceled"
    finally:
        conn.close()


def test_only_donna_roles_can_be_signalled(cli):
    pid = superuser_psql("SELECT pg_backend_pid()")  # gone by now: no such backend
    done = cli("queries", "cancel", pid, "--yes")
    assert done.returncode == 12 and f"no backend with pid {pid}" in done.stderr
    walsender = superuser_psql("SELECT pid FROM pg_stat_activity "
                               "WHERE backend_type = 'checkpointer'")
    done = cli("queries", "terminate", walsender, "--yes")
    assert done.returncode == 3 and "not a donna role" in done.stderr
    done = cli("queries", "terminate", walsender, "--dry-run")
    assert done.returncode == 3 and "not a donna role" in done.stderr

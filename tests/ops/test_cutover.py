"""The per-entity move to PostgreSQL as operators see it (ops/cutover.py): `donnactl
status`, `metrics` and `health` read each entity's phase from the settings, the reconcile
backlog from the queue file and dual-write's copy figures from the application's stats
files. Real dual-write stores copy to a real scratch database; copies of messages fail
because the application role lost INSERT on messages, as in production when a grant is
missing."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from donnadb import db
from donnadb.dal import DualWriteDataAccess, FileDataAccess, MixedDataAccess, PostgresDataAccess
from donnadb.ops import alerts
from tests.dal.conftest import TABLES
from tests.ops.test_health import CALM
from tests.support import superuser_psql

ENTITIES = ("users", "memory", "chats", "messages", "logs")
#: A late step of the cut-over: users, memory and sessions in PostgreSQL alone,
#: messages still copied, logs still in the files.
LATE = dict(zip(ENTITIES, ("postgresql", "postgresql", "postgresql", "dual", "file"),
                strict=True))


@pytest.fixture
def no_inserts_into_messages(settings, ops_db):
    """``ops_db`` emptied, and its application role without INSERT on messages (given
    back after): PostgreSQL refuses every copy of a message, and nothing else."""
    with db.connection("migrator", settings=settings, dbname=ops_db) as conn:
        conn.execute(f"TRUNCATE {TABLES}")
    role = settings.db_role_app
    superuser_psql(f"REVOKE INSERT ON messages FROM {role}", ops_db)
    yield
    superuser_psql(f"GRANT INSERT ON messages TO {role}", ops_db)


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def by_entity(found: dict[tuple, float], name: str, **labels: str) -> dict[str, float]:
    return {dict(k)["entity"]: v for (n, k), v in found.items()
            if n == name and all(dict(k).get(a) == b for a, b in labels.items())}


def write_a_chat(dal, messages: int) -> None:
    dal.create_user({"clerk_id": "user_ana"})
    dal.set_user_memory("user_ana", "context", "pet", "cat")
    dal.create_chat_session("c_1", "user_ana", {})
    for i in range(messages):
        dal.add_message("c_1", "user", f"PostgreSQL refuses this {i}")


def test_metrics_count_the_refused_copies_of_messages_only(
        cli, settings, ops_db, no_inserts_into_messages, tmp_path):
    stats_dir = tmp_path / "stats"
    dal = DualWriteDataAccess(FileDataAccess(tmp_path / "data"),
                              PostgresDataAccess(settings, dbname=ops_db), stats_dir=stats_dir)
    try:
        write_a_chat(dal, messages=2)
        # The live process's file (its flush timer; the DAL is not closed yet).
        deadline = time.monotonic() + 10
        while not list(stats_dir.glob("*.json")):
            assert time.monotonic() < deadline, "no stats file was written"
            time.sleep(0.1)
        time.sleep(1.5)  # the timer that started with the last copy has run
        done = cli("metrics", env={"DATA_DIR": str(tmp_path / "data"),
                                   "DATA_STORAGE_TYPE": "dual",
                                   "MIGRATION_MIRROR_STATS_DIR": str(stats_dir)})
    finally:
        dal.close()
    assert done.returncode == 0, done.stderr
    found = samples(done.stdout)
    assert by_entity(found, "donnadb_mirror_failures_total") == {
        "users": 0, "memory": 0, "chats": 0, "messages": 2, "logs": 0}
    # The first refusal holds copies back for the DAL's retry_after: the second
    # message is queued without a try (a failure, not a copy).
    assert by_entity(found, "donnadb_mirror_copies_total") == {
        "users": 1, "memory": 1, "chats": 1, "messages": 1, "logs": 0}
    assert by_entity(found, "donnadb_mirror_copy_seconds_count") == by_entity(
        found, "donnadb_mirror_copies_total")
    assert by_entity(found, "donnadb_mirror_copy_seconds_bucket", le="+Inf")["messages"] == 1
    assert 0 < by_entity(found, "donnadb_mirror_copy_seconds_sum")["messages"] < 30
    # What PostgreSQL missed waits in the queue, per entity; every entity is in dual.
    assert by_entity(found, "donnadb_reconcile_backlog") == {
        "users": 0, "memory": 0, "chats": 0, "messages": 2, "logs": 0}
    assert by_entity(found, "donnadb_storage_phase", phase="dual") == dict.fromkeys(
        ENTITIES, 1)
    # Entity names, phases and bucket bounds are the only labels: nothing personal.
    labels = {k for (name, key) in found if name.startswith(("donnadb_mirror",
                                                              "donnadb_reconcile",
                                                              "donnadb_storage"))
              for k, _ in key}
    assert labels == {"entity", "phase", "le"}


def test_status_json_shows_mixed_phases_and_the_backlog_of_a_refused_copy(
        cli, settings, ops_db, no_inserts_into_messages, tmp_path):
    dal = MixedDataAccess(FileDataAccess(tmp_path / "data"),
                          PostgresDataAccess(settings, dbname=ops_db), phases=LATE)
    try:
        write_a_chat(dal, messages=1)
    finally:
        dal.close()
    env = {"DATA_DIR": str(tmp_path / "data"),
           **{f"DATA_STORAGE_{e.upper()}": phase for e, phase in LATE.items()}}
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    storage = json.loads(done.stdout)["storage"]
    assert storage["phases"] == LATE and storage["problem"] is None
    backlog = storage["backlog"]
    assert backlog["error"] is None and backlog["total"] == 1
    assert {e: b["entries"] for e, b in backlog["entities"].items()} == {
        "users": 0, "memory": 0, "chats": 0, "messages": 1, "logs": 0}
    assert 0 <= backlog["entities"]["messages"]["oldest_seconds"] < 600
    assert backlog["entities"]["users"]["oldest_seconds"] is None
    screen = cli("status", env=env)
    assert screen.returncode == 0, screen.stderr
    assert "messages dual" in screen.stdout and "logs file" in screen.stdout
    assert "messages 1 (oldest" in screen.stdout


def test_health_warns_on_an_old_backlog_and_its_alert_fires(
        cli, settings, ops_db, no_inserts_into_messages, tmp_path):
    dal = DualWriteDataAccess(FileDataAccess(tmp_path / "data"),
                              PostgresDataAccess(settings, dbname=ops_db))
    try:
        write_a_chat(dal, messages=1)
    finally:
        dal.close()
    env = {**CALM, "DATA_DIR": str(tmp_path / "data"), "DATA_STORAGE_TYPE": "dual"}
    fresh = cli("health", "--json", env=env)
    check = {c["name"]: c for c in json.loads(fresh.stdout)["checks"]}["reconcile_backlog"]
    assert check["severity"] == "OK", check  # 30 minutes by default
    time.sleep(1.2)
    old = {**env, "RECONCILE_BACKLOG_MAX_AGE_MINUTES": "0.01"}  # 0.6 s
    done = cli("health", "--json", env=old)
    assert done.returncode >= 1, done.stdout
    check = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["reconcile_backlog"]
    assert check["severity"] == "WARNING", check
    assert "messages 1" in check["summary"] and "migrate-data reconcile" in check["summary"]
    # The alert rule for this threshold fires on the scrape of the same host.
    scrape = cli("metrics", env=old).stdout
    tuned = settings.model_copy(update={"reconcile_backlog_max_age_minutes": 0.01})
    rule, = [r for r in alerts.alert_rules(tuned) if r["alert"] == "DonnaReconcileBacklogOld"]
    assert rule["labels"]["check"] == "reconcile_backlog"
    assert alerts.evaluate(rule["expr"], scrape)
    assert not alerts.evaluate(
        next(r for r in alerts.alert_rules(settings)
             if r["alert"] == "DonnaReconcileBacklogOld")["expr"], scrape)


@pytest.mark.parametrize("phase", ["file", "postgresql"])
def test_hosts_without_a_queue_or_a_data_directory_report_an_empty_backlog(cli, tmp_path,
                                                                           phase):
    env = {"DATA_DIR": str(tmp_path / "never-made"), "DATA_STORAGE_TYPE": phase}
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    storage = json.loads(done.stdout)["storage"]
    assert storage["phases"] == dict.fromkeys(ENTITIES, phase)
    assert storage["backlog"]["error"] is None and storage["backlog"]["total"] == 0
    found = samples(cli("metrics", env=env).stdout)
    assert by_entity(found, "donnadb_reconcile_backlog") == dict.fromkeys(ENTITIES, 0)
    assert by_entity(found, "donnadb_storage_phase", phase=phase) == dict.fromkeys(ENTITIES, 1)
    assert not by_entity(found, "donnadb_mirror_copies_total")  # no stats directory set


def test_an_unreadable_queue_is_reported_not_fatal(cli, tmp_path):
    """A queue under a regular file cannot be opened: status says so and goes on;
    health warns only where some entity is in dual-write (the backlog could grow)."""
    (tmp_path / "file").write_text("")
    queue = tmp_path / "file" / "pending.jsonl"
    env = {**CALM, "MIGRATION_RECONCILE_QUEUE": str(queue), "DATA_STORAGE_MEMORY": "dual"}
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["storage"]["backlog"]["error"].startswith(f"cannot read {queue}")
    checks = {c["name"]: c["severity"] for c in doc["checks"]}
    assert checks["reconcile_backlog"] == "WARNING"
    env.pop("DATA_STORAGE_MEMORY")
    calm = json.loads(cli("health", "--json", env=env).stdout)
    assert {c["name"]: c["severity"] for c in calm["checks"]}["reconcile_backlog"] == "OK"


def test_the_backlog_is_exported_while_the_database_is_down(cli, settings, tmp_path):
    """A dual-write store whose database is unreachable queues its writes; the scrape
    says donnadb_up 0 and still shows the backlog that grows meanwhile."""
    from tests.dal.test_dualwrite import closed_port

    dead = settings.model_copy(update={"db_port": closed_port(), "pgbouncer_port": None})
    dal = DualWriteDataAccess(FileDataAccess(tmp_path / "data"),
                              PostgresDataAccess(dead, pool_timeout=0.3, min_size=0),
                              stats_dir=tmp_path / "stats")
    try:
        dal.create_user({"clerk_id": "user_ana"})
        dal.write_log("info", "hello")
    finally:
        dal.close()
    done = cli("metrics", env={"DB_PORT": "1", "DATA_DIR": str(tmp_path / "data"),
                               "DATA_STORAGE_TYPE": "dual",
                               "MIGRATION_MIRROR_STATS_DIR": str(tmp_path / "stats")})
    assert done.returncode == 0, done.stderr
    found = samples(done.stdout)
    assert found[("donnadb_up", ())] == 0
    assert by_entity(found, "donnadb_reconcile_backlog")["users"] == 1
    assert by_entity(found, "donnadb_reconcile_backlog")["logs"] == 1
    assert by_entity(found, "donnadb_mirror_failures_total")["users"] == 1

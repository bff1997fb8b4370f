"""A re-import after cut-over: rows the app changed in PostgreSQL since are never replaced
by the older files; every difference is reported as a conflict."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from donnadb import db
from donnadb.dal.postgres import PostgresDataAccess
from donnadb.errors import UsageError
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import check_storage_type
from tests.legacy.conftest import DONNACTL, run_cli

COUNTS = """SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM chat_sessions),
                   (SELECT count(*) FROM messages), (SELECT count(*) FROM user_memory)"""


def _import(root: Path, dbname: str, reports: Path, *extra: str) -> dict:
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", dbname,
                   "--json", "--report-dir", str(reports), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _chat_doc(root: Path, chat_id: str) -> dict:
    return json.loads((root / "chat_sessions" / f"{chat_id}.json").read_text())


def _write_chat(root: Path, doc: dict) -> None:
    (root / "chat_sessions" / f"{doc['chat_id']}.json").write_text(json.dumps(doc))


def test_a_reimport_keeps_what_the_app_changed_and_reports_the_conflicts(
        settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=4, chats=6, messages_per_chat=4, logs=0, deviations=False)
    reports = tmp_path / "reports"
    first = _import(root, scratch_db, reports)
    assert first["summary"]["conflicts"] == 0

    edited, appended, newer = "c_7000000", "c_7000001", "c_7000002"
    clerk = _chat_doc(root, edited)["user_id"]
    with PostgresDataAccess(settings, dbname=scratch_db) as dal:
        user = dal.get_user_by_clerk_id(clerk)
        dal.update_user(user["id"], {"name": "Renamed in the app",
                                     "profile": {**user["profile"], "timezone": "Asia/Tokyo"}})
        dal.set_user_memory(user["id"], "context", "pet", "dog (changed in the app)")
        dal.update_chat_session(edited, {"title": "Title changed in the app"})
        n_before = dal.get_message_count(appended)
        dal.add_message(appended, "user", "written by the app after cut-over")
        dal.add_message(edited, "user", "also written by the app")
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        conn.execute("UPDATE messages SET abuse_flagged = true WHERE sequence_number = 1 AND "
                     "chat_session_id = (SELECT id FROM chat_sessions WHERE chat_id = %s)",
                     (edited,))
        before = conn.execute(COUNTS).fetchone()

    # The legacy app wrote on after the files were first imported: a message at the
    # position the app filled in PostgreSQL, and one chat really changed in the files.
    doc = _chat_doc(root, appended)
    doc["messages"].append({"role": "user", "content": "the file's own message",
                            "timestamp": doc["messages"][-1]["timestamp"]})
    _write_chat(root, doc)
    doc = _chat_doc(root, newer)
    doc["title"], doc["updated_at"] = "Changed in the file later", "2026-01-01T00:00:00Z"
    _write_chat(root, doc)

    again = _import(root, scratch_db, reports)
    summary = again["summary"]

    with PostgresDataAccess(settings, dbname=scratch_db) as dal:
        user = dal.get_user_by_clerk_id(clerk)
        assert user["name"] == "Renamed in the app"
        assert user["profile"]["timezone"] == "Asia/Tokyo"
        assert dal.get_user_memory(user["id"], "context")["pet"] == "dog (changed in the app)"
        assert dal.get_chat_session(edited)["title"] == "Title changed in the app"
        history = dal.get_chat_history(appended, limit=100)
        assert history[n_before]["content"] == "written by the app after cut-over"
        assert dal.get_message_count(appended) == n_before + 1
        assert dal.get_chat_session(newer)["title"] == "Changed in the file later"
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute(COUNTS).fetchone() == before
        assert conn.execute(
            "SELECT abuse_flagged FROM messages WHERE sequence_number = 1 AND chat_session_id = "
            "(SELECT id FROM chat_sessions WHERE chat_id = %s)", (edited,)).fetchone()[0]

    assert summary["written"] == {"chat_sessions": 1}
    found = {(c["table"], c["key"]) for c in summary["conflict_examples"]}
    conflicts_file = Path(again["conflicts_file"])
    assert conflicts_file.parent == Path(again["report_file"]).parent
    assert conflicts_file.stat().st_mode & 0o777 == 0o600
    listed = [json.loads(line) for line in conflicts_file.read_text().splitlines()]
    assert len(listed) == summary["conflicts"]
    assert found <= {(c["table"], c["key"]) for c in listed}
    assert {(c["table"], c["key"]) for c in listed} == {
        ("users", clerk), ("user_memory", f"{clerk}/context/pet"),
        ("user_memory", f"{clerk}/profile/timezone"),
        ("chat_sessions", edited), ("messages", f"{edited}#1"),
        ("messages", f"{appended}#{n_before + 1}")}
    assert all(c["reason"] and c["path"] and c["db_version"] for c in listed)

    # The summary a person reads names the count and the first conflicts.
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--report-dir", str(reports))
    assert done.returncode == 0, done.stderr
    assert "6 conflicts" in done.stdout and f"{edited}#1" in done.stdout


def test_a_file_without_updated_at_never_replaces_a_stored_row(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=2, chats=2, messages_per_chat=3, logs=0, deviations=False)
    doc = _chat_doc(root, "c_7000000")
    del doc["updated_at"]
    _write_chat(root, doc)
    _import(root, scratch_db, tmp_path / "r")
    doc["title"] = "Edited in the file, no version"
    _write_chat(root, doc)
    again = _import(root, scratch_db, tmp_path / "r")
    assert again["summary"]["written"] == {}
    assert [(c["key"], c["file_version"]) for c in again["summary"]["conflict_examples"]
            ] == [("c_7000000", None)]
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute("SELECT title FROM chat_sessions WHERE chat_id = 'c_7000000'"
                            ).fetchone()[0] != "Edited in the file, no version"


def test_import_refuses_when_one_entity_is_in_postgresql_alone():
    pilot = {"users": "file", "memory": "dual", "chats": "file", "messages": "file",
             "logs": "file"}
    check_storage_type(pilot, False)  # files still take every write
    late = {**pilot, "users": "postgresql", "memory": "postgresql"}
    with pytest.raises(UsageError, match="users, memory in postgresql .*--i-know"):
        check_storage_type(late, False)
    check_storage_type(late, True)
    with pytest.raises(UsageError, match="^DATA_STORAGE_TYPE is postgresql"):
        check_storage_type(dict.fromkeys(pilot, "postgresql"), False)


def test_import_refuses_when_postgresql_is_the_primary_store(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=2, chats=2, messages_per_chat=2, logs=0, deviations=False)
    args = [DONNACTL, "migrate-data", "import", "--data-dir", str(root), "--dbname",
            scratch_db, "--report-dir", str(tmp_path / "reports")]
    env = {**os.environ, "DATA_STORAGE_TYPE": "postgresql", "COLUMNS": "200"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--i-know-postgresql-is-primary" in lines[0]
    assert "Traceback" not in done.stderr
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute(COUNTS).fetchone() == (0, 0, 0, 0)
    done = subprocess.run([*args, "--i-know-postgresql-is-primary"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM chat_sessions").fetchone()[0] == 2

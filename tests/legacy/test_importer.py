"""The import against the real PostgreSQL: every deviation, dry run, kill -9 and resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from donnadb import db
from donnadb.errors import UsageError
from donnadb.legacy import importer
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.verify import verify
from tests.legacy.conftest import DONNACTL, checksums, parser_processes, run_cli
from tests.support import full_disk

COUNT_ALL = """SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM chat_sessions),
                      (SELECT count(*) FROM messages), (SELECT count(*) FROM user_memory),
                      (SELECT count(*) FROM system_logs)"""


def test_every_deviation_imports_and_verifies(settings, scratch_db, deviant_dir, tmp_path):
    root, info = deviant_dir
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--json", "--report-dir", str(tmp_path / "reports"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    quarantined = {q["path"] for q in out["report"]["quarantined"]}
    assert quarantined == set(info.quarantined)
    report_file = tmp_path / "reports" / out["report_file"].rsplit("/", 1)[-1]
    assert json.loads(report_file.read_text())["quarantined"]
    assert report_file.stat().st_mode & 0o777 == 0o600
    assert out["report"]["world_writable"]["count"] >= 2
    assert out["summary"]["read"]["messages"] == out["summary"]["written"]["messages"]

    done = run_cli("migrate-data", "verify", "--data-dir", str(root), "--dbname", scratch_db,
                   "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["differences"] == []
    assert {q["path"] for q in result["quarantined"]} == set(info.quarantined)

    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        # chat_sessions wins over the stale export; the copy replaces a truncated file.
        title, count = conn.execute(
            "SELECT title, message_count FROM chat_sessions WHERE chat_id = 'c_dup'").fetchone()
        assert (title != "Stale export", count) == (True, 4)
        found = {r[0] for r in conn.execute(
            "SELECT chat_id FROM chat_sessions WHERE chat_id IN ('c_truncated_has_copy', "
            "'c_conv_only', 'c_transcript_only', 'c_truncated', 'c_bom')")}
        assert found == {"c_truncated_has_copy", "c_conv_only", "c_transcript_only", "c_bom"}
        # Orphans get a user; memory named by e-mail joins its Clerk user.
        assert conn.execute("SELECT count(*) FROM users WHERE clerk_id IN "
                            "('user_orphan_only_chat', 'user_conv_only')").fetchone()[0] == 2
        assert conn.execute(
            "SELECT count(*) FROM user_memory m JOIN users u ON u.id = m.user_id "
            "WHERE u.email = 'u1@example.com' AND m.key = 'early_note'").fetchone()[0] == 1
        # Fields the DAL's file store adds land in their columns.
        assert conn.execute("SELECT status FROM chat_sessions WHERE chat_id = 'c_archived'"
                            ).fetchone()[0] == "archived"
        assert conn.execute("SELECT status, last_active_at IS NOT NULL FROM users "
                            "WHERE clerk_id = 'user_memory_only'").fetchone() == ("suspended", True)
        # Every counter matches the rows, for the 20,000-message chat too.
        assert conn.execute(
            "SELECT count(*) FROM chat_sessions c WHERE message_count <> "
            "(SELECT count(*) FROM messages m WHERE m.chat_session_id = c.id)").fetchone()[0] == 0
        assert conn.execute("SELECT message_count FROM chat_sessions WHERE chat_id = 'c_long'"
                            ).fetchone()[0] == 20_000
        big = conn.execute("SELECT max(length(content)) FROM messages").fetchone()[0]
        assert big >= 2 * 1024 * 1024
        # Roles, timestamps and unstorable text as documented.
        rows = conn.execute(
            "SELECT m.role, m.content, m.metadata, m.created_at FROM messages m "
            "JOIN chat_sessions c ON c.id = m.chat_session_id WHERE c.chat_id = 'c_odd' "
            "ORDER BY sequence_number").fetchall()
        assert [r[0] for r in rows[:8]] == ["user", "assistant", "assistant", "system", "user",
                                            "assistant", "user", "user"]
        assert rows[7][2]["_donnadb_legacy"]["role"] == "tool"
        assert rows[6][2]["_donnadb_legacy"]["timestamp"] == "missing"
        assert rows[6][3] == rows[5][3]  # inherits the previous message's timestamp
        assert rows[8][2]["_donnadb_content_escaped"] is True and "\\u0000" in rows[8][1]


def test_dry_run_writes_nothing(settings, scratch_db, deviant_dir, tmp_path):
    root, _ = deviant_dir
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--dry-run", "--json", "--report-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["summary"]["dry_run"] and out["summary"]["read"]["messages"] > 20_000
    assert out["report"]["quarantined"]
    assert not (tmp_path / "r").exists()
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute(COUNT_ALL).fetchone() == (0, 0, 0, 0, 0)


def test_rerun_writes_nothing(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=5, chats=10, long_chat_messages=300, large_message_bytes=0)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        first = import_data_dir(LegacyReader.open(root), conn, batch_size=50)
        before = checksums(settings, scratch_db)
        again = import_data_dir(LegacyReader.open(root), conn, batch_size=50)
        assert first.written["messages"] == first.read["messages"]
        assert again.written == {}
        assert checksums(settings, scratch_db) == before
        assert verify(LegacyReader.open(root), conn).ok


def _count_messages(settings, dbname) -> int:
    with db.connect("migrator", settings=settings, dbname=dbname) as conn:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def _messages_indexes(settings, dbname) -> tuple[list[str], str | None]:
    with db.connect("migrator", settings=settings, dbname=dbname) as conn:
        defs = [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'messages' ORDER BY 1")]
        comment = conn.execute("SELECT obj_description('messages'::regclass, 'pg_class')"
                               ).fetchone()[0]
        return defs, comment


@pytest.mark.parametrize(("flags", "defer", "workers"),
                         [(["--keep-indexes"], False, "0"), ([], True, "0"),
                          (["--defer-indexes"], True, "2")],
                         ids=["upsert", "default-defers", "parallel"])
def test_kill_9_mid_import_then_rerun_equals_uninterrupted(settings, scratch_db, second_db,
                                                            tmp_path, flags, defer, workers):
    root = tmp_path / "data"
    info = generate(root, users=10, chats=30, messages_per_chat=10, logs=300,
                    long_chat_messages=15_000, large_message_bytes=256 * 1024)
    args = ["migrate-data", "import", "--data-dir", str(root), "--batch-size", "100",
            "--json", "--report-dir", str(tmp_path / "r")]
    # The reference: one uninterrupted run into another database.
    assert run_cli(*args, "--dbname", second_db).returncode == 0
    expected = checksums(settings, second_db)
    total = expected["messages"][0]
    assert total >= info.messages

    first = [*args, "--workers", workers, *flags]
    before = set(parser_processes())
    proc = subprocess.Popen([DONNACTL, *first, "--dbname", scratch_db],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count_messages(settings, scratch_db) < 2_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _count_messages(settings, scratch_db)
    assert 0 < partial < total, "the kill must land mid-import"
    # The parser processes notice their parent is gone and exit.
    deadline = time.monotonic() + 15
    while set(parser_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(parser_processes()) - before, "worker processes outlived a killed import"
    defs, comment = _messages_indexes(settings, scratch_db)
    if defer:
        assert len(defs) == 2 and comment.startswith("donnadb legacy import")
    else:
        assert len(defs) == 8 and comment is None

    # The re-run needs no flag: a deferred-index marker is found and finished.
    done = run_cli(*args, "--dbname", scratch_db)
    assert done.returncode == 0, done.stderr
    assert checksums(settings, scratch_db) == expected
    assert _messages_indexes(settings, scratch_db) == _messages_indexes(settings, second_db)


def test_defer_indexes_refuses_a_non_empty_messages_table(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=3, chats=4, deviations=False)
    args = ["migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
            "--report-dir", str(tmp_path / "r")]
    first = run_cli(*args)
    assert first.returncode == 0
    # Into the empty table the default path built the indexes once, at the end.
    assert re.search(r"6 messages indexes built once at the end \(\d+\.\d s\)",
                     " ".join(first.stdout.split()))
    refused = run_cli(*args, "--defer-indexes")
    assert refused.returncode == 3
    assert "initial load" in refused.stderr
    assert len(_messages_indexes(settings, scratch_db)[0]) == 8
    # Into a table holding rows the default path keeps them (the app may be reading).
    again = run_cli(*args, "--json")
    assert again.returncode == 0
    summary = json.loads(again.stdout)["summary"]
    assert summary["indexes_rebuilt"] == 0 and summary["index_build_seconds"] == 0
    defs, comment = _messages_indexes(settings, scratch_db)
    assert len(defs) == 8 and comment is None


def _import_in_process(settings, dbname: str, root, batch_size: int):
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        return import_data_dir(LegacyReader.open(root), conn, batch_size=batch_size,
                               owner_role=settings.db_role_owner)


def test_a_chat_stays_in_one_batch_so_a_first_load_never_upserts_messages(
        settings, scratch_db, tmp_path, monkeypatch):
    """Batches end at a chat boundary (a chat of 7-13 messages, batches of 25 rows):
    every message of a first load takes the direct COPY, none the staging upsert."""
    root = tmp_path / "data"
    info = generate(root, users=5, chats=40, messages_per_chat=10, logs=0, deviations=False)
    executed: list[str] = []
    original = importer.Importer._exec

    def spy(self, sql, table=None, params=None):
        executed.append(sql)
        return original(self, sql, table, params)

    monkeypatch.setattr(importer.Importer, "_exec", spy)
    summary = _import_in_process(settings, scratch_db, root, batch_size=25)
    assert summary.written["messages"] == info.messages
    assert summary.batches > 40 * 10 // 25  # batches really were smaller than the data
    assert importer.UPSERT_MESSAGES not in executed


def test_a_growing_first_load_analyses_its_tables(settings, scratch_db, tmp_path, monkeypatch):
    """Without ANALYZE while the tables grow from empty, the plans cached for the first
    batches (sequential scans of chat_sessions in the messages trigger) stay for the
    whole import and it turns quadratic. reltuples is -1 until a table is analysed."""
    monkeypatch.setattr(importer, "ANALYZE_FIRST", 16)
    root = tmp_path / "data"
    generate(root, users=5, chats=60, messages_per_chat=10, logs=0, deviations=False)
    _import_in_process(settings, scratch_db, root, batch_size=50)
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        rows = dict(conn.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%s)",
            [list(importer.ANALYZED_TABLES)]).fetchall())
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                  for t in ("chat_sessions", "messages")}
    # Analysed at the last power of four the table passed: between a quarter and all of it.
    for table, n in counts.items():
        assert n / 4 <= rows[table] <= n, (table, rows[table], n)


def test_importing_one_entity_at_a_time_gives_the_full_import(settings, scratch_db, second_db,
                                                              tmp_path):
    root = tmp_path / "data"
    generate(root, users=8, chats=20, messages_per_chat=4, logs=30, deviations=False)
    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=50)
    counts = []
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        for entity in ("memory", "chats", "messages", "logs"):
            summary = import_data_dir(LegacyReader.open(root), conn, batch_size=50,
                                      entity=entity)
            assert summary.conflicts == [], entity
            counts.append(conn.execute(COUNT_ALL).fetchone())
        assert verify(LegacyReader.open(root), conn).ok
    users, memory = counts[0][0], counts[0][3]
    assert users and memory and counts[0][1:3] + counts[0][4:] == (0, 0, 0)
    # Sessions alone: no message (and their counters say so), owners made bare users.
    assert counts[1][1] and counts[1][2] == 0 and counts[1][4] == 0
    assert counts[2][2] and counts[2][4] == 0
    assert counts[3][4] == 30
    assert checksums(settings, scratch_db) == checksums(settings, second_db)
    with pytest.raises(UsageError, match="unknown entity 'files'"):
        import_data_dir(LegacyReader.open(root), None, batch_size=50, dry_run=True,
                        entity="files")


def test_importing_one_entity_is_refused_only_when_postgresql_alone_holds_it():
    late = {"users": "postgresql", "memory": "postgresql", "chats": "postgresql",
            "messages": "dual", "logs": "file"}
    importer.check_storage_type(late, False, entity="logs")
    with pytest.raises(UsageError, match="^chats in postgresql"):
        importer.check_storage_type(late, False, entity="messages")  # its sessions come too
    with pytest.raises(UsageError, match="^users, memory in postgresql"):
        importer.check_storage_type(late, False, entity="memory")


def test_a_full_report_dir_fails_in_one_line_and_leaves_no_partial_report(scratch_db,
                                                                          tmp_path):
    generate(tmp_path / "data", users=2, chats=3, deviations=False)
    with full_disk(tmp_path, {"reports/.keep": ""}) as disk:
        reports = disk / "reports"
        done = run_cli("migrate-data", "import", "--data-dir", str(tmp_path / "data"),
                       "--dbname", scratch_db, "--report-dir", str(reports))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]  # after the progress bars
        assert last.startswith(f"error: cannot write {reports}/import-"), last
        assert "No space left on device; free space" in last
        assert [p.name for p in reports.iterdir()] == [".keep"]

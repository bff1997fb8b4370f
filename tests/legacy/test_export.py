"""export: the rollback path. import -> export -> import must give the same database."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from datetime import UTC, datetime

import pytest

from donnadb import db
from donnadb.errors import UsageError
from donnadb.legacy.export import export_data_dir
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.normalise import message_uuid
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.verify import verify
from tests.legacy.conftest import DONNACTL, checksums, run_cli
from tests.support import small_disk


def test_import_export_import_gives_the_same_database(settings, scratch_db, second_db,
                                                       tmp_path):
    root = tmp_path / "data"
    generate(root, users=8, chats=25, long_chat_messages=500, large_message_bytes=64 * 1024)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    out = tmp_path / "exported"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"]["chats"] > 25

    # Safe by default: nothing but 0600 files in 0700 folders.
    for dirpath, _dirs, filenames in os.walk(out):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o600, name
    # Chats go back where they came from.
    assert (out / "chat_history" / "c_transcript_only.txt").is_file()
    assert (out / "conversations" / "user_conv_only" / "c_conv_only.json").is_file()

    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        summary = import_data_dir(LegacyReader.open(out), conn, batch_size=100)
        assert verify(LegacyReader.open(out), conn).ok
    assert summary.read["messages"] == checksums(settings, scratch_db)["messages"][0]
    assert checksums(settings, second_db) == checksums(settings, scratch_db)


def test_nul_and_surrogates_round_trip_through_export(settings, scratch_db, deviant_dir,
                                                      tmp_path):
    root, _ = deviant_dir
    original = json.loads((root / "chat_sessions" / "c_odd.json").read_text())
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=5000)
        stored = conn.execute(
            "SELECT m.content FROM messages m JOIN chat_sessions c ON c.id = m.chat_session_id "
            "WHERE c.chat_id = 'c_odd' AND m.sequence_number = 10").fetchone()[0]
        assert "\ud800" not in stored and "\\ud800" in stored
        export_data_dir(conn, tmp_path / "out")
    back = json.loads((tmp_path / "out" / "chat_sessions" / "c_odd.json").read_text())
    assert back["title"] == original["title"] == "Odd \x00 title"
    assert back["metadata"] == original["metadata"]
    for before, after in zip(original["messages"], back["messages"], strict=True):
        assert after["content"] == before["content"]
        assert after["role"] == before["role"]  # the original spelling: "bot", "SYSTEM" ...
    assert back["messages"][9]["content"] == "lone \ud800 surrogate \\u0000 literal"
    memory = json.loads((tmp_path / "out" / "memory" / "early@example.com.json").read_text())
    assert memory["preferences"]["tone"] == "long \x00 nul"


def test_export_refuses_a_non_empty_directory(settings, scratch_db, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with db.connect("readonly", settings=settings, dbname=scratch_db, autocommit=True) as conn, \
            pytest.raises(UsageError, match="not empty"):
        export_data_dir(conn, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_odd_values_survive_import_export_import(settings, scratch_db, second_db, tmp_path):
    """Values outside the documented format: kept, exported as they were, re-imported equal."""
    root = tmp_path / "data"
    (root / "chat_sessions").mkdir(parents=True)
    (root / "memory").mkdir()
    (root / "logs").mkdir()
    chat = {"chat_id": "c_weird", "user_id": "u" * 300, "title": "t" * 300, "profile": 7,
            "created_at": "not \u0000 a date", "status": {"x": 1}, "metadata": [1, 2],
            "messages": ["a bare string", {"role": None, "content": {"parts": ["\u0000"]},
                                           "timestamp": "soon \ud800", "tokens": -3,
                                           "metadata": "m", "extra": {"k": "\u0000"}}]}
    (root / "chat_sessions" / "c_weird.json").write_text(json.dumps(chat))
    (root / "chat_sessions" / "c_other.json").write_text(json.dumps(
        {"chat_id": "c_different", "user_id": "user_x", "messages": []}))
    (root / "memory" / "user_x.json").write_text(json.dumps(
        {"user_id": "user_x", "profile": "not an object", "hobby": {"a": 1},
         "context": {"k" * 300: 1, "ok": "\u0000"}, "expires": {"context.gone": "2030-01-01"},
         "status": 5, "last_active_at": "whenever"}))
    (root / "logs" / "odd.jsonl").write_text(
        json.dumps({"ts": "x\u0000", "level": "X" * 30, "message": 5, "context": [1],
                    "ip": "::ffff:10.0.0.1", "trace_id": "t" * 300, "new_field": True}) + "\n")
    os.mkdir(root / "chat_history")
    (root / "chat_history" / "c_notes.txt").write_text(
        "free text before\n[2024-05-01 10:00:00] Bot: hi\n\n[2024-05-01 10:00:01] user: x\n")
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=10)
        assert verify(LegacyReader.open(root), conn).ok
        export_data_dir(conn, tmp_path / "out")
    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(tmp_path / "out"), conn, batch_size=10)
    assert checksums(settings, second_db) == checksums(settings, scratch_db)
    back = json.loads((tmp_path / "out" / "chat_sessions" / "c_weird.json").read_text())
    assert back["user_id"] == chat["user_id"] and back["title"] == chat["title"]
    assert back["messages"] == chat["messages"]


def _chat_file(root, chat_id, messages):
    (root / "chat_sessions").mkdir(parents=True, exist_ok=True)
    (root / "chat_sessions" / f"{chat_id}.json").write_text(json.dumps(
        {"chat_id": chat_id, "user_id": "user_ids", "created_at": "2024-05-01T10:00:00Z",
         "updated_at": "2024-05-01T11:00:00Z", "messages": messages}))


def _message_ids(conn) -> dict[tuple[str, int], str]:
    rows = conn.execute("SELECT c.chat_id, m.sequence_number, m.id::text FROM messages AS m "
                        "JOIN chat_sessions AS c ON c.id = m.chat_session_id").fetchall()
    return {(chat, seq): mid for chat, seq, mid in rows}


def test_a_message_keeps_its_own_id(settings, scratch_db, second_db, tmp_path):
    """A canonical UUID "id" (what export and the DAL write) is the row's id; anything else
    (a duplicate, another spelling, not a string) gets the position rule and is kept as an
    extra field. Import -> export -> import stays exact and a re-run writes nothing."""
    own, upper = str(uuid.uuid4()), str(uuid.uuid4()).upper()
    msg = {"role": "user", "content": "hi", "timestamp": "2024-05-01T10:00:00Z"}
    root = tmp_path / "data"
    _chat_file(root, "c_a", [{**msg, "id": own}, {**msg, "id": upper}, {**msg, "id": 5}, msg])
    _chat_file(root, "c_b", [{**msg, "id": own}])  # a copy under another chat_id
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        reader = LegacyReader.open(root)
        import_data_dir(reader, conn, batch_size=10)
        ids = _message_ids(conn)
        assert ids[("c_a", 1)] == own
        position = {key: str(message_uuid(*key)) for key in ids}
        assert {k: v for k, v in ids.items() if k != ("c_a", 1)} == \
            {k: v for k, v in position.items() if k != ("c_a", 1)}
        assert [n["path"] for n in reader.report.notes if n["kind"] == "message_id_duplicate"
                ] == ["chat_sessions/c_b.json"]
        assert verify(LegacyReader.open(root), conn).ok
        assert import_data_dir(LegacyReader.open(root), conn, batch_size=10).written == {}
        export_data_dir(conn, tmp_path / "out")
    back = json.loads((tmp_path / "out" / "chat_sessions" / "c_a.json").read_text())
    assert [m.get("id") for m in back["messages"]] == [own, upper, 5, None]
    assert json.loads((tmp_path / "out" / "chat_sessions" / "c_b.json").read_text()
                      )["messages"][0]["id"] == own
    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(tmp_path / "out"), conn, batch_size=10)
    assert checksums(settings, second_db) == checksums(settings, scratch_db)


def test_an_id_added_to_the_file_later_replaces_the_position_id(settings, scratch_db,
                                                                 tmp_path):
    msg = {"role": "user", "content": "hi", "timestamp": "2024-05-01T10:00:00Z"}
    root = tmp_path / "data"
    _chat_file(root, "c_a", [msg, msg])
    own = str(uuid.uuid4())
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=10)
        _chat_file(root, "c_a", [msg, {**msg, "id": own}])  # e.g. written back by the DAL
        again = import_data_dir(LegacyReader.open(root), conn, batch_size=10)
        assert again.written == {"messages": 1}
        assert _message_ids(conn)[("c_a", 2)] == own
        assert verify(LegacyReader.open(root), conn).ok


def test_timestamps_at_the_edges_import_and_round_trip(settings, scratch_db, second_db,
                                                       tmp_path):
    """Offsets become UTC; what is past year 9999 in UTC, or has more digits than any
    date, is kept raw without stopping the import; a year below 1000 is written back with
    four digits, so the re-import reads the same instant."""
    root = tmp_path / "data"
    edge = ["2025-03-01T15:30:05+05:30", "9999-12-31T23:59:59-01:00", "1" * 5000,
            "0999-05-06T07:08:09.5Z", "9999-12-31T23:59:59.9999999Z"]
    _chat_file(root, "c_times", [{"role": "user", "content": str(i), "timestamp": ts}
                                 for i, ts in enumerate(edge)])
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=10)
        rows = conn.execute("SELECT m.created_at, m.metadata -> '_donnadb_legacy' FROM messages "
                            "AS m ORDER BY m.sequence_number").fetchall()
        export_data_dir(conn, tmp_path / "out")
    utc = [created.astimezone(UTC) for created, _legacy in rows]
    assert utc[0] == datetime(2025, 3, 1, 10, 0, 5, tzinfo=UTC)
    assert utc[3] == datetime(999, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    assert utc[4] == datetime.max.replace(tzinfo=UTC)
    for i in (1, 2):  # unreadable: the previous message's time, the raw value kept
        assert rows[i][1] == {"timestamp": "unparseable", "timestamp_raw": edge[i]}
        assert utc[i] == utc[0]
    back = json.loads((tmp_path / "out" / "chat_sessions" / "c_times.json").read_text())
    assert [m["timestamp"] for m in back["messages"]][1:4] == [
        edge[1], edge[2], "0999-05-06T07:08:09.500000Z"]
    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(tmp_path / "out"), conn, batch_size=10)
    assert checksums(settings, second_db) == checksums(settings, scratch_db)


def test_an_entity_export_puts_every_chat_where_the_file_store_reads_it(
        settings, scratch_db, second_db, tmp_path):
    """The export of chats rolls the application back to its file store, which reads
    chat_sessions/ alone: chats the import found only in conversations/ or chat_history/
    go there too, and the import gives them their origin back."""
    root = tmp_path / "data"
    generate(root, users=8, chats=25, long_chat_messages=500, large_message_bytes=64 * 1024)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    out = tmp_path / "exported"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db,
                   "--entity", "chats")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == ["chat_sessions"]
    for chat in ("c_transcript_only", "c_conv_only"):
        assert json.loads((out / "chat_sessions" / f"{chat}.json").read_text())["messages"]

    with db.connect("migrator", settings=settings, dbname=second_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(out), conn, batch_size=100)
        assert verify(LegacyReader.open(out), conn, entity="chats").ok
    before, after = checksums(settings, scratch_db), checksums(settings, second_db)
    for table in ("chat_sessions", "messages"):
        assert after[table] == before[table], table


def test_export_one_entity_writes_the_files_holding_it(settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=5, chats=8, messages_per_chat=3, logs=10, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(root), conn, batch_size=100)
    for entity, folder in (("memory", "memory"), ("users", "memory"),
                           ("chats", "chat_sessions"), ("messages", "chat_sessions"),
                           ("logs", "logs")):
        out = tmp_path / f"out-{entity}"
        done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db,
                       "--entity", entity)
        assert done.returncode == 0, done.stderr
        assert [p.name for p in out.iterdir()] == [folder], entity
        assert any((out / folder).iterdir())
    # Chat files keep their messages: exported chats verify against the database's.
    with db.connect("readonly", settings=settings, dbname=scratch_db) as conn:
        result = verify(LegacyReader.open(tmp_path / "out-messages"), conn, entity="messages")
    assert result.ok, result.differences[:3]
    with db.connect("readonly", settings=settings, dbname=scratch_db) as conn, \
            pytest.raises(UsageError, match="unknown entity"):
        export_data_dir(conn, tmp_path / "out-bad", entity="files")


def _traced_export(out, dbname: str, trace, *inject: str):
    """``migrate-data export`` under strace, its syncfs and file creations traced."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make test installs it)")
    cmd = [strace, "-f", "-qq", "-o", str(trace), "-e", "trace=openat,syncfs", *inject,
           DONNACTL, "migrate-data", "export", "--out", str(out), "--dbname", dbname]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_the_export_is_on_disk_before_it_says_done(settings, scratch_db, tmp_path):
    generate(tmp_path / "data", users=3, chats=6, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(tmp_path / "data"), conn, batch_size=100)

    out, trace = tmp_path / "exported", tmp_path / "trace.txt"
    done = _traced_export(out, scratch_db, trace)
    assert done.returncode == 0, done.stderr
    lines = trace.read_text().splitlines()
    opened = next(re.search(r"= (\d+)$", ln).group(1) for ln in lines
                  if f'"{out}", O_RDONLY' in ln and "O_DIRECTORY" in ln)
    created = [i for i, ln in enumerate(lines) if "O_CREAT|O_EXCL" in ln]
    synced = [i for i, ln in enumerate(lines) if re.search(rf"syncfs\({opened}\)\s+= 0", ln)]
    assert created and synced and synced[-1] > created[-1], "no syncfs after the last file"

    # The disk reports a failed write at that flush: the export fails in one line and
    # leaves nothing to put in place.
    failed_out = tmp_path / "failed"
    failed = _traced_export(failed_out, scratch_db, tmp_path / "trace2.txt",
                            "-e", "inject=syncfs:error=EIO")
    assert failed.returncode == 1
    assert f"cannot write the export into {failed_out}: Input/output error" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not any(failed_out.iterdir())


def test_a_full_disk_stops_the_export_and_leaves_nothing(settings, scratch_db, tmp_path):
    generate(tmp_path / "data", users=3, chats=10, messages_per_chat=200, deviations=False)
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(tmp_path / "data"), conn, batch_size=100)
    with small_disk(tmp_path) as small:
        out = small / "exported"
        done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db)
        assert done.returncode == 1, done.stderr  # a full disk, not bad data (exit 6)
        assert f"cannot write the export into {out}: No space left on device" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not any(out.iterdir())

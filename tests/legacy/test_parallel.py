"""The parallel import (worker processes parse and COPY-encode the chats) gives exactly
what the one-process import gives: rows, ids, report."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from donnadb import db
from donnadb.legacy.copybin import MESSAGE_COLUMNS, SIGNATURE, TRAILER, encode_messages
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.model import MessageRow
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.verify import verify
from tests.legacy.conftest import checksums, parser_processes

TYPES = ["uuid", "uuid", "text", "text", "jsonb", "timestamptz", "int4", "int4", "bool"]
TABLE = """CREATE TEMP TABLE {} (chat_session_id uuid, id uuid, role text, content text,
    metadata jsonb, created_at timestamptz, sequence_number int4, token_count int4,
    abuse_flagged bool)"""


def _import(settings, dbname, root, workers):
    reader = LegacyReader.open(root)
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        summary = import_data_dir(reader, conn, batch_size=100, workers=workers)
        assert verify(LegacyReader.open(root), conn).ok
    return summary, reader.report.as_dict()


def test_parallel_import_equals_the_one_process_import(settings, scratch_db, second_db,
                                                       deviant_dir):
    root, _ = deviant_dir
    one, one_report = _import(settings, scratch_db, root, workers=0)
    two, two_report = _import(settings, second_db, root, workers=2)
    assert (two.read, two.written) == (one.read, one.written)
    assert two_report == one_report  # every quarantine and note, in the same order
    assert one_report["quarantined"] and one_report["notes"]
    assert checksums(settings, second_db) == checksums(settings, scratch_db)


def _chat(root, chat_id, messages):
    folder = root / "chat_sessions"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{chat_id}.json").write_text(json.dumps(
        {"chat_id": chat_id, "user_id": "user_x", "messages": messages}))


def test_a_clash_of_own_message_ids_is_decided_in_chat_order(settings, scratch_db, second_db,
                                                             tmp_path, monkeypatch):
    """Own ids are claimed in chat_id order across workers: the later use (in another chat,
    or twice in one chat) falls back to the position id, as in one process."""
    import donnadb.legacy.parallel as parallel

    monkeypatch.setattr(parallel, "CHUNK_CHATS", 2)  # the clashing chats in other tasks
    own, other = str(uuid.uuid4()), str(uuid.uuid4())
    msg = {"role": "user", "content": "hi", "timestamp": "2024-05-01T10:00:00Z"}
    root = tmp_path / "data"
    for i in range(7):
        _chat(root, f"c_{i}", [{**msg, "id": str(uuid.uuid4())}])
    _chat(root, "c_a", [{**msg, "id": own}])
    _chat(root, "c_z", [{**msg, "id": other}, {**msg, "id": own}, {**msg, "id": other}])
    _, one_report = _import(settings, scratch_db, root, workers=0)
    _, two_report = _import(settings, second_db, root, workers=2)
    assert [n["path"] for n in two_report["notes"] if n["kind"] == "message_id_duplicate"] == [
        "chat_sessions/c_z.json", "chat_sessions/c_z.json"]
    assert two_report == one_report
    assert checksums(settings, second_db) == checksums(settings, scratch_db)


@pytest.mark.parametrize("created_at", [
    datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before PostgreSQL's epoch
    datetime(2000, 1, 1, tzinfo=UTC),
])
def test_copybin_rows_are_the_rows_psycopg_writes(settings, scratch_db, created_at):
    chat = uuid.uuid4()
    rows = [
        MessageRow(id=uuid.uuid4(), sequence_number=1, role="user", content="ünï ✓ 🦊 \\n\"",
                   metadata={"k": [1, 2.5, None, {"x": "y"}]}, created_at=created_at,
                   token_count=None, abuse_flagged=True),
        MessageRow(id=uuid.uuid4(), sequence_number=2**31 - 1, role="assistant", content="",
                   metadata={}, created_at=created_at, token_count=2**31 - 1,
                   abuse_flagged=False),
    ]
    encoded, offsets = encode_messages(chat, rows)
    assert list(offsets)[0] == 0 and len(offsets) == 2
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        conn.execute(TABLE.format("ours"))
        conn.execute(TABLE.format("theirs"))
        with conn.cursor() as cur, cur.copy(
                f"COPY ours ({MESSAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(SIGNATURE + encoded + TRAILER)
        with conn.cursor() as cur, cur.copy(
                f"COPY theirs ({MESSAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(TYPES)
            for m in rows:
                copy.write_row((chat, m.id, m.role, m.content, m.metadata, m.created_at,
                                m.sequence_number, m.token_count, m.abuse_flagged))
        diff = conn.execute("SELECT count(*) FROM ((TABLE ours EXCEPT TABLE theirs) UNION ALL "
                            "(TABLE theirs EXCEPT TABLE ours)) AS d").fetchone()[0]
        assert diff == 0
        assert conn.execute("SELECT count(*), min(created_at) FROM ours").fetchone() == (
            2, created_at)


def _workers_of(pid: int) -> list[int]:
    """The workers forked by the forkserver that ``pid`` started."""
    found = parser_processes()
    return [p for p, parent in found.items() if parent in found and found[parent] == pid]


def test_a_dead_worker_is_one_line_and_a_rerun_finishes(settings, scratch_db, second_db,
                                                        tmp_path):
    import os
    import signal
    import subprocess
    import time

    from donnadb.legacy.fixtures import generate
    from tests.legacy.conftest import DONNACTL, run_cli

    root = tmp_path / "data"
    generate(root, users=20, chats=1500, messages_per_chat=40, logs=0, deviations=False)
    args = ["migrate-data", "import", "--data-dir", str(root), "--workers", "2",
            "--report-dir", str(tmp_path / "r")]
    proc = subprocess.Popen([DONNACTL, *args, "--dbname", scratch_db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    killed = None
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        workers = _workers_of(proc.pid)
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert killed is not None, "the import ended before a worker could be killed"
    assert proc.returncode == 1, err
    assert "worker process died" in err and "Traceback" not in err
    assert run_cli(*args, "--dbname", scratch_db).returncode == 0
    assert run_cli(*args, "--dbname", second_db).returncode == 0
    assert checksums(settings, scratch_db) == checksums(settings, second_db)


def test_tasks_are_cut_by_bytes_as_well_as_by_chats(tmp_path, monkeypatch):
    """A task holds its chats in memory: large chat files make smaller tasks."""
    import donnadb.legacy.parallel as parallel

    msg = {"role": "user", "content": "x" * 1000, "timestamp": "2024-05-01T10:00:00Z"}
    root = tmp_path / "data"
    for i in range(10):
        _chat(root, f"c_{i:02d}", [msg] * (1 if i % 2 else 30))  # ~1 KB and ~30 KB files
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 40_000)
    chunks = list(parallel._chunks(LegacyReader.open(root).inventory))
    assert [c for chunk in chunks for c in chunk] == [f"c_{i:02d}" for i in range(10)]
    assert [len(c) for c in chunks] == [3, 4, 3]  # cut once a task passes 40,000 bytes
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 10**9)
    monkeypatch.setattr(parallel, "CHUNK_CHATS", 4)
    assert [len(c) for c in parallel._chunks(LegacyReader.open(root).inventory)] == [4, 4, 2]

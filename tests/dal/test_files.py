"""FileDataAccess beyond the contract: permissions, process-safety, atomicity, legacy files."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from datetime import UTC, datetime

import pytest

from donnadb.dal import FileDataAccess, LockTimeout
from donnadb.dal.values import legacy_message_id
from donnadb.errors import DataError

LEGACY_CHAT = {
    "chat_id": "c_01HV4K9M2ZQ",
    "user_id": "user_2aBcD3eF",
    "title": "Trip to Lisbon",
    "profile": "general",
    "created_at": "2025-03-01T10:00:00Z",
    "updated_at": "2025-03-01T10:04:12Z",
    "metadata": {"model": "gpt-4o", "client": "web"},
    "messages": [
        {"role": "User", "content": "Hi!", "timestamp": "2025-03-01T10:00:00Z",
         "metadata": {}, "tokens": 2, "flagged": False, "extra": "kept"},
        {"role": "bot", "content": "Hello! ...", "timestamp": 1740823205,
         "metadata": {"latency_ms": 830}, "tokens": 41},
    ],
}
LEGACY_MEMORY = {
    "user_id": "user_2aBcD3eF",
    "email": "ana@example.com",
    "name": "Ana",
    "profile": {"timezone": "Europe/Lisbon"},
    "preferences": {"language": "pt", "tone": "short"},
    "context": {"last_trip": {"city": "Lisbon"}, "pet": "cat"},
    "expires": {"context.last_trip": "2026-01-01T00:00:00Z"},
    "updated_at": "2025-03-02T08:00:00Z",
}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_folders_0700_files_0600_and_no_temp_files_left(tmp_path):
    root = tmp_path / "data"
    dal = FileDataAccess(root)
    dal.create_user({"clerk_id": "user_a"})
    dal.create_chat_session("c_1", "user_a", {})
    dal.add_message("c_1", "user", "hi")
    dal.set_user_memory("user_a", "context", "k", "v")
    for folder in (root, root / "chat_sessions", root / "memory", root / ".locks"):
        assert mode(folder) == 0o700, folder
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"c_1.json", "user_a.json", "c_1.lock", "user_a.lock"}
    for path in files:
        assert mode(path) == 0o600, path
    assert not [p for p in files if p.name.endswith(".tmp")]


def test_a_legacy_world_writable_file_becomes_0600_on_write(tmp_path):
    dal = FileDataAccess(tmp_path)
    path = tmp_path / "chat_sessions" / "c_old.json"
    path.write_text(json.dumps({**LEGACY_CHAT, "chat_id": "c_old"}))
    os.chmod(path, 0o777)  # noqa: S103 - the legacy app's permissions
    dal.add_message("c_old", "user", "new")
    assert mode(path) == 0o600


def test_legacy_files_are_read_as_documented(tmp_path):
    dal = FileDataAccess(tmp_path)
    chat = tmp_path / "chat_sessions" / "c_01HV4K9M2ZQ.json"
    chat.write_bytes(b"\xef\xbb\xbf" + json.dumps(LEGACY_CHAT).encode())  # with a BOM
    (tmp_path / "memory" / "user_2aBcD3eF.json").write_text(json.dumps(LEGACY_MEMORY))

    first, second = dal.get_chat_history("c_01HV4K9M2ZQ")
    assert (first["role"], second["role"]) == ("user", "assistant")
    assert first["created_at"] == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    assert second["created_at"] == datetime.fromtimestamp(1740823205, UTC)
    assert first["id"] == legacy_message_id("c_01HV4K9M2ZQ", 1)
    assert (first["token_count"], second["token_count"]) == (2, 41)
    session = dal.get_chat_session("c_01HV4K9M2ZQ")
    assert session["user_id"] == "user_2aBcD3eF"
    assert session["message_count"] == 2
    assert session["last_message_at"] == second["created_at"]

    user = dal.get_user_by_clerk_id("user_2aBcD3eF")
    assert user["preferences"] == {"language": "pt", "tone": "short"}
    # last_trip expired on 2026-01-01; pet never expires.
    assert dal.get_user_memory("user_2aBcD3eF", "context") == {"pet": "cat"}

    # Appending keeps every legacy field, including ones this store does not know.
    dal.add_message("c_01HV4K9M2ZQ", "user", "again")
    raw = json.loads(chat.read_text())
    assert raw["messages"][0]["extra"] == "kept"
    assert raw["messages"][1]["timestamp"] == 1740823205
    assert [m["sequence_number"] for m in dal.get_chat_history("c_01HV4K9M2ZQ")] == [1, 2, 3]


def test_a_corrupt_file_is_reported_and_never_overwritten(tmp_path):
    dal = FileDataAccess(tmp_path)
    path = tmp_path / "chat_sessions" / "c_cut.json"
    torn = b'{"chat_id": "c_cut", "messages": [{"role": "user", "cont'
    path.write_bytes(torn)
    with pytest.raises(DataError, match="c_cut.json is not valid JSON"):
        dal.add_message("c_cut", "user", "x")
    with pytest.raises(DataError):
        dal.get_chat_history("c_cut")
    assert path.read_bytes() == torn


def test_unsafe_names_are_refused(tmp_path):
    dal = FileDataAccess(tmp_path / "data")
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 201):
        with pytest.raises(DataError, match="invalid chat_id"):
            dal.create_chat_session(bad, None, {})
        assert dal.get_chat_session(bad) is None
    with pytest.raises(DataError, match="clerk_id"):
        dal.create_user({"email": "no-clerk@example.com"})
    assert not (tmp_path / "escape.json").exists()


def test_rollback_restores_files_byte_for_byte(tmp_path):
    dal = FileDataAccess(tmp_path)
    path = tmp_path / "chat_sessions" / "c_01HV4K9M2ZQ.json"
    original = json.dumps(LEGACY_CHAT, indent=2).encode()
    path.write_bytes(original)
    dal.begin_transaction()
    dal.add_message("c_01HV4K9M2ZQ", "user", "undone")
    dal.update_chat_session("c_01HV4K9M2ZQ", {"title": "undone"})
    dal.create_chat_session("c_new", None, {})
    dal.rollback()
    assert path.read_bytes() == original
    assert not (tmp_path / "chat_sessions" / "c_new.json").exists()


def test_a_transaction_holds_its_locks_until_it_ends(tmp_path):
    dal = FileDataAccess(tmp_path, lock_timeout=0.2)
    dal.create_chat_session("c_1", None, {})
    other = FileDataAccess(tmp_path, lock_timeout=0.2)
    dal.begin_transaction()
    dal.add_message("c_1", "user", "mine")
    outcome = []

    def contender():
        other.begin_transaction()
        try:
            other.add_message("c_1", "user", "theirs")
            outcome.append("written")
        except LockTimeout:
            outcome.append("timeout")
        finally:
            other.rollback()

    t = threading.Thread(target=contender)
    t.start()
    t.join()
    dal.commit()
    assert outcome == ["timeout"]
    assert [m["content"] for m in dal.get_chat_history("c_1")] == ["mine"]


def _append_from_process(root: str, tag: str, threads: int, count: int) -> None:
    dal = FileDataAccess(root)

    def work(n: int) -> None:
        for i in range(count):
            dal.add_message("c_shared", "user", f"{tag}.{n}.{i}")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_many_processes_and_threads_never_lose_a_message(tmp_path):
    root = tmp_path / "data"
    FileDataAccess(root).create_chat_session("c_shared", None, {})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_from_process, args=(str(root), f"p{n}", 3, 8))
             for n in range(4)]
    for p in procs:
        p.start()
    _append_from_process(str(root), "main", 3, 8)  # the parent writes at the same time
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    history = FileDataAccess(root).get_chat_history("c_shared", limit=10_000)
    expected = {f"{tag}.{n}.{i}" for tag in ("p0", "p1", "p2", "p3", "main")
                for n in range(3) for i in range(8)}
    assert len(history) == len(expected) == 120
    assert {m["content"] for m in history} == expected
    assert [m["sequence_number"] for m in history] == list(range(1, 121))


def test_message_ids_follow_the_import_rule(tmp_path):
    dal = FileDataAccess(tmp_path)
    dal.create_chat_session("c_1", None, {})
    ids = [dal.add_message("c_1", "user", f"m{i}") for i in range(3)]
    assert ids == [legacy_message_id("c_1", n) for n in (1, 2, 3)]
    assert [m["id"] for m in dal.get_chat_history("c_1")] == ids
    # The file stays in the legacy format: no field the old app does not know.
    raw = json.loads((tmp_path / "chat_sessions" / "c_1.json").read_text())
    assert set(raw["messages"][0]) == {"role", "content", "timestamp", "metadata", "tokens",
                                       "flagged"}


def test_log_lines_are_private_legacy_lines_numbered_by_their_writer(tmp_path):
    from donnadb.dal.values import legacy_log_id

    dal = FileDataAccess(tmp_path / "data")
    ids = [dal.write_log("Warning", f"m{i}", {"i": i}, ip_address="::ffff:10.0.0.1")
           for i in range(3)]
    (path,) = (tmp_path / "data" / "logs").glob("donnadb-*.jsonl")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["message"] for x in lines] == ["m0", "m1", "m2"]
    assert set(lines[0]) == {"ts", "level", "message", "context", "trace_id", "ip",
                             "user_agent", "uri"}
    assert (lines[0]["level"], lines[0]["ip"]) == ("warning", "::ffff:a00:1")
    assert ids == [legacy_log_id(f"{path.name}:{n}") for n in (1, 2, 3)]
    assert dal.read_log(f"{path.name}:2") == lines[1]
    assert dal.read_log(f"{path.name}:9") is None
    with pytest.raises(DataError, match="not a log line"):
        dal.read_log("../memory/x.json:1")

    # A second store (another process) never writes into the first one's file.
    other = FileDataAccess(tmp_path / "data")
    other.write_log("info", "elsewhere")
    assert len(list(path.parent.glob("donnadb-*.jsonl"))) == 2
    dal.close()
    other.close()


def test_a_failed_log_write_continues_in_a_new_file(tmp_path, monkeypatch):
    dal = FileDataAccess(tmp_path / "data")
    dal.write_log("info", "before")
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data)[:5])  # a torn line, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        dal.write_log("info", "torn")
    monkeypatch.undo()
    after = dal.write_log("info", "after")
    files = list((tmp_path / "data" / "logs").glob("donnadb-*.jsonl"))
    assert len(files) == 2
    # The new file is the one "after" went to (mtimes may tie within a clock tick).
    fresh = next(f for f in files if "before" not in f.read_text())
    from donnadb.dal.values import legacy_log_id
    assert after == legacy_log_id(f"{fresh.name}:1")
    dal.close()

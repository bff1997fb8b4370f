"""The reconcile queue's backlog as `donnactl status` reads it (pending.py): per entity,
without the queue's lock, each entry once while a reconcile renames files under it."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

from donnadb.dal import fileio
from donnadb.dal.pending import ReconcileQueue, entry_entity
from donnadb.dal.values import now_utc


def test_backlog_counts_each_entity_and_its_oldest_entry(tmp_path):
    queue = ReconcileQueue(tmp_path / "q" / "pending.jsonl")
    assert queue.backlog() == {}  # no folder yet: an empty queue, not an error
    before = now_utc() - timedelta(seconds=1)
    queue.append([{"kind": "message", "chat_id": "c", "message_id": "m1"},
                  {"kind": "chat", "chat_id": "c"}], op="add_message", error="refused")
    queue.append([{"kind": "user", "clerk_id": "u"}], op="set_user_memory", error="x")
    queue.append([{"kind": "user", "clerk_id": "v"}], op="create_user+set_user_memory",
                 error="x")
    queue.append([{"kind": "message", "chat_id": "c", "message_id": "m2"}],
                 op="add_message", error="refused")
    backlog = queue.backlog()
    assert {e: b["entries"] for e, b in backlog.items()} == {
        "messages": 2, "chats": 1, "memory": 1, "users": 1}
    assert before < backlog["messages"]["oldest"] <= backlog["memory"]["oldest"] <= now_utc()


def test_backlog_reads_without_the_queue_s_lock(tmp_path):
    """A writer holding the append lock (a slow disk) never makes the reader wait."""
    queue = ReconcileQueue(tmp_path / "q" / "pending.jsonl")
    queue.append([{"kind": "log", "source": "f:1"}], op="write_log", error="x")
    held = fileio.acquire(queue._lock)
    found = []
    try:
        reader = threading.Thread(target=lambda: found.append(queue.backlog()), daemon=True)
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the reader waited for the queue's lock"
    finally:
        fileio.release(held)
    assert found[0]["logs"]["entries"] == 1


def test_a_file_met_twice_during_a_claim_is_read_once(tmp_path):
    """A reconcile renames pending.jsonl to a batch while the reader looks: the reader
    can meet the same file under both names (here: a hard link, the state between its
    opening the pending file and listing the batches); a batch and the new pending file
    are both counted; an append under way (no newline yet) is not."""
    queue = ReconcileQueue(tmp_path / "q" / "pending.jsonl")
    queue.append([{"kind": "chat", "chat_id": "a"}], op="create_chat_session", error="x")
    os.link(queue.path, queue.folder / "pending.jsonl.0123.processing")
    assert queue.backlog()["chats"]["entries"] == 1
    os.unlink(queue.path)
    queue.append([{"kind": "chat", "chat_id": "b"}], op="update_chat_session", error="x")
    with queue.path.open("ab") as fh:
        # Lines no reader can use (a foreign kind, bytes that are not UTF-8) are skipped.
        fh.write(b'{"v": 1, "kind": ["chat"]}\n\xff\xfe\n')
        fh.write(b'{"v": 1, "kind": "chat", "chat_id": "c", "op": "up')
    assert queue.backlog()["chats"]["entries"] == 2
    assert queue.count() == 5  # count() counts lines; reconcile skips what it cannot read


def test_entry_entity_of_each_kind():
    assert entry_entity({"kind": "user", "op": "reconcile"}) == "users"
    assert entry_entity({"kind": "user", "op": "delete_user_memory"}) == "memory"
    assert entry_entity({"kind": "log"}) == "logs"
    assert entry_entity({"kind": "unknown"}) is None

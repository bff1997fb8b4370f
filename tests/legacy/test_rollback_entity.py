"""Rolling entities back from PostgreSQL to the files, as docs/runbook.md says.
While a store per entity kept their files, a restart in dual-write is all it takes;
once the files were retired (every entity in PostgreSQL), the entities are exported and
their folders put in place first: users and memory, or chat sessions and messages (which
the phases allow back in dual-write only with users and memory). Either way every write
made while the entity was in PostgreSQL is then served from the files, the next
dual-write copy keeps it, and `verify` is clean. Real PostgreSQL, the real CLI.

The stores here keep personal values in clear (tests/legacy/conftest.py turns field
encryption off); the sealed import, verify and export: test_sealed_import.py."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from donnadb import db
from donnadb.dal import FileDataAccess, MixedDataAccess, PostgresDataAccess
from donnadb.dal.values import LEGACY_KEY
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from tests.dal.conftest import ENTITIES
from tests.legacy.conftest import run_cli
from tests.legacy.test_cutover_under_load import HOLD, Cutover, ack_key, stored

#: Users and memory in PostgreSQL (sessions too, which that needs); messages still
#: copied. Then users and memory rolled back to dual-write, read from the files; from
#: the store of every entity in PostgreSQL, the others stay there.
CUT_OVER = ("postgresql", "postgresql", "postgresql", "dual", "file")
ROLLED_BACK = ("dual", "dual", "postgresql", "dual", "file")
ROLLED_BACK_FROM_RETIRED = ("dual", "dual", "postgresql", "postgresql", "postgresql")
#: Chat sessions and messages back in dual-write: users and memory with them (a chat
#: file needs its user's memory file), logs left in PostgreSQL.
CHATS_ROLLED_BACK_FROM_RETIRED = ("dual", "dual", "dual", "dual", "postgresql")
#: Messages alone back in dual-write: chat sessions stay in PostgreSQL (their chat files
#: the messages' containers), and users and memory with them.
MESSAGES_ROLLED_BACK_FROM_RETIRED = ("postgresql", "postgresql", "postgresql", "dual",
                                     "postgresql")
#: The load test's steps (test_cutover_under_load.STEPS) of the stop-start: the files
#: retired, then chats and messages (with users and memory) back in dual-write.
RETIRED_THEN_CHATS_BACK = [
    ("retired", dict.fromkeys(ENTITIES, "postgresql"), "postgresql", []),
    ("chats rolled back", dict(zip(ENTITIES, CHATS_ROLLED_BACK_FROM_RETIRED, strict=True)),
     "file", []),
]


def store(settings, data, dbname, phases, primary) -> MixedDataAccess:
    return MixedDataAccess(FileDataAccess(data), PostgresDataAccess(settings, dbname=dbname),
                           phases=dict(zip(ENTITIES, phases, strict=True)), primary=primary)


def legacy_dir(settings, dbname, tmp_path, *, older_layouts: bool = False):
    """A generated data directory, imported; with ``older_layouts``, a chat found only
    in ``conversations/<user>/`` and one only in ``chat_history/`` (a transcript)."""
    data = tmp_path / "data"
    generate(data, users=6, chats=8, messages_per_chat=3, logs=5, deviations=False)
    if older_layouts:
        move_to_older_layouts(data)
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        import_data_dir(LegacyReader.open(data), conn, batch_size=100)
    return data, sorted(p.stem for p in (data / "memory").glob("*.json"))[0]


#: The chats the generated directory keeps elsewhere than chat_sessions/ (older_layouts).
CONVERSATIONS_CHAT, TRANSCRIPT_CHAT = "c_7000001", "c_7000002"


def move_to_older_layouts(data) -> None:
    chats = data / "chat_sessions"
    owner = json.loads((chats / f"{CONVERSATIONS_CHAT}.json").read_text())["user_id"]
    (data / "conversations" / owner).mkdir(parents=True, exist_ok=True)
    os.replace(chats / f"{CONVERSATIONS_CHAT}.json",
               data / "conversations" / owner / f"{CONVERSATIONS_CHAT}.json")
    (data / "chat_history").mkdir(exist_ok=True)
    (data / "chat_history" / f"{TRANSCRIPT_CHAT}.txt").write_text(
        "an old export\n[2024-05-01 10:00:00] User: hello\n"
        "[2024-05-01 10:00:09] bot: hi,\non two lines\n")
    os.remove(chats / f"{TRANSCRIPT_CHAT}.json")


def write_while_in_postgresql(dal, legacy: str, user_id=lambda clerk: clerk) -> None:
    """A new user, memory set, overwritten and deleted, a rename, a chat: ``user_id``
    maps a Clerk id to the store's id."""
    late = dal.create_user({"clerk_id": "user_late", "email": "late@example.org",
                            "name": "Late"})
    dal.set_user_memory(late, "context", "city", "Porto")
    dal.set_user_memory(user_id(legacy), "context", "pet", "dog")  # was "cat" in its file
    dal.set_user_memory(user_id(legacy), "preferences", "units", "metric")
    dal.delete_user_memory(user_id(legacy), "context", "notes")
    dal.update_user(user_id(legacy), {"name": "Renamed"})
    dal.create_chat_session("c_late", late, {}, title="Late chat")
    dal.add_message("c_late", "user", "written while users were in PostgreSQL")


def served_from_the_files(settings, data, dbname, legacy: str, phases) -> None:
    back = store(settings, data, dbname, phases, "file")
    try:
        assert back.get_user_by_id("user_late")["name"] == "Late"
        assert back.get_user_memory("user_late", "context") == {"city": "Porto"}
        memory = back.get_user_memory(legacy, "context")
        assert memory["pet"] == "dog" and "notes" not in memory
        assert back.get_user_memory(legacy, "preferences")["units"] == "metric"
        assert back.get_user_by_id(legacy)["name"] == "Renamed"
        assert [s["chat_id"] for s in back.list_chat_sessions("user_late")] == ["c_late"]
        # A write in dual-write copies the user's file whole: nothing of the above is lost.
        back.set_user_memory(legacy, "context", "after", "rollback")
        assert back.queue.count() == 0
        assert back.pg.get_user_memory(back.pg.get_user_by_clerk_id(legacy)["id"],
                                       "context") == back.get_user_memory(legacy, "context")
    finally:
        back.close()
    for entity in ("users", "memory"):
        done = run_cli("migrate-data", "verify", "--entity", entity)
        assert done.returncode == 0, done.stdout[-3000:]


def write_chats_while_retired(pg: PostgresDataAccess, legacy: str) -> dict[str, str]:
    """What the application does to chats with every entity in PostgreSQL: a new chat
    with messages, messages added to chats from each legacy layout, a session renamed
    and archived. Returns {chat id: the id of the last message written to it}."""
    owner = pg.get_user_by_clerk_id(legacy)["id"]
    pg.create_chat_session("c_retired", owner, {"client": "web"}, title="Retired chat")
    last = {"c_retired": pg.add_message("c_retired", "user", "first, after the files retired")}
    last["c_retired"] = pg.add_message("c_retired", "assistant", "an answer",
                                       {"latency_ms": 7}, token_count=3)
    for chat in ("c_7000000", CONVERSATIONS_CHAT, TRANSCRIPT_CHAT):
        last[chat] = pg.add_message(chat, "user", f"later in {chat}", {"client": "app"},
                                    token_count=4, abuse_flagged=chat == "c_7000000")
    pg.update_chat_session("c_7000003", {"title": "Renamed", "status": "archived"})
    return last


def without_legacy(record: dict) -> dict:
    """A session or message as the application sees it: the import's record of how the
    legacy file spelled it (metadata._donnadb_legacy) is PostgreSQL's alone; export
    writes the spelling itself back."""
    return {**record, "metadata": {k: v for k, v in record["metadata"].items()
                                   if k != LEGACY_KEY}}


def chats_served_from_the_files(settings, data, dbname, last: dict[str, str],
                                phases=CHATS_ROLLED_BACK_FROM_RETIRED) -> None:
    """Every chat session and message PostgreSQL holds is served the same by a store in
    ``phases`` reading the files, and the next message, written to the files first, is
    copied at its place."""
    pg = PostgresDataAccess(settings, dbname=dbname)
    back = store(settings, data, dbname, phases, "file")
    try:
        with db.connect("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
            chat_ids = [r[0] for r in conn.execute("SELECT chat_id FROM chat_sessions")]
        assert set(last) <= set(chat_ids)
        for chat in chat_ids:
            held = pg.get_chat_session(chat)
            owner = held["user_id"] and pg.get_user_by_id(held["user_id"])["clerk_id"]
            served = back.get_chat_session(chat)
            assert served is not None, f"chat {chat} is not served from the files"
            assert without_legacy(served) == without_legacy(
                {**held, "id": chat, "user_id": owner}), chat
            held_messages = [without_legacy(m) for m in pg.get_chat_history(chat, limit=1000)]
            assert [without_legacy(m) for m in back.get_chat_history(chat, limit=1000)] == \
                held_messages, chat
        for chat, message_id in last.items():
            assert back.get_chat_history(chat, limit=1)[0]["id"] == message_id
        for chat in last:
            after = back.add_message(chat, "user", "after the rollback")
            assert pg.get_chat_history(chat, limit=1)[0]["id"] == after
        back.update_chat_session(TRANSCRIPT_CHAT, {"title": "Titled after the rollback"})
        assert back.queue.count() == 0
        assert back.get_chat_session("c_7000003")["title"] == "Renamed"
    finally:
        back.close()
        pg.close()
    for entity in ("chats", "messages"):
        done = run_cli("migrate-data", "verify", "--entity", entity)
        assert done.returncode == 0, done.stdout[-3000:]


#: The folder of DATA_DIR an entity's export writes.
FOLDER = {"memory": "memory", "chats": "chat_sessions", "messages": "chat_sessions"}


def roll_back(data, work, entities=("memory", "chats")) -> None:
    """The runbook's commands once every process is stopped: export the entities (by
    default memory and chats: chats in dual-write need their users' memory files, so
    users and memory come back too) into new directories under ``work``, put the
    retired folders aside there, and the exported ones in their place."""
    work.mkdir(exist_ok=True)
    for entity in entities:
        folder = FOLDER[entity]
        out = work / f"rollback-{entity}"
        done = run_cli("migrate-data", "export", "--entity", entity, "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        os.rename(data / folder, work / f"{folder}.before-rollback")
        shutil.move(out / folder, data / folder)


@pytest.fixture
def cli_env(monkeypatch, tmp_path, scratch_db):
    monkeypatch.setenv("DB_NAME", scratch_db)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPS_LOG_FILE", str(tmp_path / "donnactl.jsonl"))


def test_a_rollback_while_the_files_are_kept_is_a_restart(settings, scratch_db, tmp_path,
                                                          cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path)
    cut = store(settings, data, scratch_db, CUT_OVER, "postgresql")
    try:
        write_while_in_postgresql(cut, legacy)
    finally:
        cut.close()
    served_from_the_files(settings, data, scratch_db, legacy, ROLLED_BACK)


def test_a_rollback_after_the_files_were_retired_exports_first(settings, scratch_db, tmp_path,
                                                               cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path)
    retired = PostgresDataAccess(settings, dbname=scratch_db)
    try:
        write_while_in_postgresql(
            retired, legacy, lambda clerk: retired.get_user_by_clerk_id(clerk)["id"])
    finally:
        retired.close()
    # The files know none of it.
    assert FileDataAccess(data).get_user_by_id("user_late") is None

    out = tmp_path / "rollback"
    done = run_cli("migrate-data", "export", "--entity", "memory", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    os.rename(data / "memory", tmp_path / "memory.before-rollback")
    shutil.move(out / "memory", data / "memory")
    served_from_the_files(settings, data, scratch_db, legacy, ROLLED_BACK_FROM_RETIRED)


def test_chats_and_messages_roll_back_after_the_files_were_retired(settings, scratch_db,
                                                                    tmp_path, cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path, older_layouts=True)
    retired = PostgresDataAccess(settings, dbname=scratch_db)
    try:
        write_while_in_postgresql(
            retired, legacy, lambda clerk: retired.get_user_by_clerk_id(clerk)["id"])
        last = write_chats_while_retired(retired, legacy)
    finally:
        retired.close()  # the stop of the runbook's stop-start
    assert FileDataAccess(data).get_chat_session("c_retired") is None

    roll_back(data, tmp_path / "rollback")
    chats_served_from_the_files(settings, data, scratch_db, last)
    served_from_the_files(settings, data, scratch_db, legacy, CHATS_ROLLED_BACK_FROM_RETIRED)


def test_messages_alone_roll_back_while_chat_sessions_stay_in_postgresql(
        settings, scratch_db, tmp_path, cli_env):
    data, legacy = legacy_dir(settings, scratch_db, tmp_path, older_layouts=True)
    retired = PostgresDataAccess(settings, dbname=scratch_db)
    try:
        last = write_chats_while_retired(retired, legacy)
    finally:
        retired.close()
    roll_back(data, tmp_path / "rollback", entities=("messages",))
    chats_served_from_the_files(settings, data, scratch_db, last,
                                MESSAGES_ROLLED_BACK_FROM_RETIRED)


def test_a_write_the_stop_missed_is_found_and_a_second_export_takes_it(settings, scratch_db,
                                                                       tmp_path, cli_env):
    """An export is one snapshot: a process still writing PostgreSQL alone meanwhile
    (one the stop missed) makes writes the exported files lack. `verify` of the entity
    names the chat; stopping that process and exporting again takes its writes."""
    data, legacy = legacy_dir(settings, scratch_db, tmp_path, older_layouts=True)
    straggler = PostgresDataAccess(settings, dbname=scratch_db)
    try:
        last = write_chats_while_retired(straggler, legacy)
        roll_back(data, tmp_path / "first")
        last["c_7000000"] = straggler.add_message("c_7000000", "user", "after the export")
    finally:
        straggler.close()
    done = run_cli("migrate-data", "verify", "--entity", "messages", "--json")
    assert done.returncode == 1, done.stdout[-3000:]
    assert [(d["kind"], d["key"]) for d in json.loads(done.stdout)["differences"]] == [
        ("message_count", "c_7000000")]

    roll_back(data, tmp_path / "second")
    chats_served_from_the_files(settings, data, scratch_db, last)


def served_by(files: FileDataAccess, ack: dict) -> bool:
    """Whether the files serve what a worker's acknowledged write wrote."""
    entity = ack["entity"]
    if entity == "users":
        return files.get_user_by_id(ack["clerk"]) is not None
    if entity == "memory":
        return ack["key"] in files.get_user_memory(ack["clerk"], "context")
    if entity == "chats":
        return files.get_chat_session(ack["chat"]) is not None
    return (ack["id"], ack["content"]) in {
        (m["id"], m["content"]) for m in files.get_all_messages(ack["chat"])}


def test_the_stop_start_rollback_of_chats_loses_no_write_of_the_load(settings, scratch_db,
                                                                      tmp_path, cli_env):
    """The runbook's sequence with the load test's application processes: they write
    with every entity in PostgreSQL, all stop, the exports are put in place, they start
    with chats and messages (and users and memory) in dual-write and write on. Every
    write acknowledged on either side of the stop is in PostgreSQL and served from the
    files, and `verify` is clean."""
    data, _ = legacy_dir(settings, scratch_db, tmp_path, older_layouts=True)
    cut = Cutover(tmp_path, scratch_db, data, steps=RETIRED_THEN_CHATS_BACK)
    try:
        cut.start(seed=1000)
        time.sleep(HOLD)
        cut.stop()
        roll_back(data, tmp_path / "rollback")
        cut.start(seed=2000)
        time.sleep(HOLD)
    finally:
        cut.stop()
    records = cut.records()
    assert not [r for r in records if r["kind"] == "failed"], \
        [r for r in records if r["kind"] == "failed"][:3]
    acks = [r for r in records if r["kind"] == "ack" and r["entity"] != "logs"]
    # Each side of the stop wrote messages (a write's name has its worker's seed in it).
    for seed in ("s100", "s200"):
        assert any(a["entity"] == "messages" and seed in a["content"] for a in acks), seed
    held = stored(settings, scratch_db)
    assert [a for a in acks if ack_key(a)[1] not in held[a["entity"]]] == []
    files = FileDataAccess(data)
    assert [a for a in acks if not served_by(files, a)] == []
    for entity in ("chats", "messages", "users", "memory"):
        done = run_cli("migrate-data", "verify", "--entity", entity)
        assert done.returncode == 0, done.stdout[-3000:]

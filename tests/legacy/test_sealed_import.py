"""The legacy path with field encryption on (CRYPTO_ENABLED): the import writes users and
memory sealed from the start, verify and export open them, and re-runs, conflicts,
kills and rollbacks behave as they do in clear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from donnadb import db
from donnadb.dal import PostgresDataAccess
from donnadb.legacy.fixtures import generate
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.verify import table_checksums
from tests.legacy.conftest import DONNACTL

#: Markers put in one memory file (personal) and one chat (the control: message text
#: is not sealed, so the same grep must find it).
MARK = {"email": "zqsealed.ann@example.org", "name": "zqAnnSealed", "city": "zqLisbonSealed",
        "theme": "zqDarkSealed", "note": "zqNoteSealed", "said": "zqSaidInClear"}
COUNT_ALL = """SELECT (SELECT count(*) FROM users),
                      (SELECT count(*) FROM users WHERE wrapped_key IS NOT NULL),
                      (SELECT count(*) FROM user_memory), (SELECT count(*) FROM messages)"""


def _env(kek_file: Path | None) -> dict[str, str]:
    """The environment beats the host's settings file, whatever that says today."""
    if kek_file is None:
        return {**os.environ, "COLUMNS": "200", "CRYPTO_ENABLED": "false"}
    return {**os.environ, "COLUMNS": "200", "CRYPTO_ENABLED": "true",
            "CRYPTO_KEK_FILE": str(kek_file)}


def _cli(kek_file: Path | None, *args: str) -> subprocess.CompletedProcess:
    """``donnactl`` as an operator runs it, with field encryption on when ``kek_file``."""
    return subprocess.run([DONNACTL, *args], capture_output=True, text=True, cwd="/",
                          env=_env(kek_file), timeout=300, check=False)


def _import(kek_file: Path | None, root: Path, dbname: str, reports: Path, *extra: str
            ) -> dict:
    done = _cli(kek_file, "migrate-data", "import", "--data-dir", str(root), "--dbname",
                dbname, "--json", "--report-dir", str(reports), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["summary"]


def _verify(kek_file: Path | None, root: Path, dbname: str) -> subprocess.CompletedProcess:
    return _cli(kek_file, "migrate-data", "verify", "--data-dir", str(root), "--dbname",
                dbname, "--json")


def _data_dir(root: Path, **kwargs) -> Path:
    """A generated data directory (every deviation) with the markers in its first user."""
    generate(root, chats=20, messages_per_chat=4, logs=10, long_chat_messages=50,
             large_message_bytes=0, **{"users": 12, **kwargs})
    path = sorted((root / "memory").glob("user_7*.json"))[0]
    doc = json.loads(path.read_text())
    doc.update(email=MARK["email"], name=MARK["name"])
    doc["profile"]["city"] = MARK["city"]
    doc["preferences"]["theme"] = MARK["theme"]
    doc["context"]["note"] = {"text": MARK["note"]}
    path.write_text(json.dumps(doc))
    chat = sorted((root / "chat_sessions").glob("c_7*.json"))[0]
    doc = json.loads(chat.read_text())
    doc["messages"][0]["content"] = f"I said {MARK['said']}"
    chat.write_text(json.dumps(doc))
    return root


def _dump(dbname: str) -> str:
    """pg_dump's plain SQL of the whole database: what a backup shows without the key."""
    return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dump", "-d", dbname],
                          capture_output=True, text=True, check=True, cwd="/").stdout


def _checksums(settings, dbname: str) -> dict:
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        return table_checksums(conn)


def _assert_dal_reads_the_files(sealed_settings, dbname: str, root: Path) -> int:
    """Every user and memory value the DAL reads (sealed) equals the files'; the number of
    users compared."""
    users = list(LegacyReader.open(root).users())
    with PostgresDataAccess(sealed_settings, dbname=dbname) as dal:
        for user in users:
            got = dal.get_user_by_clerk_id(user.clerk_id) if user.clerk_id \
                else dal.get_user_by_id(str(user.id))
            assert (got["email"], got["name"], got["profile"], got["preferences"]) == (
                user.email, user.name, user.profile, user.preferences), user.clerk_id
            entries = {(e["memory_type"], e["key"]): e["value"]
                       for e in dal.memory_entries(got["id"])}
            assert entries == {(m.memory_type, m.key): m.value for m in user.memory}
    return len(users)


def test_a_sealed_import_stores_no_personal_plaintext_and_reads_back(
        settings, sealed_settings, kek_file, scratch_db, tmp_path):
    root = _data_dir(tmp_path / "data")
    first = _import(kek_file, root, scratch_db, tmp_path / "r")
    assert first["written"]["users"] >= 12 and first["conflicts"] == 0

    dump = _dump(scratch_db)
    emails = {u.email for u in LegacyReader.open(root).users() if u.email}
    assert MARK["email"] in emails
    found = [v for v in [*emails, MARK["name"], MARK["city"], MARK["theme"], MARK["note"],
                         "Europe/Lisbon", "America/New_York"] if v in dump]
    assert found == []
    assert MARK["said"] in dump  # the control: the same grep finds clear text
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        # One data key per user with a memory file; users known only from chats are bare.
        assert conn.execute(
            "SELECT count(*) FROM users u WHERE (email_sealed IS NOT NULL OR profile <> '{}') "
            "AND wrapped_key IS NULL"
        ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM users WHERE email IS NOT NULL OR "
                            "name IS NOT NULL").fetchone()[0] == 0
    assert _assert_dal_reads_the_files(sealed_settings, scratch_db, root) >= 10

    done = _verify(kek_file, root, scratch_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["stored_in_clear"] == 0

    # Without the key, verify says what it needs in one line; it never compares garbage.
    done = _verify(None, root, scratch_db)
    assert done.returncode == 3
    assert "sealed" in done.stderr and "CRYPTO_KEK_FILE" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

    # A re-run changes nothing (the stored ciphertext is kept, not sealed again).
    before = _checksums(settings, scratch_db)
    again = _import(kek_file, root, scratch_db, tmp_path / "r")
    assert again["written"] == {} and again["conflicts"] == 0
    assert _checksums(settings, scratch_db) == before


def _edit_memory(root: Path, clerk: str, change) -> None:
    path = root / "memory" / f"{clerk}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed"])
def test_a_changed_file_is_an_update_or_a_conflict_as_in_clear(
        settings, sealed_settings, kek_file, scratch_db, tmp_path, sealed):
    key = kek_file if sealed else None
    root = tmp_path / "data"
    generate(root, users=6, chats=6, messages_per_chat=3, logs=0, deviations=False)
    _import(key, root, scratch_db, tmp_path / "r")
    newer, older = sorted(p.stem for p in (root / "memory").glob("*.json"))[:2]

    def newer_file(doc):  # a newer version of the file: replaces the stored rows
        doc["context"]["pet"] = "parrot (changed in the file)"
        doc["name"] = "Renamed in the file"
        doc["updated_at"] = "2026-06-01T00:00:00Z"

    def same_version(doc):  # changed without a newer updated_at: conflicts, not written
        doc["context"]["pet"] = "hamster (not imported)"
        doc["email"] = "changed.without.version@example.org"

    _edit_memory(root, newer, newer_file)
    _edit_memory(root, older, same_version)
    n_memory = len(next(u for u in LegacyReader.open(root).users() if u.clerk_id == newer
                        ).memory)
    again = _import(key, root, scratch_db, tmp_path / "r")
    assert again["written"] == {"users": 1, "user_memory": n_memory}
    assert {(c["table"], c["key"]) for c in again["conflict_examples"]} == {
        ("users", older), ("user_memory", f"{older}/context/pet")}
    assert again["conflicts"] == 2

    with PostgresDataAccess(sealed_settings if sealed else settings, dbname=scratch_db) as dal:
        user = dal.get_user_by_clerk_id(newer)
        assert user["name"] == "Renamed in the file"
        assert dal.get_user_memory(user["id"], "context", "pet") == {
            "pet": "parrot (changed in the file)"}
        kept = dal.get_user_by_clerk_id(older)
        assert kept["email"] != "changed.without.version@example.org"
        assert dal.get_user_memory(kept["id"], "context", "pet")["pet"] != \
            "hamster (not imported)"
    # The newer file is now what is stored; the other one still differs, as reported.
    done = _verify(key, root, scratch_db)
    assert done.returncode == 1
    assert {(d["kind"], d["key"]) for d in json.loads(done.stdout)["differences"]} == {
        ("user_differs", older), ("memory_differs", f"{older}/context/pet")}


def test_a_user_the_app_wrote_first_keeps_its_data_key(
        settings, sealed_settings, kek_file, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=4, chats=4, messages_per_chat=3, logs=0, deviations=False)
    clerk = sorted(p.stem for p in (root / "memory").glob("*.json"))[0]
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        uid = dal.create_user({"clerk_id": clerk, "email": "app@example.org", "name": "App"})
        dal.set_user_memory(uid, "context", "pet", "dog (the app's)")
    key_sql = "SELECT kek_id, wrapped_key FROM users WHERE id = %s"
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        key = conn.execute(key_sql, (uid,)).fetchone()
    summary = _import(kek_file, root, scratch_db, tmp_path / "r")
    # The stored row is newer than the file: kept, reported; the file's other keys added.
    assert ("users", clerk) in {(c["table"], c["key"]) for c in summary["conflict_examples"]}
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute(key_sql, (uid,)).fetchone() == key
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        user = dal.get_user_by_id(uid)
        assert (user["email"], user["name"]) == ("app@example.org", "App")
        memory = dal.get_user_memory(uid, "context")
        assert memory["pet"] == "dog (the app's)" and memory["notes"] == [1, 2.5, None, "x"]


def test_export_from_a_sealed_database_round_trips(
        settings, sealed_settings, kek_file, scratch_db, second_db, tmp_path):
    root = _data_dir(tmp_path / "data")
    _import(kek_file, root, scratch_db, tmp_path / "r")

    # Without the key file the export refuses in one line and leaves --out empty.
    refused = tmp_path / "refused"
    done = _cli(None, "migrate-data", "export", "--out", str(refused), "--dbname", scratch_db)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "CRYPTO_KEK_FILE" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert list(refused.iterdir()) == []

    out = tmp_path / "exported"
    done = _cli(kek_file, "migrate-data", "export", "--out", str(out), "--dbname", scratch_db,
                "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    exported = b"".join(p.read_bytes() for p in (out / "memory").glob("*.json"))
    assert MARK["email"].encode() in exported and b"$dnc1$" not in exported
    done = _verify(kek_file, out, scratch_db)
    assert done.returncode == 0, done.stdout
    # ... and the exported files load into another sealed database as the originals did.
    _import(kek_file, out, second_db, tmp_path / "r")
    done = _verify(kek_file, root, second_db)
    assert done.returncode == 0, done.stdout
    _assert_dal_reads_the_files(sealed_settings, second_db, root)


def test_values_whose_data_key_is_gone_are_reported_never_exported(
        settings, kek_file, scratch_db, tmp_path):
    root = _data_dir(tmp_path / "data")
    _import(kek_file, root, scratch_db, tmp_path / "r")
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        # As in a database restored from before `users forget`: the rows, not the key.
        uid = conn.execute("UPDATE users SET kek_id = NULL, wrapped_key = NULL, "
                           "key_created_at = NULL WHERE id = (SELECT id FROM users "
                           "WHERE email_hmac IS NOT NULL ORDER BY id LIMIT 1) "
                           "RETURNING id::text").fetchone()[0]
    out = tmp_path / "exported"
    done = _cli(kek_file, "migrate-data", "export", "--out", str(out), "--dbname", scratch_db)
    assert done.returncode == 6, done.stdout + done.stderr
    assert f"user {uid} has sealed values but no data key" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == []
    done = _verify(kek_file, root, scratch_db)
    assert done.returncode == 1
    kinds = {d["kind"] for d in json.loads(done.stdout)["differences"]}
    assert kinds == {"user_unreadable", "memory_unreadable"}


@pytest.mark.parametrize("fault", ["missing", "loose"])
def test_an_unusable_key_file_stops_the_import_before_any_write(
        settings, kek_file, scratch_db, tmp_path, fault):
    root = tmp_path / "data"
    generate(root, users=3, chats=3, messages_per_chat=2, logs=2, deviations=False)
    if fault == "missing":
        kek_file.unlink()
    else:
        kek_file.chmod(0o644)
    done = _cli(kek_file, "migrate-data", "import", "--data-dir", str(root), "--dbname",
                scratch_db, "--report-dir", str(tmp_path / "r"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert str(kek_file) in done.stderr and len(done.stderr.strip().splitlines()) == 1
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute(COUNT_ALL).fetchone() == (0, 0, 0, 0)


def test_kill_9_in_the_users_phase_then_rerun_completes_sealed(
        settings, sealed_settings, kek_file, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=600, chats=10, messages_per_chat=2, logs=0, deviations=False)
    total = len(list((root / "memory").glob("*.json")))
    args = ["migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
            "--batch-size", "20", "--workers", "0", "--report-dir", str(tmp_path / "r")]
    proc = subprocess.Popen([DONNACTL, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(kek_file), cwd="/")
    stored = 0
    deadline = time.monotonic() + 120
    with db.connect("migrator", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        while stored < 60 and time.monotonic() < deadline:
            stored = conn.execute("SELECT count(*) FROM users "
                                  "WHERE wrapped_key IS NOT NULL").fetchone()[0]
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        users, keys = conn.execute("SELECT (SELECT count(*) FROM users), "
                                   "(SELECT count(*) FROM users "
                                   "WHERE wrapped_key IS NOT NULL)").fetchone()
    assert 0 < keys == users < total, "the kill must land in the users phase"

    _import(kek_file, root, scratch_db, tmp_path / "r")
    assert _verify(kek_file, root, scratch_db).returncode == 0
    assert _assert_dal_reads_the_files(sealed_settings, scratch_db, root) == total
    again = _import(kek_file, root, scratch_db, tmp_path / "r")
    assert again["written"] == {} and again["conflicts"] == 0


def test_rows_imported_in_clear_are_compared_as_they_are_and_counted(
        settings, kek_file, scratch_db, tmp_path):
    root = tmp_path / "data"
    generate(root, users=4, chats=4, messages_per_chat=2, logs=0, deviations=False)
    _import(None, root, scratch_db, tmp_path / "r")  # encryption off
    done = _verify(kek_file, root, scratch_db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["stored_in_clear"] > 0
    # Turning encryption on later and importing again: the clear rows are equal to the
    # files, so nothing is written or reported (`keys seal-existing` seals them).
    again = _import(kek_file, root, scratch_db, tmp_path / "r")
    assert again["written"] == {} and again["conflicts"] == 0

"""Property-based: legacy directories holding any JSON value in any documented field, at any
depth, in every file kind. The import never crashes (exit 0 or 1), every record is stored
(and verify agrees) or quarantined with its reason, and export round-trips what was stored.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from donnadb import db
from donnadb.legacy import chats as chatmod
from donnadb.legacy import logs as logmod
from donnadb.legacy import users as usermod
from donnadb.legacy.export import export_data_dir
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.verify import table_checksums, verify
from tests.legacy.conftest import run_cli
from tests.support import superuser_psql

TABLES = "users, chat_sessions, messages, user_memory, system_logs"
REJECTED = "rejected by the database"

# Text PostgreSQL cannot store as it is (NUL, lone surrogates), beside ordinary text.
odd_text = st.text(alphabet=st.sampled_from(["\x00", "\ud800", "\udfff", "a", "é", "\u2028",
                                            " ", "%", "\\", '"', "😀", "\x7f"]), max_size=12)
text = st.one_of(st.text(max_size=12), odd_text, st.just("x" * 300))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, 2**64 + 1, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False), text,
    st.sampled_from(["2025-03-01T10:00:00Z", "2025-03-01 10:00:00", "1740823205",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "fe80::1%eth0", "::ffff:1.2.3.4", "203.0.113.7"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(text, inner, max_size=3), max_leaves=6)


def _fields(names: tuple[str, ...]):
    """An object with any subset of ``names`` holding any JSON value, plus stray keys."""
    return st.tuples(st.dictionaries(st.sampled_from(names), json_values),
                     st.dictionaries(text, json_values, max_size=2)
                     ).map(lambda t: {**t[1], **t[0]})


messages = st.lists(st.one_of(_fields(chatmod.MESSAGE_FIELDS + ("id",)), json_values),
                    max_size=4)
chat_docs = st.tuples(_fields(chatmod.CHAT_FIELDS), st.one_of(messages, json_values)
                      ).map(lambda t: {**t[0], "messages": t[1]})
memory_docs = st.tuples(
    _fields(usermod.KNOWN_KEYS),
    st.dictionaries(st.sampled_from(usermod.SECTIONS), st.dictionaries(text, json_values,
                                                                         max_size=3))
).map(lambda t: {**t[0], **t[1]})
log_lines = _fields(logmod.FIELDS)
# chat_history/*.txt: a preamble, then "[time] role: text" messages (any text but a newline
# in the role, text that may continue over lines).
transcripts = st.tuples(
    text, st.lists(st.tuples(st.sampled_from(["user", "Bot", "SYSTEM", "tool", "ai x"]), text,
                             st.one_of(text, st.just(""))), min_size=1, max_size=3))
data_dirs = st.fixed_dictionaries({
    "transcripts": st.lists(transcripts, max_size=2),
    "chats": st.lists(chat_docs, max_size=3),
    "conversations": st.lists(chat_docs, max_size=1),
    "memory": st.lists(memory_docs, max_size=3),
    "logs": st.lists(st.one_of(log_lines, json_values), max_size=4),
})


def _write(root: Path, drawn: dict) -> None:
    def dump(path: Path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, ensure_ascii=True))

    for n, doc in enumerate(drawn["chats"]):
        dump(root / "chat_sessions" / f"c_{n}.json", doc)
    for n, doc in enumerate(drawn["conversations"]):
        dump(root / "conversations" / "user_x" / f"c_{n % 2}.json", doc)
    for n, (preamble, msgs) in enumerate(drawn.get("transcripts", [])):
        lines = [preamble.replace("[", "(")] if preamble else []
        lines += [f"[2024-05-01 10:00:0{i}] {role}: {first}" + (f"\n{more}" if more else "")
                  for i, (role, first, more) in enumerate(msgs)]
        path = root / "chat_history" / f"c_t{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    for n, doc in enumerate(drawn["memory"]):
        dump(root / "memory" / f"user_{n}.json", doc)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "logs" / "app.jsonl").write_text(
        "".join(json.dumps(line, ensure_ascii=True) + "\n" for line in drawn["logs"]))


def _truncate(settings, *dbnames: str) -> None:
    for name in dbnames:
        with db.connect("migrator", settings=settings, dbname=name) as conn:
            db.set_local_role(conn, settings.db_role_owner)
            conn.execute(f"TRUNCATE {TABLES} CASCADE")


@hsettings(max_examples=50, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture,
                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=data_dirs)
def test_any_json_imports_or_is_quarantined_and_round_trips(settings, scratch_db, second_db,
                                                             drawn):
    check_import(settings, scratch_db, second_db, drawn)


def check_import(settings, scratch_db: str, second_db: str, drawn: dict) -> None:
    """Import ``drawn`` written as a data directory; assert the properties."""
    _truncate(settings, scratch_db, second_db)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        _write(root, drawn)
        reader = LegacyReader.open(root)
        with db.connect("migrator", settings=settings, dbname=scratch_db,
                        autocommit=True) as conn:
            # Never an exception: what the database refuses is counted and quarantined.
            summary = import_data_dir(reader, conn, batch_size=100, workers=0)
            quarantined = reader.report.quarantined
            rejected = {q["path"] for q in quarantined if q["reason"] == REJECTED}
            assert len(rejected) == summary.rejected
            # Every chat file is stored or quarantined (a copy may stand in for it).
            stored = {r[0] for r in conn.execute("SELECT chat_id FROM chat_sessions")}
            for path in (root / "chat_sessions").glob("*.json"):
                assert path.stem in stored or any(
                    q["path"].endswith(f"/{path.name}") for q in quarantined), path.name
            # Every log line too.
            lines = sum(1 for line in (root / "logs" / "app.jsonl").read_text().splitlines()
                        if line.strip())
            logged = conn.execute("SELECT count(*) FROM system_logs").fetchone()[0]
            assert logged + sum(q["path"].startswith("logs/app.jsonl:") for q in quarantined
                                ) == lines
            # verify agrees on everything that was not refused.
            result = verify(LegacyReader.open(root), conn)
            assert all(any(d["key"] in path for path in rejected) for d in result.differences
                       ), result.differences
            if not rejected:
                assert result.ok, result.differences
            export_data_dir(conn, Path(tmp) / "out")
            first = table_checksums(conn)
        with db.connect("migrator", settings=settings, dbname=second_db,
                        autocommit=True) as conn:
            import_data_dir(LegacyReader.open(Path(tmp) / "out"), conn, batch_size=100,
                            workers=0)
            assert table_checksums(conn) == first


def test_a_record_the_database_refuses_is_quarantined_and_the_rest_commits(
        settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    info = generate(root, users=3, chats=6, messages_per_chat=3, logs=5, deviations=False)
    # A message, a user and a log line PostgreSQL refuses (CHECKs of this scratch database).
    superuser_psql("ALTER TABLE messages ADD CONSTRAINT poison CHECK (content <> 'poison');"
                   "ALTER TABLE users ADD CONSTRAINT poison CHECK (name <> 'poison');"
                   "ALTER TABLE system_logs ADD CONSTRAINT poison CHECK (message <> 'poison')",
                   dbname=scratch_db)
    chat = root / "chat_sessions" / "c_7000003.json"
    doc = json.loads(chat.read_text())
    doc["messages"][0]["content"] = "poison"
    chat.write_text(json.dumps(doc))
    memory = sorted((root / "memory").glob("*.json"))[0]
    doc = json.loads(memory.read_text())
    doc["name"] = "poison"
    memory.write_text(json.dumps(doc))
    log_file = next((root / "logs").glob("*.jsonl"))
    with log_file.open("a") as fh:
        fh.write(json.dumps({"ts": "2025-02-01T00:00:00Z", "level": "error",
                             "message": "poison"}) + "\n")
    lines = len(log_file.read_text().splitlines())

    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--json", "--report-dir", str(tmp_path / "reports"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    out = json.loads(done.stdout)
    refused = {q["path"]: q["detail"] for q in out["report"]["quarantined"]
               if q["reason"] == REJECTED}
    assert set(refused) == {"chat_sessions/c_7000003.json", f"memory/{memory.name}",
                            f"logs/{log_file.name}:{lines}"}
    assert all('"poison"' in detail for detail in refused.values()), refused
    assert out["summary"]["rejected"] == 3
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        chats, memory_rows, logs = conn.execute(
            "SELECT (SELECT count(*) FROM chat_sessions), (SELECT count(*) FROM user_memory m "
            "JOIN users u ON u.id = m.user_id WHERE u.clerk_id = %s), "
            "(SELECT count(*) FROM system_logs)", (memory.stem,)
        ).fetchone()
    assert (chats, memory_rows, logs) == (info.chats - 1, 0, lines - 1)
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--report-dir", str(tmp_path / "reports"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("3 records refused by the database")


@pytest.mark.parametrize("depth", [200, 900, 975, 990, 5000])
def test_values_nested_at_any_depth_are_stored_or_quarantined(settings, scratch_db, tmp_path,
                                                              depth):
    def nested(inner: str) -> str:
        return '{"a": ' * depth + inner + "}" * depth

    root = tmp_path / "data"
    for folder in ("chat_sessions", "memory", "logs"):
        (root / folder).mkdir(parents=True)
    (root / "chat_sessions" / "c_meta.json").write_text(f'{{"metadata": {nested("1")}}}')
    (root / "chat_sessions" / "c_msg.json").write_text(
        f'{{"messages": [{{"content": "hi", "metadata": {nested("[]")}}}]}}')
    (root / "memory" / "user_deep.json").write_text(f'{{"context": {{"k": {nested("2")}}}}}')
    (root / "logs" / "app.jsonl").write_text(f'{{"context": {nested("null")}}}\n')
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--json", "--report-dir", str(tmp_path / "reports"))
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    quarantined = {q["path"] for q in json.loads(done.stdout)["report"]["quarantined"]}
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        chats = {r[0] for r in conn.execute("SELECT chat_id FROM chat_sessions")}
        users = {r[0] for r in conn.execute("SELECT clerk_id FROM users")}
        logs = conn.execute("SELECT count(*) FROM system_logs").fetchone()[0]
    assert "c_meta" in chats or "chat_sessions/c_meta.json" in quarantined
    assert "c_msg" in chats or "chat_sessions/c_msg.json" in quarantined
    assert "user_deep" in users or "memory/user_deep.json" in quarantined
    assert logs == 1 or "logs/app.jsonl:1" in quarantined
    if depth <= 200:
        assert not quarantined and len(chats) == 2 and logs == 1


def test_numbers_a_float_or_int_cannot_hold_are_quarantined_with_the_reason(
        settings, scratch_db, tmp_path):
    root = tmp_path / "data"
    for folder in ("chat_sessions", "logs"):
        (root / folder).mkdir(parents=True)
    (root / "chat_sessions" / "c_big.json").write_text('{"metadata": {"x": 1e400}}')
    (root / "chat_sessions" / "c_tiny.json").write_text('{"metadata": {"x": -1e-400}}')
    (root / "chat_sessions" / "c_long.json").write_text('{"metadata": {"x": %s}}' % ("7" * 5000))
    (root / "chat_sessions" / "c_fine.json").write_text('{"metadata": {"x": 1.5e300, "y": %s}}'
                                                        % ("7" * 400))
    (root / "logs" / "app.jsonl").write_text('{"context": {"x": 1E+999}}\n{"message": "ok"}\n')
    done = run_cli("migrate-data", "import", "--data-dir", str(root), "--dbname", scratch_db,
                   "--json", "--report-dir", str(tmp_path / "reports"))
    assert done.returncode == 0, done.stderr
    quarantined = {q["path"]: q["detail"] for q in json.loads(done.stdout)["report"]["quarantined"]}
    assert set(quarantined) == {"chat_sessions/c_big.json", "chat_sessions/c_tiny.json",
                                "chat_sessions/c_long.json", "logs/app.jsonl:1"}
    assert "1e400" in quarantined["chat_sessions/c_big.json"]
    with db.connect("migrator", settings=settings, dbname=scratch_db) as conn:
        assert conn.execute("SELECT metadata->>'y' FROM chat_sessions WHERE chat_id = 'c_fine'"
                            ).fetchone()[0] == "7" * 400
        assert conn.execute("SELECT count(*) FROM system_logs").fetchone()[0] == 1

"""`migrate-data export` never writes outside --out, whatever the database holds, nor
more blank lines into a log file than --log-gap-margin.

Hostile rows are planted as the application role (what a compromised app, or an API
caller through an older DAL, could store); the export runs as the real `donnactl`. A
record whose name cannot be a file name stops the export with exit 6 and one line naming
it, and --out is left empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from donnadb import db
from tests.legacy.conftest import run_cli

ESCAPE = "../../../escaped"


def _files(root: Path, skip: Path) -> set[str]:
    found = set()
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        found |= {os.path.relpath(os.path.join(dirpath, n), root) for n in names + dirs}
    return found


def _chat(conn, chat_id: str, metadata: dict | None = None) -> None:
    conn.execute("INSERT INTO chat_sessions (chat_id, metadata) VALUES (%s, %s)",
                 (chat_id, Jsonb(metadata or {})))


def _user(conn, clerk_id: str | None, email: str | None) -> None:
    conn.execute("INSERT INTO users (clerk_id, email) VALUES (%s, %s)", (clerk_id, email))


HOSTILE = {
    "chat id climbing out": (lambda c: _chat(c, ESCAPE), f"chat_id '{ESCAPE}'"),
    "chat id absolute": (lambda c: _chat(c, "/opt/donnadb-export-absolute"),
                         "chat_id '/opt/donnadb-export-absolute'"),
    "chat id dot-dot": (lambda c: _chat(c, ".."), "chat_id '..'"),
    "chat id empty": (lambda c: _chat(c, ""), "chat_id ''"),
    "chat id too long": (lambda c: _chat(c, "c" * 255), "longer than 255 bytes"),
    "legacy source climbing out": (
        lambda c: _chat(c, "c_src", {"_donnadb_legacy": {"source": f"conversations/{ESCAPE}"}}),
        "chat 'c_src': legacy source 'conversations/../../../escaped'"),
    "legacy source absolute": (
        lambda c: _chat(c, "c_abs", {"_donnadb_legacy": {"source": "conversations//tmp/x"}}),
        "chat 'c_abs': legacy source 'conversations//tmp/x'"),
    "legacy source folder dot-dot": (
        lambda c: _chat(c, "c_dd", {"_donnadb_legacy": {"source": "conversations/.."}}),
        "chat 'c_dd': legacy source folder '..'"),
    "clerk id climbing out": (lambda c: _user(c, ESCAPE, "a@example.org"), f"clerk_id '{ESCAPE}'"),
    "e-mail climbing out (no clerk id)": (lambda c: _user(c, None, "../../evil@example.org"),
                                          "email '../../evil@example.org'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_name_stops_the_export_and_nothing_is_written_outside(
        settings, scratch_db, tmp_path, case):
    plant, named = HOSTILE[case]
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        _chat(conn, "c_fine")  # a good record exported before the bad one is met
        _user(conn, "user_fine", "fine@example.org")
        plant(conn)
    out = tmp_path / "a" / "b" / "out"
    out.parent.mkdir(parents=True)
    (tmp_path / "a" / "keep.json").write_text("{}")
    before = _files(tmp_path, out)
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db)
    assert done.returncode == 6, done.stdout + done.stderr
    error = done.stderr.strip()
    assert "\n" not in error and named in error and "cannot be a file name" in error \
        or "is not conversations/<user folder>" in error, error
    assert _files(tmp_path, out) == before
    assert not Path("/opt/donnadb-export-absolute.json").exists()
    assert os.listdir(out) == [], "a partial export must not be left behind"


def test_an_absolute_source_outside_conversations_is_not_a_path(settings, scratch_db, tmp_path):
    """Only conversations/<folder> sources choose a folder; any other source is ignored."""
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        _chat(conn, "c_abs", {"_donnadb_legacy": {"source": "/etc/cron.d"}})
    out = tmp_path / "out"
    before = _files(tmp_path, out)
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"]["chats"] == 1
    assert _files(out, out) == {"chat_sessions", "chat_sessions/c_abs.json"}
    assert _files(tmp_path, out) == before


def test_two_records_for_one_file_stop_the_export(settings, scratch_db, tmp_path):
    """A user without a clerk id named like another's clerk id: no silent overwrite."""
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        _user(conn, "same@example.org", "one@example.org")
        _user(conn, None, "same@example.org")
    out = tmp_path / "out"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db)
    assert done.returncode == 6
    assert "memory/same@example.org.json is written by another record" in done.stderr
    assert os.listdir(out) == []


def test_a_symlinked_out_is_refused(settings, scratch_db, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        _chat(conn, "c_fine")
    done = run_cli("migrate-data", "export", "--out", str(tmp_path / "out"),
                   "--dbname", scratch_db)
    assert done.returncode == 3 and "symlink" in done.stderr
    assert os.listdir(target) == []


def _log(conn, source: str) -> None:
    conn.execute("INSERT INTO system_logs (level, message, context) VALUES ('info', 'm', %s)",
                 (Jsonb({"_donnadb_legacy": {"source": source}}),))


@pytest.mark.parametrize("line", ["99999999999", "2000000", "9" * 5000])
def test_a_log_line_far_beyond_its_file_stops_the_export(settings, scratch_db, tmp_path, line):
    """A planted line number would have the export pad the file with that many blank
    lines (99999999999: 100 GB); it is refused and nothing is left in --out."""
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        _chat(conn, "c_fine")
        for n in (1, 2, 4):
            _log(conn, f"app.jsonl:{n}")
        _log(conn, f"app.jsonl:{line}")
    out = tmp_path / "out"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db)
    assert done.returncode == 6, done.stdout + done.stderr
    error = done.stderr.strip()
    assert "\n" not in error and f"log line {f'app.jsonl:{line}'[:120]!r}" in error, error
    assert "beyond the 4 rows of its file" in error and "--log-gap-margin" in error
    assert os.listdir(out) == []


def test_the_margin_bounds_a_log_file_s_blank_lines(settings, scratch_db, tmp_path):
    with db.connect("app", settings=settings, dbname=scratch_db, autocommit=True) as conn:
        for n in (1, 3, 14):
            _log(conn, f"app.jsonl:{n}")
    out = tmp_path / "fits"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db,
                   "--log-gap-margin", "11", "--json")  # 3 rows + 11 blank lines = line 14
    assert done.returncode == 0, done.stderr
    lines = (out / "logs" / "app.jsonl").read_text().splitlines()
    assert len(lines) == 14 and [n + 1 for n, text in enumerate(lines) if text] == [1, 3, 14]
    out = tmp_path / "refused"
    done = run_cli("migrate-data", "export", "--out", str(out), "--dbname", scratch_db,
                   "--log-gap-margin", "10")
    assert done.returncode == 6 and "'app.jsonl:14'" in done.stderr, done.stderr
    assert os.listdir(out) == []

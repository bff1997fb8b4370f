"""donnactl migrate-data: exit codes and one-line errors of the thin CLI layer."""

from __future__ import annotations

import json

from tests.legacy.conftest import run_cli


def test_missing_data_dir_is_one_line_and_exit_3(scratch_db, tmp_path):
    done = run_cli("migrate-data", "import", "--data-dir", str(tmp_path / "nope"),
                   "--dbname", scratch_db)
    assert done.returncode == 3
    assert "does not exist" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_export_into_a_non_empty_directory_is_refused(scratch_db, tmp_path):
    (tmp_path / "x").write_text("keep")
    done = run_cli("migrate-data", "export", "--out", str(tmp_path), "--dbname", scratch_db)
    assert done.returncode == 3 and "not empty" in done.stderr
    assert (tmp_path / "x").read_text() == "keep"


def test_reconcile_with_an_empty_queue_replays_nothing(scratch_db, tmp_path):
    (tmp_path / "data").mkdir()
    done = run_cli("migrate-data", "reconcile", "--data-dir", str(tmp_path / "data"),
                   "--dbname", scratch_db, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"entries": 0, "errors": [], "failed": 0, "replayed": 0}


def test_import_into_an_unmigrated_database_says_what_to_do(empty_db, tmp_path):
    (tmp_path / "data" / "chat_sessions").mkdir(parents=True)
    done = run_cli("migrate-data", "import", "--data-dir", str(tmp_path / "data"),
                   "--dbname", empty_db, "--report-dir", str(tmp_path / "r"))
    assert done.returncode == 5
    assert "migrate apply" in done.stderr


def test_reconcile_one_entity_leaves_the_others_queued(scratch_db, tmp_path):
    from donnadb.dal import ReconcileQueue

    data = tmp_path / "data"
    queue = ReconcileQueue(data / ".dualwrite" / "pending.jsonl")
    queue.append([{"kind": "user", "clerk_id": "user_gone"},
                  {"kind": "log", "source": "donnadb-gone.jsonl:1"}], op="test", error="down")
    done = run_cli("migrate-data", "reconcile", "--data-dir", str(data), "--dbname",
                   scratch_db, "--json", "--entity", "users")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries"] == 1
    assert [json.loads(x)["kind"] for x in queue.path.read_text().splitlines()] == ["log"]
    bad = run_cli("migrate-data", "reconcile", "--data-dir", str(data), "--dbname",
                  scratch_db, "--entity", "files")
    assert bad.returncode == 3 and "unknown entity 'files'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

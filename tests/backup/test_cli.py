"""donnactl backup ... end to end: the commands an operator and the timers run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import fill_up, one_line_error, small_disk, superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def run(env, *args, check=True, input=""):
    done = subprocess.run([DONNACTL, "backup", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False, input=input)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_create_list_verify_restore_prune_check(bs, source_db, target_name, settings):
    env = dict(os.environ, BACKUP_REPO_DIR=str(bs.backup_repo_dir), DB_NAME=source_db,
               BACKUP_KEEP_LAST="1", BACKUP_KEEP_DAILY="0", BACKUP_KEEP_WEEKLY="0",
               BACKUP_KEEP_MONTHLY="0", BACKUP_S3_BUCKET="", PGBACKREST_ENABLED="false",
               BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file))
    # no backup yet: check fails with its own exit code and says what to do
    none = run(env, "check", check=False)
    assert none.returncode == 8 and "backup create" in none.stderr

    first = json.loads(run(env, "create", "--json").stdout)
    second = json.loads(run(env, "create", "--json", "--jobs", "1").stdout)
    assert first["row_counts"]["public.messages"] == 400

    listed = json.loads(run(env, "list", "--json").stdout)
    assert [r["backup_id"] for r in listed] == [first["backup_id"], second["backup_id"]]
    assert all(r["good"] and r["where"] == "local" for r in listed)

    shown = json.loads(run(env, "show", first["backup_id"], "--json").stdout)
    assert shown["manifest"]["row_counts"] == first["row_counts"]

    verified = json.loads(run(env, "verify", "latest", "--restore", "--json").stdout)
    assert verified["ok"] and verified["restored"] and verified["backup_id"] == second["backup_id"]

    restored = json.loads(run(env, "restore", first["backup_id"], "--target-db", target_name,
                              "--json").stdout)
    assert restored["row_counts"] == first["row_counts"] and restored["seconds"] > 0
    refused = run(env, "restore", first["backup_id"], "--target-db", target_name, check=False)
    assert refused.returncode == 3 and "--force" in refused.stderr
    plan = json.loads(run(env, "restore", second["backup_id"], "--target-db", target_name,
                          "--force", "--dry-run", "--json").stdout)
    assert plan["target_has_data"] and plan["source"] == "local"
    assert plan["action"].startswith(f"restore {second['backup_id']} (local)")
    said_no = run(env, "restore", second["backup_id"], "--target-db", target_name, "--force",
                  check=False, input="n\n")
    assert said_no.returncode == 130 and f"Replace {target_name}" in said_no.stdout
    copies = superuser_psql("SELECT string_agg(datname, ',') FROM pg_database "
                            f"WHERE datname LIKE '{target_name}%'")
    assert copies == target_name  # nothing restored, nothing kept

    dry = json.loads(run(env, "prune", "--dry-run", "--json").stdout)
    assert dry["local"]["delete"] == [first["backup_id"]]
    assert len(json.loads(run(env, "list", "--json").stdout)) == 2  # dry run deleted nothing
    said_no = run(env, "prune", check=False, input="n\n")
    assert said_no.returncode == 130 and first["backup_id"] in said_no.stdout
    assert len(json.loads(run(env, "list", "--json").stdout)) == 2
    run(env, "prune", "--yes")
    assert [r["backup_id"] for r in json.loads(run(env, "list", "--json").stdout)] \
        == [second["backup_id"]]

    report = json.loads(run(env, "check", "--json").stdout)
    assert report["ok"] and report["newest_local"] == second["backup_id"]
    old = dict(env, BACKUP_MAX_AGE_HOURS="0.0003")
    late = run(old, "check", check=False)
    assert late.returncode == 8 and "old (limit" in late.stderr

    missing = run(env, "show", "nope", check=False)
    assert missing.returncode == 12 and "backup list" in missing.stderr


def test_the_prune_timer_deletes_without_a_terminal(bs, source_db):
    """The timers' entry point passes --yes: with no one to answer, prune still prunes."""
    env = dict(os.environ, BACKUP_REPO_DIR=str(bs.backup_repo_dir), DB_NAME=source_db,
               BACKUP_KEEP_LAST="1", BACKUP_KEEP_DAILY="0", BACKUP_KEEP_WEEKLY="0",
               BACKUP_KEEP_MONTHLY="0", BACKUP_S3_BUCKET="", PGBACKREST_ENABLED="false",
               BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file), DONNACTL=DONNACTL,
               OPS_LOG_FILE=str(bs.backup_repo_dir.parent / "donnactl.jsonl"))
    run(env, "create", "--json")
    newest = json.loads(run(env, "create", "--json").stdout)["backup_id"]
    script = Path(__file__).resolve().parents[2] / "backups" / "donna-backup"
    done = subprocess.run([str(script), "prune", "--json"], env=env, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert [r["backup_id"] for r in json.loads(run(env, "list", "--json").stdout)] == [newest]
    audit = [json.loads(line) for line in Path(env["OPS_LOG_FILE"]).read_text().splitlines()
             if '"command finished"' in line]
    assert [a["context"]["command"] for a in audit] == [
        "backup create", "backup create", "backup prune"]
    assert audit[2]["context"]["params"]["yes"] is True


def test_a_full_repository_stops_create_and_verify_in_one_line(bs, source_db, tmp_path):
    with small_disk(tmp_path, "8m") as disk:
        repo = disk / "repo"
        env = dict(os.environ, BACKUP_REPO_DIR=str(repo), DB_NAME=source_db,
                   BACKUP_S3_BUCKET="", PGBACKREST_ENABLED="false",
                   BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file),
                   OPS_LOG_FILE=str(tmp_path / "ops.jsonl"))
        backup_id = json.loads(run(env, "create", "--json").stdout)["backup_id"]
        def files():  # the lock files of readers and writers stay, as after any command
            return sorted(p.relative_to(repo) for p in repo.rglob("*") if p.suffix != ".lock")

        before = files()
        fill_up(disk)

        verify = run(env, "verify", "latest", check=False)
        one_line_error(verify, 1, f"cannot write {repo / backup_id / 'verify.json'}: No "
                       "space left on device", "free space")
        create = run(env, "create", check=False)
        one_line_error(create, 1, "No space left on device")
        assert files() == before

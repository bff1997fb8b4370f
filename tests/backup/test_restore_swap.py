"""A restore over an existing database: a new copy, checked, swapped in in one step.

The "live" database of each test is a database of its own (never DB_NAME's): restored
from a backup, then changed, so that any replacement would show. Each fault is real: a
flipped byte, a dump pg_restore cannot load, a manifest whose counts differ, a lock
that makes the rename fail, a SIGKILL of the restoring process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from donnadb import db
from donnadb.backup import crypto, restore, signing, snapshot, storage_local, swap
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt, BackupError
from donnadb.backup.prune import prune
from tests.backup.conftest import table_checksums
from tests.support import superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))
#: Enough rows that pg_restore takes seconds: long enough to kill or prune under it.
BULK_SQL = """
INSERT INTO messages (chat_session_id, role, content, sequence_number)
SELECT cs.id, 'user', repeat(md5(g::text), 8), 100 + g
FROM chat_sessions cs, generate_series(1, 6000) g;
"""
CHANGE_SQL = "DELETE FROM user_memory WHERE key = 'k1'"


def databases(prefix: str) -> list[str]:
    out = superuser_psql("SELECT datname FROM pg_database WHERE starts_with(datname, "
                         f"'{prefix}') ORDER BY 1")
    return out.splitlines()


def oid_of(name: str) -> str:
    return superuser_psql(f"SELECT oid FROM pg_database WHERE datname = '{name}'")


def pgbouncer_paused(settings, name: str) -> str:
    """PgBouncer's ``paused`` column for ``name`` ("" when it has no entry)."""
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-F", "|",
         "-h", swap.PGBOUNCER_SOCKET_DIR, "-p", str(settings.pgbouncer_port), "-U",
         "pgbouncer", "-d", "pgbouncer", "-c", "SHOW DATABASES"],
        capture_output=True, text=True, check=True, cwd="/").stdout
    header = ["name", "host", "port", "database", "force_user", "pool_size",
              "min_pool_size", "reserve_pool", "pool_mode", "max_connections",
              "current_connections", "paused", "disabled"]
    for line in out.splitlines():
        row = dict(zip(header, line.split("|"), strict=False))
        if row["name"] == name:
            return row["paused"]
    return ""


@pytest.fixture
def live(bs, source_db, target_name):
    """(backup, live database): ``target_name`` restored from a backup, then changed."""
    backup = snapshot.create_backup(bs, dbname=source_db)
    restore.restore_backup(bs, backup, target_name)
    superuser_psql(CHANGE_SQL, dbname=target_name)
    return backup, target_name


def assert_intact(name: str, checksums: dict[str, str], oid: str) -> None:
    assert oid_of(name) == oid, f"{name} is not the same database any more"
    assert table_checksums(name) == checksums, f"{name}'s rows changed"
    assert databases(f"{name}{swap.TEMP_TAG}") == [], "the half-made copy was left"


def test_a_force_restore_keeps_the_previous_database_until_cleanup(settings, bs, live,
                                                                   source_db, tmp_path):
    backup, target = live
    before, oid = table_checksums(target), oid_of(target)

    result = restore.restore_backup(bs, backup, target, force=True)

    assert table_checksums(target) == table_checksums(source_db)  # the backup's rows
    assert result.kept_as and result.kept_as.startswith(f"{target}{swap.KEPT_TAG}")
    assert oid_of(result.kept_as) == oid and table_checksums(result.kept_as) == before
    assert databases(f"{target}{swap.TEMP_TAG}") == []
    assert pgbouncer_paused(settings, target) in ("0", "")

    env = _donnactl_env(bs, tmp_path, "donna_not_this_one")
    listed = subprocess.run([DONNACTL, "backup", "restore", "--cleanup", "--target-db", target,
                             "--dry-run", "--json"], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    assert json.loads(listed.stdout)["found"] == [
        {"name": result.kept_as, "kind": "kept", "in_use": False}]
    assert databases(result.kept_as) == [result.kept_as]
    dropped = subprocess.run([DONNACTL, "backup", "restore", "--cleanup", "--target-db", target,
                              "--yes", "--json"], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
    assert json.loads(dropped.stdout)["dropped"] == [result.kept_as]
    assert databases(f"{target}{swap.KEPT_TAG}") == []
    assert table_checksums(target) == table_checksums(source_db)
    audit = (tmp_path / "ops.jsonl").read_text()
    assert '"restore leftover dropped"' in audit and result.kept_as in audit


def test_cleanup_drops_only_copies_named_for_the_target(bs, target_name):
    planted = [swap.Leftover("postgres", "kept"), swap.Leftover("template1", "stale"),
               swap.Leftover(target_name, "kept"),
               swap.Leftover(f"{target_name}_before_x", "kept")]
    superuser_psql(f'CREATE DATABASE "{target_name}"')
    assert swap.drop_leftovers(bs, target_name, planted) == []
    assert databases(target_name) == [target_name] and databases("template1") == ["template1"]


@pytest.mark.parametrize("length", [1, 30, 63])
def test_copy_names_are_valid_and_recognised(length):
    target = "d" * length
    when = swap.stamp()
    for name, tag in ((swap.temp_name(target, when), swap.TEMP_TAG),
                      (swap.kept_name(target, when), swap.KEPT_TAG)):
        assert restore.DBNAME_RE.match(name) and len(name) <= 63
        assert swap._matches(target, tag, name)
        assert not swap._matches(target + "x", tag, name) or length == 63


def test_a_corrupt_file_leaves_the_live_database_as_it_was(bs, live):
    backup, target = live
    before, oid = table_checksums(target), oid_of(target)
    victim = max(backup.manifest.files, key=lambda f: f.size)
    path = backup.path / victim.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(BackupCorrupt, match="sha256 mismatch"):
        restore.restore_backup(bs, backup, target, force=True)
    assert_intact(target, before, oid)


def test_a_dump_pg_restore_cannot_load_leaves_the_live_database_as_it_was(settings, bs, live,
                                                                          source_db):
    _, target = live
    # A column of an extension type: the restore skips extension entries (the bootstrap
    # creates ours), so loading this table fails half-way through pg_restore.
    superuser_psql("CREATE EXTENSION citext SCHEMA public", dbname=source_db)
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n"
                   "CREATE TABLE public.odd (v citext); INSERT INTO public.odd VALUES ('x')",
                   dbname=source_db)
    unloadable = snapshot.create_backup(bs, dbname=source_db)
    before, oid = table_checksums(target), oid_of(target)

    with pytest.raises(BackupError, match="pg_restore into .*failed"):
        restore.restore_backup(bs, unloadable, target, force=True)
    assert_intact(target, before, oid)


def test_a_copy_that_differs_from_the_manifest_leaves_the_live_database_as_it_was(bs, live):
    backup, target = live
    manifest = mf.load(backup.path)
    manifest.row_counts["public.messages"] += 1
    signing.sign(manifest, crypto.load_keys(bs.backup_signing_key_file))
    mf.write_private(backup.path / mf.MANIFEST_NAME, manifest.to_json())
    lying = storage_local.resolve(bs.backup_repo_dir, backup.backup_id)
    before, oid = table_checksums(target), oid_of(target)

    with pytest.raises(BackupError, match="differs from backup .*target was not touched"):
        restore.restore_backup(bs, lying, target, force=True)
    assert_intact(target, before, oid)


def test_a_failed_swap_renames_nothing_and_resumes_pgbouncer(settings, bs, live):
    backup, target = live
    before, oid = table_checksums(target), oid_of(target)
    # Another session holds a lock on the database object: the renames time out.
    holder = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd="/")
    try:
        holder.stdin.write(f"BEGIN; COMMENT ON DATABASE \"{target}\" IS 'held';\n"
                           "SELECT 'locked';\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BackupError, match="nothing renamed"):
            restore.restore_backup(bs, backup, target, force=True)
    finally:
        holder.stdin.write("ROLLBACK;\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    assert_intact(target, before, oid)
    assert databases(f"{target}{swap.KEPT_TAG}") == []
    assert pgbouncer_paused(settings, target) in ("0", "")


def test_pgbouncer_lets_a_running_transaction_finish_before_the_swap(settings, bs, live,
                                                                     source_db):
    backup, target = live
    app = db.connect("app", settings=settings, dbname=target)  # through PgBouncer
    try:
        app.execute("UPDATE chat_sessions SET title = 'written during the swap' "
                    "WHERE chat_id = 'chat_clerk_1'")  # a transaction is open now
        done: dict[str, object] = {}
        worker = threading.Thread(target=lambda: done.update(
            result=restore.restore_backup(bs, backup, target, force=True)))
        worker.start()
        deadline = time.monotonic() + 120
        while pgbouncer_paused(settings, target) != "1":
            assert worker.is_alive() and time.monotonic() < deadline, done
            time.sleep(0.05)
        time.sleep(0.5)
        app.commit()  # paused, not killed: the transaction still commits
        worker.join(timeout=120)
        kept = done["result"].kept_as
        assert superuser_psql("SELECT title FROM chat_sessions WHERE chat_id = 'chat_clerk_1'",
                              dbname=kept) == "written during the swap"
        # The same client goes on, now on the restored database.
        assert app.execute("SELECT count(*) FROM user_memory").fetchone()[0] == 120
        app.commit()
    finally:
        app.close()
    assert table_checksums(target) == table_checksums(source_db)
    assert pgbouncer_paused(settings, target) == "0"


def _donnactl_env(bs, tmp_path, live_name: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, BACKUP_REPO_DIR=str(bs.backup_repo_dir), DB_NAME=live_name,
                BACKUP_S3_BUCKET="", BACKUP_JOBS="1",
                BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file),
                OPS_LOG_FILE=str(tmp_path / "ops.jsonl"), **extra)


def _wait_for_pg_restore(proc: subprocess.Popen, temp_prefix: str) -> None:
    """Until pg_restore is loading rows into the new copy."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pg_restore never started"
        if superuser_psql("SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, "
                          f"'{temp_prefix}') AND query LIKE 'COPY %' "
                          "AND state = 'active'") != "0":
            return
        time.sleep(0.05)


def test_sigkill_during_pg_restore_leaves_the_live_database_and_cleanup_finds_the_copy(
        settings, bs, source_db, target_name, tmp_path):
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n{BULK_SQL}", dbname=source_db)
    backup = snapshot.create_backup(bs, dbname=source_db)
    restore.restore_backup(bs, backup, target_name)
    superuser_psql(CHANGE_SQL, dbname=target_name)
    before, oid = table_checksums(target_name), oid_of(target_name)
    env = _donnactl_env(bs, tmp_path, target_name)

    proc = subprocess.Popen([DONNACTL, "backup", "restore", backup.backup_id, "--target-db",
                             target_name, "--force", "--yes"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_pg_restore(proc, f"{target_name}{swap.TEMP_TAG}")
    os.killpg(proc.pid, signal.SIGKILL)  # donnactl and pg_restore, as systemd would
    proc.communicate(timeout=30)

    assert oid_of(target_name) == oid and table_checksums(target_name) == before
    stale = databases(f"{target_name}{swap.TEMP_TAG}")
    assert len(stale) == 1  # recognisable by its name

    def cleanup(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DONNACTL, "backup", "restore", "--cleanup", *flags], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    dry = cleanup("--dry-run")
    assert dry.returncode == 0 and f"{stale[0]} (left by a killed restore): would drop" \
        in " ".join(dry.stdout.split())
    asked = cleanup()  # no terminal to say yes: nothing is dropped
    assert asked.returncode != 0 and databases(f"{target_name}{swap.TEMP_TAG}") == stale
    gone = cleanup("--yes")
    assert gone.returncode == 0, gone.stderr
    assert databases(f"{target_name}{swap.TEMP_TAG}") == []
    assert oid_of(target_name) == oid and table_checksums(target_name) == before
    assert '"restore leftover dropped"' in (tmp_path / "ops.jsonl").read_text()


def _old_backup_to_prune(settings, bs, source_db):
    """(the older of two big backups, settings under which prune deletes it)."""
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n{BULK_SQL}", dbname=source_db)
    old = snapshot.create_backup(bs, dbname=source_db)
    snapshot.create_backup(bs, dbname=source_db)
    return old, bs.model_copy(update={"backup_keep_last": 1, "backup_keep_daily": 0,
                                      "backup_keep_weekly": 0, "backup_keep_monthly": 0})


def test_prune_skips_the_backup_a_restore_is_reading(settings, bs, source_db, target_name,
                                                     tmp_path):
    old, keep_one = _old_backup_to_prune(settings, bs, source_db)
    env = _donnactl_env(bs, tmp_path, source_db)

    proc = subprocess.Popen([DONNACTL, "backup", "restore", old.backup_id, "--target-db",
                             target_name, "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pg_restore(proc, f"{target_name}{swap.TEMP_TAG}")
        report = prune(keep_one)
        assert report.local.delete == [old.backup_id]
        assert report.in_use == [old.backup_id] and old.path.is_dir()
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert oid_of(target_name) != ""

    # Once nobody reads it, the same prune deletes it.
    again = prune(keep_one)
    assert again.in_use == [] and not old.path.exists()


def test_cleanup_resumes_pgbouncer_left_paused_by_a_killed_swap(settings, bs, target_name,
                                                                tmp_path):
    # The state a restore SIGKILLed between its PAUSE and its RESUME leaves behind.
    superuser_psql(f'CREATE DATABASE "{target_name}"')
    swap._admin(settings, f"PAUSE {target_name}").check_returncode()
    try:
        env = _donnactl_env(bs, tmp_path, target_name)
        done = subprocess.run([DONNACTL, "backup", "restore", "--cleanup", "--yes", "--json"],
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(done.stdout)["pgbouncer_resumed"] is True
        again = swap._admin(settings, f"RESUME {target_name}")
        assert again.returncode != 0 and "not paused" in again.stderr
    finally:
        swap._admin(settings, f"RESUME {target_name}")


def test_prune_skips_the_backup_a_verify_is_reading(settings, bs, source_db, tmp_path):
    old, keep_one = _old_backup_to_prune(settings, bs, source_db)
    env = _donnactl_env(bs, tmp_path, source_db)

    proc = subprocess.Popen([DONNACTL, "backup", "verify", old.backup_id, "--restore",
                             "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until verify holds the backup's read lock
            with storage_local.claim_for_delete(old) as free:
                if not free:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        report = prune(keep_one)
        assert report.in_use == [old.backup_id] and old.path.is_dir()
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["ok"] and json.loads(out)["restored"]

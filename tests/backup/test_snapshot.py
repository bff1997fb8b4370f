"""backup create: manifest contents, privacy, and atomicity (a killed backup never
looks complete)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from donnadb import db
from donnadb.backup import dbfacts, snapshot, storage_local
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupError
from donnadb.backup.verify import verify_backup


def test_manifest_describes_the_dump(settings, bs, source_db):
    backup = snapshot.create_backup(bs, dbname=source_db)
    m = mf.load(backup.path)
    with db.connection("backup", settings=settings, dbname=source_db) as conn:
        assert m.row_counts == dbfacts.row_counts(conn)
        assert m.schema_version == dbfacts.schema_version(conn) is not None
    assert m.row_counts["public.messages"] == 400
    assert m.row_counts["public.system_logs"] == 200
    assert m.database == source_db and m.database_size > 0
    assert m.server_version.startswith("15")
    assert "pg_dump (PostgreSQL) 15" in m.tools["pg_dump"]
    assert {f.path for f in m.files} >= {"dump/toc.dat"}
    assert mf.check_files(backup.path, m) == []
    assert m.compress_level == bs.backup_compress_level and m.jobs == 2
    # Nothing world-readable; the group may list backups and read manifests, no dump.
    for p in [bs.backup_repo_dir, *bs.backup_repo_dir.rglob("*")]:
        assert p.stat().st_mode & 0o007 == 0, p
        if "dump" in p.relative_to(bs.backup_repo_dir).parts:
            assert p.stat().st_mode & 0o077 == 0, p
    assert (backup.path / mf.MANIFEST_NAME).stat().st_mode & 0o777 == 0o640


def test_verify_detects_a_flipped_byte(settings, bs, source_db):
    backup = snapshot.create_backup(bs, dbname=source_db)
    assert verify_backup(bs, backup).ok
    entry = next(f for f in backup.manifest.files if f.path.endswith(".dat.gz"))
    path = backup.path / entry.path
    data = bytearray(path.read_bytes())
    data[0] ^= 0x80
    path.write_bytes(bytes(data))

    result = verify_backup(bs, backup)
    assert not result.ok and result.problems == [f"{entry.path}: sha256 mismatch"]
    # a failed verify is remembered: the backup is no longer "good" nor "latest"
    [listed] = storage_local.list_backups(bs.backup_repo_dir)
    assert not listed.good


def test_failed_pg_dump_leaves_nothing(settings, bs):
    with pytest.raises(Exception, match="does not exist|cannot connect"):
        snapshot.create_backup(bs, dbname="donna_no_such_database")
    assert storage_local.list_backups(bs.backup_repo_dir) == []
    assert storage_local.partials(bs.backup_repo_dir) == []


def test_pg_dump_error_is_one_line(settings, bs, source_db, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump: error: disk full' >&2\nexit 1\n")
    (fake / "pg_dump").chmod(0o700)
    broken = bs.model_copy(update={"backup_pg_bin_dir": fake})
    with pytest.raises(BackupError, match="pg_dump: error: disk full"):
        snapshot.create_backup(broken, dbname=source_db)
    assert storage_local.list_backups(bs.backup_repo_dir) == []
    assert storage_local.partials(bs.backup_repo_dir) == []


def test_killed_backup_never_looks_complete(settings, bs, source_db, tmp_path):
    # pg_dump finishes its files, then "hangs" -- we kill donnactl at that moment.
    fake = tmp_path / "bin"
    fake.mkdir()
    real = "/usr/lib/postgresql/15/bin/pg_dump"
    (fake / "pg_dump").write_text(f'#!/bin/sh\n"{real}" "$@" || exit $?\nexec sleep 60\n')
    (fake / "pg_dump").chmod(0o700)
    env = dict(os.environ, BACKUP_REPO_DIR=str(bs.backup_repo_dir),
               BACKUP_PG_BIN_DIR=str(fake), DB_NAME=source_db,
               BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file))
    donnactl = Path(sys.executable).with_name("donnactl")
    proc = subprocess.Popen([str(donnactl), "backup", "create", "--no-upload", "--json"],
                            env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [p for p in storage_local.partials(bs.backup_repo_dir)
                    if (p / "dump" / "toc.dat").exists()]
            if done:
                break
            time.sleep(0.05)
        else:
            pytest.fail("pg_dump never wrote its files")
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    assert storage_local.list_backups(bs.backup_repo_dir) == []
    assert len(storage_local.partials(bs.backup_repo_dir)) == 1
    with pytest.raises(Exception, match="no good backup"):
        storage_local.resolve(bs.backup_repo_dir, "latest")
    # the next prune clears the leftover, since no backup holds the lock any more
    assert storage_local.remove_stale_partials(bs.backup_repo_dir)
    assert storage_local.partials(bs.backup_repo_dir) == []


def test_too_many_jobs_for_the_role_limit_is_one_clear_error(settings, bs, source_db):
    with pytest.raises(BackupError, match="lower BACKUP_JOBS"):
        snapshot.create_backup(bs, dbname=source_db, jobs=60)
    assert storage_local.partials(bs.backup_repo_dir) == []

"""S3 round trips against a real S3-protocol server on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from donnadb.backup import manifest as mf
from donnadb.backup import restore, signing, snapshot, storage_local
from donnadb.backup.errors import BackupCorrupt, BackupError
from donnadb.backup.storage_s3 import (
    S3_MAX_PART,
    S3_MAX_PARTS,
    S3_MIN_PART,
    S3Store,
    part_size_for,
)
from donnadb.config import MIB
from donnadb.errors import DiskWriteError
from tests.backup.conftest import BUCKET, table_checksums
from tests.support import full_disk, one_line_error, small_disk, superuser_psql


def _big_file_backup(repo, settings, size=11 * MIB, *,
                     more: int = 0) -> storage_local.LocalBackup:
    """A finished backup holding one 11 MiB file (three 5 MiB multipart parts) and
    ``more`` small files of 2 MiB."""
    backup_id = storage_local.new_backup_id()
    storage_local.ensure_repo(repo)
    partial = storage_local.start_partial(repo, backup_id)
    (partial / "dump").mkdir()
    (partial / "dump" / "big.dat").write_bytes(os.urandom(size))
    for n in range(more):
        (partial / "dump" / f"small{n}.dat").write_bytes(os.urandom(2 * MIB))
    files = mf.hash_tree(partial)
    manifest = mf.Manifest(backup_id=backup_id, database="x", started_at=mf.now_utc(),
                           finished_at=mf.now_utc(), server_version="15", schema_version=None,
                           database_size=0, row_counts={}, files=files, tools={},
                           compress_level=1, jobs=1)
    signing.sign(manifest, signing.load_keys(settings))
    mf.write_private(partial / mf.MANIFEST_NAME, manifest.to_json())
    path = storage_local.commit_partial(partial, backup_id)
    return storage_local.LocalBackup(backup_id, path, manifest, None)


def test_part_size_grows_with_the_file():
    assert part_size_for(1, S3_MIN_PART) == S3_MIN_PART
    assert part_size_for(100 * MIB, 8 * MIB) == 8 * MIB
    for size in (50 * 1024**3, 60 * 1024**3, 4 * 1024**4, S3_MAX_PARTS * S3_MAX_PART):
        part = part_size_for(size, S3_MIN_PART)
        assert S3_MIN_PART <= part <= S3_MAX_PART
        assert -(-size // part) <= S3_MAX_PARTS
        assert part % MIB == 0


def test_part_size_refuses_impossible_files():
    with pytest.raises(Exception, match="multipart limit"):
        part_size_for(S3_MAX_PARTS * S3_MAX_PART + 1, S3_MIN_PART)


def test_backup_round_trip_through_s3(settings, s3_bs, source_db, tmp_path, target_name):
    backup = snapshot.create_backup(s3_bs, dbname=source_db)
    store = S3Store(s3_bs)
    store.upload_backup(backup)
    remote = store.list_backups()
    assert [(r.backup_id, r.good) for r in remote] == [(backup.backup_id, True)]
    head = store.client.head_object(Bucket=BUCKET, Key=store.key(backup.backup_id,
                                                                  mf.MANIFEST_NAME))
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"

    other_repo = tmp_path / "elsewhere"
    fetched = store.download_backup(backup.backup_id, other_repo)
    assert fetched.manifest == backup.manifest
    assert mf.check_files(fetched.path, fetched.manifest) == []
    restore.restore_backup(s3_bs, fetched, target_name)
    assert table_checksums(target_name) == table_checksums(source_db)


def test_multipart_upload_with_part_checksums(s3_bs, tmp_path):
    """The big file goes up in parts, each with a CRC32 for S3 to check."""
    backup = _big_file_backup(tmp_path / "repo2", s3_bs)
    store = S3Store(s3_bs)
    store.upload_backup(backup)
    key = store.key(backup.backup_id, "dump/big.dat")
    head = store.client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: md5-of-md5s-N
    assert head["ChecksumCRC32"], head  # of the parts' CRC32s
    assert head["Metadata"]["sha256"] == backup.manifest.files[0].sha256
    body = store.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == backup.manifest.files[0].sha256
    assert store.unfinished_uploads() == []


def _nothing_published(store: S3Store) -> None:
    assert store.unfinished_uploads() == []
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix)
    assert listed.get("KeyCount", 0) == 0
    assert store.list_backups() == []


def test_a_file_that_differs_from_its_manifest_is_not_sent(s3_bs, tmp_path):
    backup = _big_file_backup(tmp_path / "repo3", s3_bs)
    path = backup.path / "dump" / "big.dat"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last part differs from what the manifest promised
    path.write_bytes(bytes(data))
    store = S3Store(s3_bs)

    with pytest.raises(BackupCorrupt, match="not uploading"):
        store.upload_backup(backup)
    _nothing_published(store)


def test_a_multipart_upload_failing_half_way_is_aborted(s3_bs, tmp_path):
    backup = _big_file_backup(tmp_path / "repo3b", s3_bs)
    store = S3Store(s3_bs)
    sent = []

    def connection_lost(n: int) -> None:
        # The fault strikes once the first part is up: S3 holds an open upload by then.
        sent.append(n)
        if sum(sent) >= S3_MIN_PART:
            raise ConnectionResetError("the network went away")

    with pytest.raises(BackupError, match="the network went away"):
        store.upload_backup(backup, connection_lost)
    _nothing_published(store)


def test_parts_go_up_in_parallel(s3_bs, tmp_path):
    """More than one part in flight at once (boto3's transfer manager, not a loop)."""
    backup = _big_file_backup(tmp_path / "repo3c", s3_bs, size=21 * MIB)
    store = S3Store(s3_bs)
    threads = set()
    store.upload_backup(backup, lambda n: threads.add(threading.get_ident()))
    assert len(threads) > 1
    assert store.list_backups()[0].good


def test_unfinished_uploads_are_found_and_aborted(s3_bs):
    store = S3Store(s3_bs)
    store.client.create_multipart_upload(Bucket=BUCKET, Key=store.key("x", "dump/a"))
    assert [u["key"] for u in store.unfinished_uploads()] == [store.key("x", "dump/a")]
    store.abort_unfinished()
    assert store.unfinished_uploads() == []


def test_interrupted_upload_is_not_a_backup(s3_bs, tmp_path):
    backup = _big_file_backup(tmp_path / "repo4", s3_bs, size=1024)
    store = S3Store(s3_bs)
    entry = backup.manifest.files[0]
    store.upload_file(backup.path / entry.path, store.key(backup.backup_id, entry.path), entry)
    # ... and the process died before the manifest went up.
    [remote] = store.list_backups()
    assert not remote.good
    with pytest.raises(Exception, match="no complete backup"):
        store.download_backup(backup.backup_id, tmp_path / "r5")


def test_cli_uploads_then_restores_from_s3_only(s3_bs, source_db, target_name, tmp_path):
    env = dict(os.environ, BACKUP_REPO_DIR=str(tmp_path / "cli-repo"), DB_NAME=source_db,
               BACKUP_S3_BUCKET=BUCKET, BACKUP_S3_PREFIX=s3_bs.backup_s3_prefix,
               BACKUP_S3_ENDPOINT_URL=s3_bs.backup_s3_endpoint_url,
               BACKUP_S3_REGION="us-east-1", BACKUP_KEEP_LAST="1", BACKUP_KEEP_DAILY="0",
               BACKUP_KEEP_WEEKLY="0", BACKUP_KEEP_MONTHLY="0", PGBACKREST_ENABLED="false",
               BACKUP_SIGNING_KEY_FILE=str(s3_bs.backup_signing_key_file))
    donnactl = str(Path(sys.executable).with_name("donnactl"))

    def run(*args, check=True):
        done = subprocess.run([donnactl, "backup", *args, "--json"], env=env, text=True,
                              capture_output=True, timeout=120, check=False)
        assert not check or done.returncode == 0, done.stderr
        return done

    first = json.loads(run("create").stdout)
    second = json.loads(run("create").stdout)
    assert first["uploaded"] and second["uploaded"]
    # an upload that died mid-way, as a killed process leaves it
    store = S3Store(s3_bs)
    store.client.create_multipart_upload(Bucket=BUCKET, Key=store.key("dead", "dump/x"))
    report = json.loads(run("check").stdout)
    assert report["newest_s3"] == second["backup_id"]
    assert [u["key"] for u in report["unfinished_uploads"]] == [store.key("dead", "dump/x")]

    pruned = json.loads(run("prune", "--yes").stdout)
    assert pruned["s3"]["delete"] == [first["backup_id"]]
    assert [b.backup_id for b in store.list_backups()] == [second["backup_id"]]

    # A restore whose repository disk is full: one line naming it, nothing restored.
    with full_disk(tmp_path) as disk:
        env["BACKUP_REPO_DIR"] = str(disk / "repo")
        failed = run("restore", "latest", "--target-db", target_name, check=False)
        one_line_error(failed, 1, f"cannot write {disk}/repo/", "free space")
    env["BACKUP_REPO_DIR"] = str(tmp_path / "cli-repo")
    assert not superuser_psql(f"SELECT 1 FROM pg_database WHERE datname = '{target_name}'")

    # lose the local repository entirely: restore comes from S3, checksums verified
    shutil.rmtree(tmp_path / "cli-repo")
    restored = json.loads(run("restore", "latest", "--target-db", target_name).stdout)
    assert restored["backup_id"] == second["backup_id"]
    assert table_checksums(target_name) == table_checksums(source_db)
    store.abort_unfinished()


def test_a_download_onto_a_full_disk_says_where_and_leaves_nothing(s3_bs, tmp_path):
    backup = _big_file_backup(tmp_path / "src", s3_bs)
    store = S3Store(s3_bs)
    store.upload_backup(backup)
    with small_disk(tmp_path, "4m") as disk:
        repo = disk / "repo"
        with pytest.raises(DiskWriteError) as failed:
            store.download_backup(backup.backup_id, repo)
        message = str(failed.value)
        assert f"cannot write {repo}/" in message and "free space" in message, message
        assert not [p for p in repo.iterdir() if p.name != storage_local.LOCK_NAME]
        # Room made: the same download goes through, checked against the manifest.
        subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
        fetched = store.download_backup(backup.backup_id, repo)
        assert mf.hash_tree(fetched.path) == backup.manifest.files


def test_the_files_of_a_backup_go_up_side_by_side(s3_bs, tmp_path):
    """pg_dump -Fd writes a file per table: small ones are not sent one after another."""
    backup = _big_file_backup(tmp_path / "repo3d", s3_bs, more=8)
    store = S3Store(s3_bs)
    lock, in_flight, most = threading.Lock(), [0], [0]

    def sending(**_):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

    def answered(**_):
        with lock:
            in_flight[0] -= 1

    store.client.meta.events.register("before-send.s3.PutObject", sending)
    store.client.meta.events.register("after-call.s3.PutObject", answered)
    store.upload_backup(backup)
    assert most[0] > 1
    assert store.list_backups()[0].good
    for entry in backup.manifest.files:
        head = store.client.head_object(Bucket=BUCKET, Key=store.key(backup.backup_id,
                                                                      entry.path))
        assert head["Metadata"]["sha256"] == entry.sha256

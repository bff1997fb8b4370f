"""Whoever can write the bucket must not reach the host: hostile manifests and objects
uploaded to a real S3-protocol server (moto, 127.0.0.1), then fetched by restore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from donnadb.backup import crypto, restore, signing, snapshot, storage_local
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt, BackupError, RestoreRefused
from donnadb.backup.storage_s3 import S3Store
from donnadb.errors import UsageError
from tests.backup.conftest import BUCKET

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def _manifest(backup_id: str, files: list[mf.FileEntry], **changes) -> mf.Manifest:
    manifest = mf.Manifest(backup_id=backup_id, database="donna", started_at=mf.now_utc(),
                           finished_at=mf.now_utc(), server_version="15",
                           schema_version=None, database_size=0, row_counts={}, files=files,
                           tools={}, compress_level=1, jobs=1)
    for key, value in changes.items():
        setattr(manifest, key, value)
    return manifest


def _put(store: S3Store, backup_id: str, rel: str, body: bytes) -> None:
    store.client.put_object(Bucket=BUCKET, Key=store.key(backup_id, rel), Body=body)


def _upload_raw(store: S3Store, manifest: mf.Manifest, payload: bytes, *,
                keys: list[crypto.Key] | None, raw: dict | None = None) -> None:
    """Upload ``payload`` under every path of ``manifest``, then the manifest (signed
    with ``keys`` unless None; ``raw`` replaces the JSON document itself)."""
    for entry in manifest.files:
        _put(store, manifest.backup_id, entry.path, payload)
    if keys is not None:
        signing.sign(manifest, keys)
    document = raw if raw is not None else asdict(manifest)
    _put(store, manifest.backup_id, mf.MANIFEST_NAME, json.dumps(document).encode())


def _entry(path: str, payload: bytes) -> mf.FileEntry:
    import hashlib

    return mf.FileEntry(path=path, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())


def _nothing_written(repo: Path, outside: Path) -> None:
    assert not outside.exists(), f"{outside} was written"
    assert not repo.exists() or not [p for p in repo.iterdir() if p.name != ".lock"]


@pytest.fixture
def outside():
    """A path outside the repository that a hostile manifest aims at."""
    path = Path("/tmp") / f"donna-pwned-{uuid.uuid4().hex[:8]}"  # noqa: S108
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("aim", ["traversal", "absolute", "nested", "hidden", "meta"])
def test_paths_outside_the_one_layout_are_refused_before_any_write(s3_bs, tmp_path, outside,
                                                                    aim):
    store = S3Store(s3_bs)
    backup_id = storage_local.new_backup_id()
    path = {"traversal": f"dump/../../../../../..{outside}", "absolute": str(outside),
            "nested": "dump/sub/toc.dat", "hidden": "dump/.profile",
            "meta": "manifest.json"}[aim]
    payload = b"* * * * * root touch /tmp/owned\n"
    # Signed with the real key: the layout check alone must stop it (defence in depth).
    manifest = _manifest(backup_id, [_entry(path, payload)])
    raw = asdict(manifest)
    signing.sign(manifest, signing.load_keys(s3_bs))
    raw["signature"] = manifest.signature
    _upload_raw(store, manifest, payload, keys=None, raw=raw)
    repo = tmp_path / "repo"
    with pytest.raises(BackupCorrupt, match="is refused: file path"):
        store.download_backup(backup_id, repo)
    _nothing_written(repo, outside)


def test_a_restore_from_s3_with_a_hostile_manifest_exits_with_one_line(s3_bs, tmp_path,
                                                                       outside):
    store = S3Store(s3_bs)
    backup_id = storage_local.new_backup_id()
    payload = b"#!/bin/sh\n"
    manifest = _manifest(backup_id, [_entry(f"dump/../../../../..{outside}", payload)])
    _upload_raw(store, manifest, payload, keys=None)
    env = dict(os.environ, BACKUP_REPO_DIR=str(tmp_path / "repo"), BACKUP_S3_BUCKET=BUCKET,
               BACKUP_S3_PREFIX=s3_bs.backup_s3_prefix,
               BACKUP_S3_ENDPOINT_URL=s3_bs.backup_s3_endpoint_url,
               BACKUP_S3_REGION="us-east-1",
               BACKUP_SIGNING_KEY_FILE=str(s3_bs.backup_signing_key_file))
    done = subprocess.run([DONNACTL, "backup", "restore", backup_id, "--target-db",
                           "donna_never_made"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 6, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "refused" in done.stderr
    _nothing_written(tmp_path / "repo", outside)


@pytest.mark.parametrize("bad_id", ["../../etc", "/etc/cron.d", "20261202T061000123456Z-ab/.."])
def test_backup_ids_have_one_format(s3_bs, tmp_path, bad_id):
    with pytest.raises(UsageError, match="is not a backup id"):
        S3Store(s3_bs).download_backup(bad_id, tmp_path / "repo")
    env = dict(os.environ, BACKUP_REPO_DIR=str(tmp_path / "repo"), BACKUP_S3_BUCKET=BUCKET,
               BACKUP_S3_ENDPOINT_URL=s3_bs.backup_s3_endpoint_url,
               BACKUP_S3_REGION="us-east-1")
    done = subprocess.run([DONNACTL, "backup", "verify", bad_id], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3 and "is not a backup id" in done.stderr


def _good_remote(s3_bs) -> tuple[S3Store, mf.Manifest, bytes]:
    store = S3Store(s3_bs)
    payload = os.urandom(4096)
    manifest = _manifest(storage_local.new_backup_id(), [_entry("dump/toc.dat", payload)],
                         encryption={"algorithm": crypto.ALGORITHM, "key_id": "0" * 16})
    _upload_raw(store, manifest, payload, keys=signing.load_keys(s3_bs))
    return store, manifest, payload


@pytest.mark.parametrize("forgery", ["unsigned", "other key", "encryption flipped",
                                     "hash swapped", "another backup's manifest"])
def test_a_forged_manifest_is_refused(s3_bs, tmp_path, forgery):
    store, manifest, payload = _good_remote(s3_bs)
    document = asdict(manifest)
    target_id = manifest.backup_id
    if forgery == "unsigned":
        document["signature"] = None
        match = "is not signed"
    elif forgery == "other key":
        other = tmp_path / "attacker.key"
        crypto.generate_key_file(other)
        forged = _manifest(manifest.backup_id, manifest.files, encryption=None)
        signing.sign(forged, crypto.load_keys(other))
        document = asdict(forged)
        match = "not a key of BACKUP_SIGNING_KEY_FILE"
    elif forgery == "encryption flipped":
        document["encryption"] = None  # "restore my plain dump as if it were yours"
        match = "fails authentication"
    elif forgery == "hash swapped":
        swapped = os.urandom(4096)
        document["files"] = [asdict(_entry("dump/toc.dat", swapped))]
        _put(store, manifest.backup_id, "dump/toc.dat", swapped)
        match = "fails authentication"
    else:
        target_id = storage_local.new_backup_id()
        _put(store, target_id, "dump/toc.dat", payload)
        match = "describes backup"
    _put(store, target_id, mf.MANIFEST_NAME, json.dumps(document).encode())
    repo = tmp_path / "repo"
    with pytest.raises(BackupCorrupt, match=match):
        store.download_backup(target_id, repo)
    assert not repo.exists() or not list(repo.glob("2*"))
    assert not [b for b in store.list_backups() if b.backup_id == target_id and b.good]


def test_a_swapped_object_leaves_nothing_behind(s3_bs, tmp_path):
    store, manifest, _ = _good_remote(s3_bs)
    _put(store, manifest.backup_id, "dump/toc.dat", os.urandom(4096))
    repo = tmp_path / "repo"
    with pytest.raises(BackupCorrupt, match="does not match its manifest"):
        store.download_backup(manifest.backup_id, repo)
    assert [p.name for p in repo.iterdir()] == [".lock"]  # no partial, no backup


def test_a_planted_partial_symlink_is_not_followed(s3_bs, tmp_path):
    store, manifest, _ = _good_remote(s3_bs)
    repo = tmp_path / "repo"
    storage_local.ensure_repo(repo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / f"{storage_local.PARTIAL_PREFIX}{manifest.backup_id}").symlink_to(elsewhere)
    with pytest.raises(BackupError, match="already exists"):
        store.download_backup(manifest.backup_id, repo)
    assert list(elsewhere.iterdir()) == []


def test_a_file_is_never_written_through_a_symlink(s3_bs, tmp_path):
    store, manifest, _ = _good_remote(s3_bs)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(BackupError):
        store._download_file(store.key(manifest.backup_id, "dump/toc.dat"), link,
                             manifest.files[0], None)
    assert victim.read_text() == "precious\n"


def test_an_unencrypted_backup_is_refused_when_a_key_is_configured(bs, source_db,
                                                                   target_name, tmp_path):
    plain = snapshot.create_backup(bs, dbname=source_db)
    key_file = tmp_path / "backup.key"
    crypto.generate_key_file(key_file)
    with_key = bs.model_copy(update={"backup_encryption_key_file": key_file})
    with pytest.raises(RestoreRefused, match="--allow-unencrypted"):
        restore.restore_backup(with_key, plain, target_name)
    result = restore.restore_backup(with_key, plain, target_name, allow_unencrypted=True)
    assert result.ok


def test_a_local_manifest_altered_after_signing_is_refused(bs, source_db, target_name):
    backup = snapshot.create_backup(bs, dbname=source_db)
    document = json.loads((backup.path / mf.MANIFEST_NAME).read_text())
    document["row_counts"] = {table: 0 for table in document["row_counts"]}
    (backup.path / mf.MANIFEST_NAME).write_text(json.dumps(document))
    altered = storage_local.resolve(bs.backup_repo_dir, backup.backup_id)
    with pytest.raises(BackupCorrupt, match="fails authentication"):
        restore.restore_backup(bs, altered, target_name)


@pytest.mark.parametrize("backup_id, ok", [
    ("20261202T061000123456Z-abcd", True),
    ("20250101T020000Z-0f3a", True),  # made before ids carried microseconds
    ("20261202T0610001234Z-abcd", False),
    ("20261202T061000123456Z-ABCD", False),
    ("latest", False),
])
def test_the_one_backup_id_format_keeps_older_backups(backup_id, ok):
    manifest = _manifest(backup_id, [])
    assert (manifest.layout_problem() is None) is ok


def test_allow_unsigned_takes_an_old_unsigned_backup_but_never_a_forged_signature(s3_bs,
                                                                                  tmp_path):
    store, manifest, payload = _good_remote(s3_bs)
    old = asdict(manifest)
    old["signature"] = None  # as backups were uploaded before manifests were signed
    _put(store, manifest.backup_id, mf.MANIFEST_NAME, json.dumps(old).encode())
    lenient = S3Store(s3_bs, allow_unsigned=True)
    got = lenient.download_backup(manifest.backup_id, tmp_path / "repo")
    assert (got.path / "dump" / "toc.dat").read_bytes() == payload
    # A signature that is there must hold, flag or not.
    flipped = asdict(manifest)
    flipped["encryption"] = None
    _put(store, manifest.backup_id, mf.MANIFEST_NAME, json.dumps(flipped).encode())
    with pytest.raises(BackupCorrupt, match="fails authentication"):
        lenient.download_backup(manifest.backup_id, tmp_path / "repo2")
    # ... and its layout still: a hostile unsigned manifest stays refused.
    hostile = _manifest(storage_local.new_backup_id(), [_entry("dump/../../x", payload)])
    _upload_raw(store, hostile, payload, keys=None)
    with pytest.raises(BackupCorrupt):
        lenient.download_backup(hostile.backup_id, tmp_path / "repo3")
    assert not (tmp_path / "x").exists()


def test_the_cli_restore_and_verify_take_allow_unsigned():
    for command in ("restore", "verify"):
        done = subprocess.run([DONNACTL, "backup", command, "--help"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert "--allow-unsigned" in done.stdout, command

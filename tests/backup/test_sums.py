"""SHA256SUMS beside the manifest: the stock ``sha256sum -c`` checks a backup without
donnadb, locally, after a download from S3 (moto's server on 127.0.0.1) and for age
backups; ``backup verify`` reports a SHA256SUMS that disagrees with the manifest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import boto3
import pytest

from donnadb.backup import agecrypt, snapshot, storage_local, sums
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt
from donnadb.backup.storage_s3 import S3Store
from donnadb.backup.verify import verify_backup
from tests.backup.conftest import BUCKET

A, B = "a" * 64, "b" * 64


def _manifest(*files: tuple[str, str]) -> mf.Manifest:
    return mf.Manifest(backup_id="20261205T104500Z-abcd", database="donna",
                       started_at=mf.now_utc(), finished_at=mf.now_utc(),
                       server_version="15", schema_version=None, database_size=0,
                       row_counts={}, files=[mf.FileEntry(p, 1, h) for p, h in files],
                       tools={}, compress_level=1, jobs=1)


def sha256sum_check(backup_dir: Path) -> subprocess.CompletedProcess:
    """The stock tool, run as the docs say: ``cd <backup dir> && sha256sum -c SHA256SUMS``."""
    return subprocess.run(["sha256sum", "-c", sums.NAME], cwd=backup_dir,
                          capture_output=True, text=True, check=False)


def flip_a_byte(backup_dir: Path, manifest: mf.Manifest) -> str:
    """Flip the first byte of the backup's largest file; its path."""
    entry = max(manifest.files, key=lambda f: f.size)
    path = backup_dir / entry.path
    data = bytearray(path.read_bytes())
    data[0] ^= 0x80
    path.write_bytes(bytes(data))
    return entry.path


def assert_checks_then_fails_on_a_flipped_byte(backup_dir: Path, manifest: mf.Manifest):
    done = sha256sum_check(backup_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK\n") == len(manifest.files)
    changed = flip_a_byte(backup_dir, manifest)
    done = sha256sum_check(backup_dir)
    assert done.returncode != 0
    assert f"{changed}: FAILED" in done.stdout


def test_render_is_sha256sum_output():
    text = sums.render(_manifest(("dump/toc.dat", A), ("dump/3001.dat.gz", B)))
    assert text == f"{A}  dump/toc.dat\n{B}  dump/3001.dat.gz\n"
    assert sums.disagreements(text, _manifest(("dump/toc.dat", A),
                                              ("dump/3001.dat.gz", B))) == []


@pytest.mark.parametrize(("text", "problem"), [
    (f"{A}  dump/toc.dat\n", "dump/3001.dat.gz is missing"),
    (f"{A}  dump/toc.dat\n{A}  dump/3001.dat.gz\n",
     "dump/3001.dat.gz has another sha256 than the manifest"),
    (f"{A}  dump/toc.dat\n{B}  dump/3001.dat.gz\n{A}  dump/extra.dat\n",
     "dump/extra.dat is not in the manifest"),
    (f"{A}  dump/toc.dat\n{B}  dump/3001.dat.gz\nnonsense\n", "line 3 is not"),
    (f"{A}  dump/toc.dat\n{A}  dump/toc.dat\n{B}  dump/3001.dat.gz\n",
     "dump/toc.dat is listed twice"),
    (f"{B}  dump/3001.dat.gz\n{A}  dump/toc.dat\n", "order or spacing"),
    ("", "dump/toc.dat is missing"),
])
def test_disagreements_name_the_difference(text, problem):
    found = sums.disagreements(text, _manifest(("dump/toc.dat", A), ("dump/3001.dat.gz", B)))
    assert any(problem in line for line in found), found


def test_a_local_backup_checks_with_the_stock_tool(bs, source_db):
    backup = snapshot.create_backup(bs, dbname=source_db)
    listed = (backup.path / sums.NAME).read_text().splitlines()
    # every file of the backup but SHA256SUMS itself and the (signed) manifest
    on_disk = sorted(p.relative_to(backup.path).as_posix()
                     for p in backup.path.rglob("*") if p.is_file())
    assert sorted(line.split("  ", 1)[1] for line in listed) == sorted(
        set(on_disk) - {sums.NAME, mf.MANIFEST_NAME})
    assert not list(bs.backup_repo_dir.glob(".partial-*"))  # published by the one rename
    assert verify_backup(bs, backup).ok
    assert_checks_then_fails_on_a_flipped_byte(backup.path, backup.manifest)


def test_verify_reports_a_sha256sums_that_disagrees(bs, source_db):
    backup = snapshot.create_backup(bs, dbname=source_db)
    path = backup.path / sums.NAME
    first = backup.manifest.files[0]
    path.write_text(path.read_text().replace(first.sha256, "0" * 64, 1))
    result = verify_backup(bs, backup)
    assert not result.ok
    assert result.problems == [f"{sums.NAME} disagrees with the manifest: {first.path} has "
                               "another sha256 than the manifest"]
    [listed] = storage_local.list_backups(bs.backup_repo_dir)
    assert not listed.good


def test_a_backup_without_sha256sums_still_verifies(bs, source_db):
    """Backups made before SHA256SUMS existed have none: not a problem."""
    backup = snapshot.create_backup(bs, dbname=source_db)
    (backup.path / sums.NAME).unlink()
    assert verify_backup(bs, backup).ok


def _plain_copy(endpoint: str, prefix: str, dest: Path) -> None:
    """What ``aws s3 cp --recursive s3://bucket/<prefix><id>/ dest`` does: every object
    under the prefix, by its key, with a plain client and no donnadb."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                 Prefix=prefix):
        for obj in page.get("Contents", []):
            out = dest / obj["Key"][len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, obj["Key"], str(out))


class _Recording(S3Store):
    """Records the order in which objects are uploaded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def upload_files(self, files, progress=None):
        super().upload_files(files, progress)
        self.sent.extend(key.rsplit("/", 1)[-1] if "/dump/" not in key else "dump"
                         for _, key, _ in files)


def test_a_backup_from_s3_checks_with_the_stock_tool(s3_bs, source_db, tmp_path):
    backup = snapshot.create_backup(s3_bs, dbname=source_db)
    store = _Recording(s3_bs)
    store.upload_backup(backup)
    assert store.sent[-2:] == [sums.NAME, mf.MANIFEST_NAME]  # the manifest publishes, last
    assert set(store.sent[:-2]) == {"dump"}

    fetched = store.download_backup(backup.backup_id, tmp_path / "elsewhere")
    assert (fetched.path / sums.NAME).read_bytes() == (backup.path / sums.NAME).read_bytes()
    assert verify_backup(s3_bs, fetched).ok
    assert_checks_then_fails_on_a_flipped_byte(fetched.path, fetched.manifest)

    plain = tmp_path / "plain"
    _plain_copy(s3_bs.backup_s3_endpoint_url, store.key(backup.backup_id, ""), plain)
    assert_checks_then_fails_on_a_flipped_byte(plain, backup.manifest)


def test_a_sha256sums_altered_in_s3_stops_the_download(s3_bs, source_db, tmp_path):
    backup = snapshot.create_backup(s3_bs, dbname=source_db)
    store = S3Store(s3_bs)
    store.upload_backup(backup)
    text = (backup.path / sums.NAME).read_text()
    store.client.put_object(Bucket=BUCKET, Key=store.key(backup.backup_id, sums.NAME),
                            Body=text.replace(backup.manifest.files[0].sha256, "0" * 64))
    repo = tmp_path / "elsewhere"
    with pytest.raises(BackupCorrupt, match=f"{sums.NAME} disagrees with its manifest"):
        store.download_backup(backup.backup_id, repo)
    assert [p.name for p in repo.iterdir()] == [".lock"]  # nothing of it stays


def test_an_upload_refuses_a_local_sha256sums_that_disagrees(s3_bs, source_db):
    backup = snapshot.create_backup(s3_bs, dbname=source_db)
    (backup.path / sums.NAME).write_text("")
    store = S3Store(s3_bs)
    with pytest.raises(BackupCorrupt, match="is missing"):
        store.upload_backup(backup)
    assert store.list_backups() == []  # nothing was sent


@pytest.fixture
def age_recipients(tmp_path) -> Path:
    """A recipients file (the public half of a new key pair), as a database host holds."""
    public = agecrypt.generate_identity(tmp_path / "key.txt")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"{public}\n")
    return recipients


def test_an_age_backup_checks_with_the_stock_tool_without_its_key(bs, source_db,
                                                                   age_recipients):
    host = bs.model_copy(update={"backup_age_recipients_file": age_recipients})
    backup = snapshot.create_backup(host, dbname=source_db)
    assert all(f.path.endswith(".age") for f in backup.manifest.files)
    assert verify_backup(host, backup).ok
    assert_checks_then_fails_on_a_flipped_byte(backup.path, backup.manifest)


def test_an_age_backup_from_s3_checks_with_the_stock_tool(s3_bs, source_db, age_recipients,
                                                          tmp_path):
    host = s3_bs.model_copy(update={"backup_age_recipients_file": age_recipients})
    backup = snapshot.create_backup(host, dbname=source_db)
    store = S3Store(host)
    store.upload_backup(backup)
    fetched = store.download_backup(backup.backup_id, tmp_path / "elsewhere")
    assert_checks_then_fails_on_a_flipped_byte(fetched.path, fetched.manifest)

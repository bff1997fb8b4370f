"""The erasures ledger's copy in S3: a restore after losing the host erases again.

Everything runs through `donnactl` against moto's S3 server on 127.0.0.1: `users forget`
copies its erasure to the bucket after the commit; the database and the local backups
are then lost, and `backup restore` of the S3 backup erases the forgotten user again
from the copy alone. Entries planted in the bucket without the signing key are not
applied; a copy that failed is made good by the next push.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from donnadb.backup import crypto, ledgercopy, signing, snapshot
from donnadb.backup.storage_s3 import S3Store
from donnadb.dal import PostgresDataAccess
from donnadb.ops import users
from tests.backup.test_restore_erasures import LEFT_SQL, assert_erased_again
from tests.security.test_field_encryption import Person
from tests.support import superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def donnactl(s3_bs, tmp_path, *args: str, endpoint: str | None = None,
             db: str = "donna_not_this") -> subprocess.CompletedProcess:
    env = dict(os.environ, BACKUP_REPO_DIR=str(s3_bs.backup_repo_dir), DB_NAME=db,
               BACKUP_SIGNING_KEY_FILE=str(s3_bs.backup_signing_key_file), BACKUP_JOBS="1",
               BACKUP_S3_BUCKET=s3_bs.backup_s3_bucket, BACKUP_S3_PREFIX=s3_bs.backup_s3_prefix,
               BACKUP_S3_ENDPOINT_URL=endpoint or s3_bs.backup_s3_endpoint_url,
               BACKUP_S3_REGION="us-east-1", BACKUP_S3_MAX_ATTEMPTS="1",
               OPS_LOG_FILE=str(tmp_path / "ops.jsonl"), COLUMNS="250")
    return subprocess.run([DONNACTL, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd="/")


def _objects(s3_bs) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=s3_bs.backup_s3_endpoint_url,
                          region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=s3_bs.backup_s3_bucket,
                                    Prefix=f"{s3_bs.backup_s3_prefix}erasures/")
    return {o["Key"]: client.get_object(Bucket=s3_bs.backup_s3_bucket, Key=o["Key"])
            ["Body"].read() for o in listed.get("Contents", [])}


@pytest.fixture
def uploaded(sealed_settings, s3_bs, scratch_db):
    """(backup id, alice, bob, alice's sealed e-mail): both written with encryption on,
    backed up and uploaded to S3; nobody forgotten yet."""
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        alice, bob = Person(dal, "alice"), Person(dal, "bob")
    sealed_email = superuser_psql("SELECT encode(email_sealed, 'hex') FROM users "
                                  f"WHERE id = '{alice.id}'", scratch_db)
    backup = snapshot.create_backup(s3_bs, dbname=scratch_db)
    S3Store(s3_bs).upload_backup(backup)
    return backup.backup_id, alice, bob, sealed_email


def _lose_the_host(s3_bs, scratch_db: str) -> None:
    superuser_psql(f'DROP DATABASE "{scratch_db}" WITH (FORCE)')
    shutil.rmtree(s3_bs.backup_repo_dir)


def test_a_forget_copies_its_erasure_off_the_host_and_a_restore_after_losing_it_applies_it(
        sealed_settings, s3_bs, scratch_db, uploaded, target_name, tmp_path):
    backup_id, alice, bob, sealed_email = uploaded

    forgot = donnactl(s3_bs, tmp_path, "users", "forget", alice.id, "--dbname", scratch_db,
                      "--yes", "--json")
    assert forgot.returncode == 0, forgot.stderr
    where = f"s3://{s3_bs.backup_s3_bucket}/{s3_bs.backup_s3_prefix}erasures/{scratch_db}/"
    assert json.loads(forgot.stdout)["erasures_copy"] == {
        "database": scratch_db, "where": where, "ledger": 1, "pushed": 1}
    objects = _objects(s3_bs)
    entry = json.loads(objects[f"{s3_bs.backup_s3_prefix}erasures/{scratch_db}/{alice.id}.json"])
    # Her id and the time, signed: nothing personal leaves with it.
    assert set(entry) == {"database", "id", "erased_at", "signature"}
    assert not any(p in raw.decode() for raw in objects.values() for p in alice.personal)
    # Neither the ledger's folder nor pgBackRest's repository (same prefix) is a backup
    # to list, prune or call failed.
    store = S3Store(s3_bs)
    store.put_small(f"{store.prefix}pgbackrest/backup/donna/backup.info", b"[backup]")
    assert [b.backup_id for b in store.list_backups()] == [backup_id]

    _lose_the_host(s3_bs, scratch_db)
    args = ["backup", "restore", backup_id, "--target-db", target_name]
    plan = donnactl(s3_bs, tmp_path, *args, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["erasures"] == {
        "ledger_from": [where], "ledger_entries": 1, "erased_again": 1, "note": None,
        "warnings": []}

    done = donnactl(s3_bs, tmp_path, *args, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["erasures"] == {
        "ledger_from": [where], "ledger_entries": 1, "erased_again": 1, "note": None,
        "warnings": []}
    assert_erased_again(sealed_settings, target_name, alice, bob, sealed_email)


def test_entries_planted_in_the_bucket_are_not_applied(
        sealed_settings, s3_bs, scratch_db, uploaded, target_name, tmp_path):
    backup_id, alice, bob, sealed_email = uploaded
    forgot = donnactl(s3_bs, tmp_path, "users", "forget", alice.id, "--dbname", scratch_db,
                      "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert "erasures ledger: 1 new entries copied to s3://" in forgot.stdout
    store = S3Store(s3_bs)
    folder = f"{store.prefix}erasures/{scratch_db}/"
    real = json.loads(_objects(s3_bs)[f"{folder}{alice.id}.json"])
    # Whoever can write the bucket, without the signing key: bob's erasure signed with a
    # key of their own, and alice's signed entry turned into bob's.
    theirs = tmp_path / "theirs.key"
    crypto.generate_key_file(theirs)
    key = crypto.load_keys(theirs)[0]
    forged = {"database": scratch_db, "id": bob.id, "erased_at": real["erased_at"]}
    forged["signature"] = signing.record_signature(forged, key, ledgercopy._CONTEXT)
    store.put_small(f"{folder}{bob.id}.json", json.dumps(forged).encode())
    store.put_small(f"{store.prefix}erasures/{target_name}/{bob.id}.json",
                    json.dumps({**real, "id": bob.id}).encode())

    _lose_the_host(s3_bs, scratch_db)
    done = donnactl(s3_bs, tmp_path, "backup", "restore", backup_id, "--target-db",
                    target_name, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["erasures"]
    assert result["erased_again"] == 1 and result["ledger_entries"] == 1
    refused = sorted(w.split()[0] for w in result["warnings"])
    assert refused == sorted(f"s3://{store.bucket}/{k}" for k in (
        f"{folder}{bob.id}.json", f"{store.prefix}erasures/{target_name}/{bob.id}.json"))
    assert all("is not an authentic erasure" in w for w in result["warnings"])
    assert_erased_again(sealed_settings, target_name, alice, bob, sealed_email)
    assert superuser_psql(LEFT_SQL.format(id=bob.id), target_name) != "0"


def test_a_copy_that_failed_is_made_good_by_the_next_push(s3_bs, scratch_db, uploaded,
                                                          tmp_path):
    _, alice, _, _ = uploaded
    # S3 unreachable when the user is forgotten: the erasure stands, and says so.
    forgot = donnactl(s3_bs, tmp_path, "users", "forget", alice.id, "--dbname", scratch_db,
                      "--yes", endpoint="http://127.0.0.1:9")
    assert forgot.returncode == 0, forgot.stderr
    said = " ".join(forgot.stdout.split())
    assert f"the erasures ledger of {scratch_db} was not copied to S3" in said
    assert "run `donnactl backup push-erasures`" in said
    assert superuser_psql(LEFT_SQL.format(id=alice.id), scratch_db) == "0"
    assert _objects(s3_bs) == {}
    # ... which `backup check` (on its timer) calls a problem until it is copied.
    checked = donnactl(s3_bs, tmp_path, "backup", "check", "--json", db=scratch_db)
    assert checked.returncode == 8
    report = json.loads(checked.stdout)
    assert report["erasures_not_copied"] == 1
    assert f"1 erasures of {scratch_db} are not copied to S3" in " ".join(report["problems"])

    pushed = donnactl(s3_bs, tmp_path, "backup", "push-erasures", "--dbname", scratch_db,
                      "--json")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["pushed"] == 1
    again = donnactl(s3_bs, tmp_path, "backup", "push-erasures", "--dbname", scratch_db,
                     "--json")
    assert json.loads(again.stdout)["pushed"] == 0
    report = json.loads(donnactl(s3_bs, tmp_path, "backup", "check", "--json",
                                 db=scratch_db).stdout)
    assert report["erasures_not_copied"] == 0
    assert not any("erasures" in p for p in report["problems"])
    copy = ledgercopy.pull(s3_bs, scratch_db)
    assert [e["id"] for e in copy.entries] == [alice.id] and copy.refused == []



def test_the_backup_jobs_own_credentials_copy_the_ledger(s3_bs, scratch_db, uploaded,
                                                         deploy_settings):
    """`backup create` and `check` run as the cluster owner, whose passfile holds the
    backup and migrator roles only: the copy reads the ledger as the backup role."""
    from donnadb.provision import backups, consumers

    _, alice, _, _ = uploaded
    users.forget_user(s3_bs, alice.id, dbname=scratch_db)  # in-process: no copy made
    job = s3_bs.model_copy(update={"db_passfile": Path(consumers.passfile_of(
        deploy_settings, backups.JOB_USER))})
    assert ledgercopy.not_copied(job, scratch_db) == 1
    assert ledgercopy.push(job, scratch_db).pushed == 1
    assert ledgercopy.not_copied(job, scratch_db) == 0

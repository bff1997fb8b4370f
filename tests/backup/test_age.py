"""Backups encrypted to a public key with age: the host (recipients only) writes them and
cannot read them; the operator's identity restores them; the stock tool decrypts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from donnadb.backup import agecrypt, crypto, restore, snapshot, verify
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt, BackupError
from donnadb.errors import ConfigError, DiskWriteError
from tests.backup.conftest import BUCKET, table_checksums
from tests.support import fill_up, small_disk, superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture
def age_keys(tmp_path):
    """(identity file, recipients file): the operator's key pair, the host's public half."""
    identity = tmp_path / "operator" / "key.txt"
    identity.parent.mkdir()
    public = agecrypt.generate_identity(identity)
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the operator\n{public}\n")
    return identity, recipients


@pytest.fixture
def host_bs(bs, age_keys):
    """The database host's settings: the recipients file only."""
    return bs.model_copy(update={"backup_age_recipients_file": age_keys[1]})


@pytest.fixture
def marker(settings, source_db):
    """A row whose text would show in an unencrypted, uncompressed dump."""
    text = f"MARKER-{uuid.uuid4().hex}"
    superuser_psql(f"SET ROLE {settings.db_role_owner}; INSERT INTO users (clerk_id, email, "
                   f"name) VALUES ('{text}', 'm@example.org', '{text}')", dbname=source_db)
    return text


def absent(dbname: str) -> bool:
    return superuser_psql(f"SELECT count(*) FROM pg_database WHERE datname = '{dbname}'") == "0"


def test_round_trip_files_are_age_and_hold_no_plaintext(host_bs, age_keys, source_db,
                                                       marker, target_name, tmp_path):
    backup = snapshot.create_backup(host_bs, dbname=source_db, compress_level=0)
    public = age_keys[1].read_text().split()[-1]
    assert backup.manifest.encryption == {"algorithm": "age", "recipients": [public]}
    assert backup.manifest.files and all(f.path.endswith(".age") for f in backup.manifest.files)
    for f in backup.manifest.files:
        data = (backup.path / f.path).read_bytes()
        assert data.startswith(agecrypt.HEADER + b"\n"), f.path
        assert marker.encode() not in data, f.path
    # the control: the same dump decrypted does hold the marker (level 0: no gzip)
    plain = tmp_path / "plain"
    agecrypt.decrypt_tree(backup.path, mf.DUMP_DIR, plain, age_keys[0])
    assert any(marker.encode() in p.read_bytes() for p in plain.iterdir())

    operator = host_bs.model_copy(update={"backup_age_identity_file": age_keys[0]})
    result = restore.restore_backup(operator, backup, target_name)
    assert result.ok
    assert table_checksums(target_name) == table_checksums(source_db)
    assert not list(host_bs.backup_repo_dir.glob(".decrypted-*"))  # plaintext removed


def test_the_host_cannot_decrypt_its_own_backups(host_bs, source_db, target_name):
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    with pytest.raises(ConfigError, match="--identity FILE or set BACKUP_AGE_IDENTITY_FILE"):
        restore.restore_backup(host_bs, backup, target_name)
    assert absent(target_name)
    # verify --restore: the same error, and the backup is not marked failed for it
    with pytest.raises(ConfigError, match="--identity"):
        verify.verify_backup(host_bs, backup, with_restore=True)
    assert not (backup.path / "verify.json").exists()
    assert verify.verify_backup(host_bs, backup).ok  # the hashes need no key


def test_the_stock_tool_decrypts_a_dump_file(host_bs, age_keys, source_db, tmp_path):
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    out = tmp_path / "by-hand"
    out.mkdir()
    subprocess.run(["age", "-d", "-i", str(age_keys[0]), "-o", str(out / "toc.dat"),
                    str(backup.path / "dump" / "toc.dat.age")], check=True)
    listing = subprocess.run([str(host_bs.backup_pg_bin_dir / "pg_restore"), "--list",
                              str(out)], capture_output=True, text=True, check=True).stdout
    assert "TABLE public messages" in listing and f"dbname: {source_db}" in listing
    # the whole dump, as docs/backup.md does it by hand: pg_restore reads every table
    script = ('mkdir plain && for f in "$BACKUP"/dump/*.age; do n=$(basename "$f" .age); '
              'age -d -i "$KEY" -o "plain/$n" "$f"; done')
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True,
                   env=dict(os.environ, BACKUP=str(backup.path), KEY=str(age_keys[0])))
    data = subprocess.run([str(host_bs.backup_pg_bin_dir / "pg_restore"), "--data-only",
                           "--table=users", "--file=-", str(tmp_path / "plain")],
                          capture_output=True, text=True, check=True).stdout
    assert "clerk_40" in data


def test_a_wrong_identity_fails_cleanly(host_bs, source_db, target_name, tmp_path):
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    other = tmp_path / "other.txt"
    other_public = agecrypt.generate_identity(other)
    wrong = host_bs.model_copy(update={"backup_age_identity_file": other})
    with pytest.raises(BackupError, match=f"{other_public}: use the matching key"):
        restore.restore_backup(wrong, backup, target_name)
    assert absent(target_name)
    # the stock tool says the same, and so does our decryption if the check is bypassed
    with pytest.raises(BackupError, match="no identity matched any of the recipients"):
        agecrypt.decrypt_tree(backup.path, mf.DUMP_DIR, tmp_path / "out", other)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_restore_whose_disk_fills_while_decrypting_says_where(host_bs, age_keys, source_db,
                                                                target_name, tmp_path):
    with small_disk(tmp_path, "8m") as disk:
        repo_bs = host_bs.model_copy(update={"backup_repo_dir": disk / "repo",
                                            "backup_age_identity_file": age_keys[0]})
        backup = snapshot.create_backup(repo_bs, dbname=source_db)
        fill_up(disk)
        with pytest.raises(DiskWriteError) as failed:
            restore.restore_backup(repo_bs, backup, target_name)
        assert f"cannot write {disk}/repo/" in str(failed.value), failed.value
        assert "free space" in str(failed.value)
        assert absent(target_name)
        assert not list((disk / "repo").glob(".decrypted-*"))  # no plaintext left
        assert mf.hash_tree(backup.path) == backup.manifest.files  # the backup untouched


def test_identity_file_rules(host_bs, age_keys, source_db, target_name, tmp_path):
    identity = age_keys[0]
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    identity.chmod(0o644)
    loose = host_bs.model_copy(update={"backup_age_identity_file": identity})
    with pytest.raises(ConfigError, match="readable by others; chmod 600"):
        restore.restore_backup(loose, backup, target_name)
    assert absent(target_name)
    with pytest.raises(ConfigError, match="exists"):
        agecrypt.generate_identity(identity)
    (tmp_path / "not-a-key.txt").write_text("hello\n")
    (tmp_path / "not-a-key.txt").chmod(0o600)
    with pytest.raises(ConfigError, match="holds no age private key"):
        agecrypt.identity_recipients(tmp_path / "not-a-key.txt")


@pytest.mark.parametrize("text, match", [
    ("", "holds no public key"),
    ("age1notakey\n", "line 1 is not an age public key"),
    ("AGE-SECRET-KEY-1XYZ\n", "line 1 is not an age public key"),
])
def test_recipients_file_rules(bs, tmp_path, text, match):
    path = tmp_path / "recipients.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        snapshot.create_backup(bs.model_copy(update={"backup_age_recipients_file": path}))
    assert not list(bs.backup_repo_dir.iterdir())  # refused before pg_dump


def test_symmetric_backups_still_restore_and_recipients_win(bs, age_keys, source_db,
                                                            target_name, tmp_path):
    key_file = tmp_path / "backup.key"
    crypto.generate_key_file(key_file)
    old = snapshot.create_backup(bs.model_copy(update={"backup_encryption_key_file": key_file}),
                                 dbname=source_db)
    assert old.manifest.encryption["algorithm"] == crypto.ALGORITHM
    assert (old.path / "dump" / "toc.dat.enc").read_bytes().startswith(crypto.MAGIC)
    both = bs.model_copy(update={"backup_encryption_key_file": key_file,
                                 "backup_age_recipients_file": age_keys[1],
                                 "backup_age_identity_file": age_keys[0]})
    new = snapshot.create_backup(both, dbname=source_db)
    assert new.manifest.encryption["algorithm"] == "age"  # recipients win for new backups
    restore.restore_backup(both, old, target_name)  # the old key still reads the old ones
    assert table_checksums(target_name) == table_checksums(source_db)
    restore.restore_backup(both, new, target_name, force=True)
    assert table_checksums(target_name) == table_checksums(source_db)


def test_a_plain_backup_is_refused_when_recipients_are_set(bs, host_bs, source_db,
                                                           target_name):
    plain = snapshot.create_backup(bs, dbname=source_db)
    with pytest.raises(Exception, match="BACKUP_AGE_RECIPIENTS_FILE is set; pass "
                                        "--allow-unencrypted"):
        restore.restore_backup(host_bs, plain, target_name)
    assert absent(target_name)


@pytest.mark.parametrize("encryption", [
    {"algorithm": "age", "recipients": []},
    {"algorithm": "age", "recipients": ["AGE-SECRET-KEY-1ABC"]},
    {"algorithm": "age", "recipients": "age1"},
    {"algorithm": "age"},
])
def test_a_malformed_age_encryption_field_is_refused(host_bs, source_db, encryption):
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    document = json.loads(backup.manifest.to_json())
    document["encryption"] = encryption
    with pytest.raises(BackupCorrupt, match="encryption field is malformed"):
        mf.Manifest.from_json(json.dumps(document))


def test_cli_keygen_then_s3_round_trip_with_identity(s3_bs, source_db, target_name, tmp_path):
    operator = tmp_path / "operator"
    operator.mkdir()
    made = subprocess.run([DONNACTL, "backup", "keygen", "--age", "key.txt", "--json"],
                          cwd=operator, capture_output=True, text=True, check=True)
    public = json.loads(made.stdout)["public_key"]
    assert (operator / "key.txt").stat().st_mode & 0o777 == 0o600
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(public + "\n")
    env = dict(os.environ, BACKUP_REPO_DIR=str(tmp_path / "cli-repo"), DB_NAME=source_db,
               BACKUP_S3_BUCKET=BUCKET, BACKUP_S3_PREFIX=s3_bs.backup_s3_prefix,
               BACKUP_S3_ENDPOINT_URL=s3_bs.backup_s3_endpoint_url,
               BACKUP_S3_REGION="us-east-1", BACKUP_AGE_RECIPIENTS_FILE=str(recipients),
               BACKUP_SIGNING_KEY_FILE=str(s3_bs.backup_signing_key_file), COLUMNS="200")
    env.pop("BACKUP_AGE_IDENTITY_FILE", None)

    def run(*args):
        return subprocess.run([DONNACTL, "backup", *args], env=env, cwd=operator, text=True,
                              capture_output=True, timeout=120, check=False)

    created = run("create", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["uploaded"]
    shown = run("show", "latest")
    assert f"encrypted (age) to {public}" in shown.stdout, shown.stdout
    shutil.rmtree(tmp_path / "cli-repo")  # the host is lost: only S3 is left

    refused = run("restore", "latest", "--target-db", target_name)
    assert refused.returncode == 3
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--identity" in refused.stderr and "BACKUP_AGE_IDENTITY_FILE" in refused.stderr
    assert absent(target_name)

    restored = run("restore", "latest", "--target-db", target_name, "--identity", "key.txt",
                   "--json")
    assert restored.returncode == 0, restored.stderr
    assert table_checksums(target_name) == table_checksums(source_db)
    checked = run("verify", "latest", "--restore", "--identity", "key.txt", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["restored"]


def test_the_scheduled_drill_on_the_host_checks_the_files_and_says_so(host_bs, source_db):
    backup = snapshot.create_backup(host_bs, dbname=source_db)
    env = dict(os.environ, BACKUP_REPO_DIR=str(host_bs.backup_repo_dir), DB_NAME=source_db,
               BACKUP_S3_BUCKET="", BACKUP_SIGNING_KEY_FILE=str(host_bs.backup_signing_key_file),
               BACKUP_AGE_RECIPIENTS_FILE=str(host_bs.backup_age_recipients_file),
               DONNACTL=DONNACTL, OPS_LOG_FILE=str(host_bs.backup_repo_dir.parent / "ops.jsonl"),
               PGBACKREST_ENABLED="false")
    env.pop("BACKUP_AGE_IDENTITY_FILE", None)
    script = Path(__file__).resolve().parents[2] / "backups" / "donna-backup"
    # the weekly job is the restore drill (`backup drill --both --if-key`)
    done = subprocess.run([str(script), "verify", "--json"], env=env, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    logical = report["results"][0]
    assert report["ok"] and logical["ok"] and logical["rto_seconds"] is None
    assert "restore skipped" in logical["skipped"]
    assert "BACKUP_AGE_IDENTITY_FILE" in logical["skipped"]
    assert json.loads((backup.path / "verify.json").read_text())["ok"]
    # without --if-key (an operator's command) the same is an error, exit 3
    for args in (("verify", "latest", "--restore"), ("drill", "--logical")):
        strict = subprocess.run([DONNACTL, "backup", *args], env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert strict.returncode == 3 and "--identity" in strict.stderr, args


def test_an_identity_file_on_the_host_is_a_secret_the_security_check_covers(bs, age_keys):
    from donnadb.ops import security

    with_identity = bs.model_copy(update={"backup_age_identity_file": age_keys[0]})
    assert age_keys[0] in [path for path, _ in security._secret_files(with_identity)]
    assert age_keys[0] not in [path for path, _ in security._secret_files(bs)]

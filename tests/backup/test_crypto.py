"""Client-side encryption: round trips, tampering, wrong/rotated keys, and an encrypted
backup restored end to end."""

from __future__ import annotations

import os

import pytest

from donnadb.backup import crypto, restore, snapshot
from donnadb.backup.errors import BackupCorrupt, BackupError
from donnadb.errors import ConfigError
from tests.backup.conftest import table_checksums
from tests.support import superuser_psql

PLACE = crypto.place_of("20261202T061000123456Z-abcd", "dump/toc.dat.enc")


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "backup.key"
    crypto.generate_key_file(path)
    return path


@pytest.mark.parametrize("size", [0, 1, crypto.CHUNK, crypto.CHUNK + 1, 2 * crypto.CHUNK + 7])
def test_round_trip(tmp_path, key_file, size):
    keys = crypto.load_keys(key_file)
    plain = os.urandom(size)
    (tmp_path / "p").write_bytes(plain)
    crypto.encrypt_file(tmp_path / "p", tmp_path / "c", keys[0], PLACE)
    assert size < 16 or plain not in (tmp_path / "c").read_bytes()  # short ones match by chance
    crypto.decrypt_file(tmp_path / "c", tmp_path / "d", keys, PLACE)
    assert (tmp_path / "d").read_bytes() == plain


def _encrypted(tmp_path, key_file, size=2 * crypto.CHUNK + 100):
    (tmp_path / "p").write_bytes(os.urandom(size))
    crypto.encrypt_file(tmp_path / "p", tmp_path / "c", crypto.load_keys(key_file)[0], PLACE)
    return tmp_path / "c"


def test_flipped_byte_and_truncation_are_detected(tmp_path, key_file):
    keys = crypto.load_keys(key_file)
    enc = _encrypted(tmp_path, key_file)
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "flipped").write_bytes(bytes(data))
    with pytest.raises(BackupCorrupt, match="fails authentication"):
        crypto.decrypt_file(tmp_path / "flipped", tmp_path / "out", keys, PLACE)
    # cut after the first whole chunk: still well-formed chunks, but not the final one
    first_len = int.from_bytes(data[25:29], "big")
    (tmp_path / "cut").write_bytes(enc.read_bytes()[: 25 + 4 + first_len])
    with pytest.raises(BackupCorrupt, match="fails authentication"):
        crypto.decrypt_file(tmp_path / "cut", tmp_path / "out", keys, PLACE)


@pytest.mark.parametrize("elsewhere", [
    crypto.place_of("20261202T061000123456Z-abcd", "dump/3001.dat.gz.enc"),  # another path
    crypto.place_of("20261201T000000000000Z-0000", "dump/toc.dat.enc"),  # another backup
])
def test_a_file_moved_to_another_place_fails_authentication(tmp_path, key_file, elsewhere):
    keys = crypto.load_keys(key_file)
    enc = _encrypted(tmp_path, key_file, 1000)
    with pytest.raises(BackupCorrupt, match="moved from another backup or path"):
        crypto.decrypt_file(enc, tmp_path / "out", keys, elsewhere)


def test_a_huge_chunk_length_is_refused_before_allocation(tmp_path, key_file):
    keys = crypto.load_keys(key_file)
    enc = _encrypted(tmp_path, key_file, 1000)
    data = bytearray(enc.read_bytes())
    data[25:29] = (2**32 - 1).to_bytes(4, "big")
    (tmp_path / "huge").write_bytes(bytes(data))
    with pytest.raises(BackupCorrupt, match="claims 4294967295 bytes"):
        crypto.decrypt_file(tmp_path / "huge", tmp_path / "out", keys, PLACE)


def test_wrong_key_names_the_key_id(tmp_path, key_file):
    enc = _encrypted(tmp_path, key_file, 10)
    other = tmp_path / "other.key"
    crypto.generate_key_file(other)
    with pytest.raises(BackupError, match=crypto.load_keys(key_file)[0].key_id):
        crypto.decrypt_file(enc, tmp_path / "out", crypto.load_keys(other), PLACE)


def test_key_file_rules(tmp_path, key_file):
    with pytest.raises(ConfigError, match="exists"):
        crypto.generate_key_file(key_file)
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        crypto.load_keys(key_file)
    bad = tmp_path / "bad.key"
    bad.write_text("abc\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="line 1"):
        crypto.load_keys(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        crypto.load_keys(tmp_path / "missing.key")


def test_encrypted_backup_restores_with_rotated_keys(settings, bs, source_db, target_name,
                                                     key_file, tmp_path):
    enc_bs = bs.model_copy(update={"backup_encryption_key_file": key_file})
    backup = snapshot.create_backup(enc_bs, dbname=source_db)
    old_id = crypto.load_keys(key_file)[0].key_id
    assert backup.manifest.encryption["key_id"] == old_id
    assert all(f.path.endswith(".enc") for f in backup.manifest.files)

    # without the key, and with only a new key: refused before the target exists
    with pytest.raises(ConfigError, match=old_id):
        restore.restore_backup(bs, backup, target_name)
    new_only = tmp_path / "new.key"
    crypto.generate_key_file(new_only)
    with pytest.raises(BackupError, match=old_id):
        restore.restore_backup(bs.model_copy(
            update={"backup_encryption_key_file": new_only}), backup, target_name)
    assert superuser_psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target_name}'") \
        == "0"

    # rotation: new key on top, old key kept below it
    new_only.write_text(new_only.read_text() + key_file.read_text())
    rotated = bs.model_copy(update={"backup_encryption_key_file": new_only})
    restore.restore_backup(rotated, backup, target_name)
    assert table_checksums(target_name) == table_checksums(source_db)
    assert not list(bs.backup_repo_dir.glob(".decrypted-*"))  # plaintext removed

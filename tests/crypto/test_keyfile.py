"""The key file: made private, refused when others can read it or it is malformed, and a
new KEK added on top without losing the old ones."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb.crypto import envelope, keyfile
from donnadb.crypto.errors import DecryptError, KeyFileError
from tests.support import full_disk, one_line_error

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def test_a_new_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "k"
    keys = keyfile.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyfile.load(path) == keys and len(keys.current.kek_id) == 16
    assert base64.b64encode(keys.current.secret).decode() not in repr(keys)
    with pytest.raises(KeyFileError, match="never overwritten"):
        keyfile.generate(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_file_open_to_others_is_refused(tmp_path, mode):
    path = tmp_path / "k"
    keyfile.generate(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}"):
        keyfile.load(path)


def test_a_symlinked_key_file_is_refused(tmp_path):
    keyfile.generate(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(KeyFileError, match="cannot open"):
        keyfile.load(tmp_path / "link")


@pytest.mark.parametrize("text", [
    "kek abc\nlookup " + base64.b64encode(b"x" * 32).decode() + "\n",
    "lookup " + base64.b64encode(b"x" * 32).decode() + "\n",
    "kek " + base64.b64encode(b"x" * 32).decode() + "\n",
    "key " + base64.b64encode(b"x" * 32).decode() + "\n",
])
def test_a_malformed_key_file_is_refused(tmp_path, text):
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        keyfile.load(path)


def test_an_added_kek_wraps_new_keys_and_the_old_one_still_unwraps(tmp_path):
    path = tmp_path / "k"
    old = keyfile.generate(path)
    kek_id, wrapped, dek = envelope.wrap(old, "u1")
    new = keyfile.add_kek(path)
    keys = keyfile.load(path)
    assert keys.current == new and keys.keks[1] == old.current and keys.lookup == old.lookup
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert envelope.unwrap(keys, "u1", kek_id, wrapped) == dek
    new_id, rewrapped = envelope.rewrap(keys, "u1", kek_id, wrapped)
    assert new_id == new.kek_id and envelope.unwrap(keys, "u1", new_id, rewrapped) == dek
    with pytest.raises(DecryptError, match="the data key of user u2"):
        envelope.unwrap(keys, "u2", new_id, rewrapped)
    keyfile.drop_kek(path, old.current.kek_id)
    with pytest.raises(KeyFileError, match=f"wrapped by KEK {old.current.kek_id}"):
        envelope.unwrap(keyfile.load(path), "u1", kek_id, wrapped)


def test_the_lookup_hash_ignores_case_and_spaces_and_needs_the_key(tmp_path):
    a, b = keyfile.generate(tmp_path / "a"), keyfile.generate(tmp_path / "b")
    assert envelope.lookup_hash(a, " Ann@Example.org") == envelope.lookup_hash(a, "ann@example.org")
    assert envelope.lookup_hash(a, "ann@example.org") != envelope.lookup_hash(b, "ann@example.org")


def test_keys_init_on_a_full_disk_leaves_no_key_file(tmp_path):
    with full_disk(tmp_path) as disk:
        path = disk / "root"
        done = subprocess.run([DONNACTL, "keys", "init"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "CRYPTO_KEK_FILE": str(path),
                                               "OPS_LOG_FILE": str(tmp_path / "ops.jsonl")})
        one_line_error(done, 1, f"cannot write {path}: No space left on device", "free space")
        assert not path.exists()  # so `keys init` runs again once there is room


def test_keys_init_names_a_missing_folder(tmp_path):
    with pytest.raises(KeyFileError, match="folder does not exist"):
        keyfile.generate(tmp_path / "nowhere" / "root")


def test_a_disk_failing_under_the_key_file_is_named_as_such(tmp_path):
    """EIO on the key file's read (strace injects it): one line naming the file and the
    disk, not a full disk and not a traceback."""
    path = tmp_path / "root"
    keyfile.generate(path)
    env = {**os.environ, "CRYPTO_KEK_FILE": str(path), "OPS_LOG_FILE": str(tmp_path / "o")}
    done = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(path),
                           "-e", "trace=read", "-e", "inject=read:error=EIO",
                           DONNACTL, "keys", "status"],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")
    line = one_line_error(done, 1, f"the disk failed under {path}: Input/output error",
                          "check the disk")
    assert "free space" not in line

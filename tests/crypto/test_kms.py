"""The key file sealed by a KMS key, against moto's KMS on 127.0.0.1: nothing of the keys
on disk, opened by the DAL through KMS, refused when altered, moved to another key or
purpose, or when KMS is gone; `keys seal` turns a file in clear into a sealed one."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from donnadb.crypto import keyfile, kms
from donnadb.crypto.errors import KeyFileError
from donnadb.dal import PostgresDataAccess
from donnadb.errors import ConfigError
from donnadb.provision.settings import load_deploy_settings
from tests.support import crypto_settings, moto_server, one_line_error, superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture(scope="module")
def kms_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def kms_key(kms_endpoint) -> str:
    """A new symmetric KMS key's ARN."""
    client = boto3.client("kms", endpoint_url=kms_endpoint, region_name="us-east-1")
    return client.create_key(Description="donnadb test")["KeyMetadata"]["Arn"]


def _seal(endpoint: str, key: str) -> kms.KmsSeal:
    return kms._seal(key, "us-east-1", endpoint)


def _donnactl(*args: str, kek_file: Path, endpoint: str, key: str | None,
              **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRYPTO_KEK_FILE": str(kek_file), "CRYPTO_KMS_KEY_ID": key or "",
           "CRYPTO_KMS_REGION": "us-east-1", "CRYPTO_KMS_ENDPOINT_URL": endpoint,
           "OPS_LOG_FILE": str(kek_file.parent / "donnactl.jsonl"), "COLUMNS": "200",
           **extra}
    return subprocess.run([DONNACTL, *args], env=env, cwd="/", text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def _secrets_of(keys: keyfile.KeySet) -> list[bytes]:
    raw = [k.secret for k in keys.keks] + [keys.lookup]
    return [s for r in raw for s in (r, base64.b64encode(r))]


def test_a_key_file_made_with_a_kms_key_holds_none_of_the_keys(tmp_path, kms_endpoint,
                                                                 kms_key):
    path = tmp_path / "fields.key"
    made = _donnactl("keys", "init", "--json", kek_file=path, endpoint=kms_endpoint,
                     key=kms_key)
    assert made.returncode == 0, made.stderr
    content = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert content.startswith(b"donnadb-kms-sealed-v1 " + kms_key.encode() + b"\n")

    keys = keyfile.load(path, _seal(kms_endpoint, kms_key))
    assert keys.sealed_by == kms_key
    assert json.loads(made.stdout)["kek_id"] == keys.current.kek_id
    for secret in _secrets_of(keys):
        assert secret not in content
    with pytest.raises(KeyFileError, match="sealed by KMS key .*CRYPTO_KMS_KEY_ID"):
        keyfile.load(path)


def test_the_dal_opens_a_sealed_key_file_and_reads_back_what_it_sealed(
        settings, scratch_db, tmp_path, kms_endpoint, kms_key):
    path = tmp_path / "fields.key"
    keyfile.generate(path, _seal(kms_endpoint, kms_key))
    sealed = crypto_settings(settings, path).model_copy(update={
        "crypto_kms_key_id": kms_key, "crypto_kms_region": "us-east-1",
        "crypto_kms_endpoint_url": kms_endpoint})
    with PostgresDataAccess(sealed, dbname=scratch_db) as dal:
        uid = dal.create_user({"clerk_id": "kms1", "email": "kms@example.org",
                               "name": "Kay Emess"})
        dal.set_user_memory(uid, "context", "city", {"v": "Lisbon"})
    with PostgresDataAccess(sealed, dbname=scratch_db) as again:  # a new process's view
        assert again.get_user_by_id(uid)["email"] == "kms@example.org"
        assert again.get_user_memory(uid, "context")["city"] == {"v": "Lisbon"}
    stored = superuser_psql("SELECT u::text FROM users u; SELECT m::text FROM user_memory m",
                            scratch_db)
    assert "kms@example.org" not in stored and "Lisbon" not in stored


def test_an_altered_or_moved_sealed_file_is_refused(tmp_path, kms_endpoint, kms_key):
    seal = _seal(kms_endpoint, kms_key)
    path = tmp_path / "fields.key"
    keyfile.generate(path, seal)
    header, blob, _ = path.read_bytes().split(b"\n")

    raw = bytearray(base64.b64decode(blob))
    raw[-20] ^= 0x01  # one bit of the ciphertext
    path.write_bytes(header + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    with pytest.raises(KeyFileError, match="InvalidCiphertextException.*escrow"):
        keyfile.load(path, seal)

    # The same blob said to be another key's: KMS is told which key to expect.
    other = boto3.client("kms", endpoint_url=kms_endpoint, region_name="us-east-1"
                         ).create_key()["KeyMetadata"]["Arn"]
    path.write_bytes(b"donnadb-kms-sealed-v1 " + other.encode() + b"\n" + blob + b"\n")
    with pytest.raises(KeyFileError, match="KMS refused to open"):
        keyfile.load(path, seal)

    # KMS ciphertext of a key file made for another purpose (another context) is refused.
    plain = tmp_path / "plain.key"
    keyfile.generate(plain)
    foreign = seal.client.encrypt(KeyId=kms_key, Plaintext=plain.read_bytes(),
                                  EncryptionContext={"purpose": "something else"})
    path.write_bytes(header + b"\n" + base64.b64encode(foreign["CiphertextBlob"]) + b"\n")
    with pytest.raises(KeyFileError, match="InvalidCiphertextException"):
        keyfile.load(path, seal)

    path.write_bytes(header + b"\nnot base64 at all!\n")
    with pytest.raises(KeyFileError, match="not a KMS-sealed key file"):
        keyfile.load(path, seal)


def test_kms_out_of_reach_is_one_line_and_quick(tmp_path, kms_endpoint, kms_key):
    path = tmp_path / "fields.key"
    keyfile.generate(path, _seal(kms_endpoint, kms_key))
    before = path.read_bytes()
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    for args in (("keys", "status"), ("keys", "add-kek", "--yes")):
        run = _donnactl(*args, kek_file=path, endpoint=dead, key=kms_key)
        one_line_error(run, 3, "cannot open the key file", "CRYPTO_KMS_ENDPOINT_URL")
    assert time.monotonic() - started < 60
    assert path.read_bytes() == before


def test_keys_seal_turns_a_file_in_clear_into_a_sealed_one(tmp_path, kms_endpoint, kms_key):
    path = tmp_path / "fields.key"
    keys = keyfile.generate(path)
    clear = path.read_bytes()
    status = _donnactl("keys", "status", kek_file=path, endpoint=kms_endpoint, key=kms_key)
    assert status.returncode == 0, status.stderr
    assert "set but the key file is in clear" in " ".join(status.stdout.split())

    dry = _donnactl("keys", "seal", "--dry-run", "--json", kek_file=path,
                    endpoint=kms_endpoint, key=kms_key)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"key_file": str(path), "sealed_by": None,
                                      "seal_with": kms_key, "changed": False,
                                      "dry_run": True}
    asked = _donnactl("keys", "seal", kek_file=path, endpoint=kms_endpoint, key=kms_key)
    assert asked.returncode != 0  # no terminal to say yes
    unknown = _donnactl("keys", "seal", "--yes", kek_file=path, endpoint=kms_endpoint,
                        key="alias/no-such-key")
    one_line_error(unknown, 3, "KMS refused", "alias/no-such-key")
    assert path.read_bytes() == clear

    done = _donnactl("keys", "seal", "--yes", "--json", kek_file=path,
                     endpoint=kms_endpoint, key=kms_key)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changed"] is True
    sealed = path.read_bytes()
    assert keyfile.load(path, _seal(kms_endpoint, kms_key)) == keys
    for secret in _secrets_of(keys):
        assert secret not in sealed
    audit = [json.loads(line).get("context", {})
             for line in (tmp_path / "donnactl.jsonl").read_text().splitlines()]
    assert {"command": "keys seal", "exit_code": 0}.items() <= audit[-1].items()

    status = _donnactl("keys", "status", "--json", kek_file=path, endpoint=kms_endpoint,
                       key=kms_key)
    assert json.loads(status.stdout)["sealed_by"] == kms_key

    again = _donnactl("keys", "seal", "--yes", "--json", kek_file=path,
                      endpoint=kms_endpoint, key=kms_key)
    assert json.loads(again.stdout)["changed"] is False and path.read_bytes() == sealed

    # To another KMS key: opened with the key the header names, sealed by the new one.
    other = boto3.client("kms", endpoint_url=kms_endpoint, region_name="us-east-1"
                         ).create_key()["KeyMetadata"]["Arn"]
    moved = _donnactl("keys", "seal", "--yes", kek_file=path, endpoint=kms_endpoint,
                      key=other)
    assert moved.returncode == 0, moved.stderr
    assert keyfile.load(path, _seal(kms_endpoint, other)).sealed_by == other
    added = _donnactl("keys", "add-kek", "--yes", kek_file=path, endpoint=kms_endpoint,
                      key=other)
    assert added.returncode == 0, added.stderr
    now = keyfile.load(path, _seal(kms_endpoint, other))
    assert now.sealed_by == other and now.keks[1:] == keys.keks


def test_the_deploy_makes_the_key_file_sealed_and_names_the_kms_key(tmp_path, kms_endpoint,
                                                                    kms_key):
    from donnadb.provision import fieldkeys
    from tests.provision.deployrun import load_group_data, run_deploy

    data = {**load_group_data(), "crypto_kms_key_id": kms_key,
            "crypto_kms_region": "us-east-1", "crypto_kms_endpoint_url": kms_endpoint}
    deploy = load_deploy_settings(data)
    env = fieldkeys.client_env(deploy, "donna-app")
    assert {k: v for k, v in env.items() if k.startswith("CRYPTO_KMS_")} == {
        "CRYPTO_KMS_KEY_ID": kms_key, "CRYPTO_KMS_REGION": "us-east-1",
        "CRYPTO_KMS_ENDPOINT_URL": kms_endpoint}
    assert "CRYPTO_KMS_KEY_ID" not in fieldkeys.client_env(load_deploy_settings(
        {**load_group_data(), "crypto_kms_key_id": ""}))
    with pytest.raises(ConfigError, match="crypto_kms_key_id.*one word"):
        load_deploy_settings({**data, "crypto_kms_key_id": "alias/a b"})

    # The real step on this host, into a scratch folder: made sealed once, then left alone.
    passfile = tmp_path / "secrets" / "pgpass"
    for n in (1, 2):
        run = run_deploy(deploy_file="tests/provision/kms_deploy.py", timeout=300, data={
            "db_passfile": str(passfile), "crypto_kms_key_id": kms_key,
            "crypto_kms_region": "us-east-1", "crypto_kms_endpoint_url": kms_endpoint})
        assert run.returncode == 0, run.output[-3000:]
        if n == 1:
            path = tmp_path / "secrets" / "keys.d" / "root"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert kms.sealed_by(path.read_bytes()) == kms_key
            made = path.read_bytes()
    assert run.changed_operations() == [] and path.read_bytes() == made
    keyfile.load(path, _seal(kms_endpoint, kms_key))


def test_keys_escrow_writes_a_clear_copy_that_opens_without_kms(tmp_path, kms_endpoint,
                                                                kms_key):
    path, out = tmp_path / "fields.key", tmp_path / "escrow" / "fields.key"
    out.parent.mkdir(mode=0o700)
    run = {"kek_file": path, "endpoint": kms_endpoint, "key": kms_key}
    assert _donnactl("keys", "init", **run).returncode == 0
    assert _donnactl("keys", "add-kek", "--yes", **run).returncode == 0
    sealed = keyfile.load(path, _seal(kms_endpoint, kms_key))

    dry = _donnactl("keys", "escrow", str(out), "--dry-run", "--json", **run)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["kek_ids"] == [k.kek_id for k in sealed.keks]
    assert not out.exists()
    said_nothing = _donnactl("keys", "escrow", str(out), **run)  # no terminal: no answer
    assert said_nothing.returncode == 130 and not out.exists()

    done = _donnactl("keys", "escrow", str(out), "--yes", "--json", **run)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    copy = keyfile.load(out)  # in clear: no KMS key needed
    assert copy.keks == sealed.keks and copy.lookup == sealed.lookup
    assert copy.sealed_by is None
    audit = (tmp_path / "donnactl.jsonl").read_text()
    assert '"keys escrow"' in audit and sealed.current.secret.hex() not in audit

    # Never over a file: the copy stays as it was.
    before = out.read_bytes()
    one_line_error(_donnactl("keys", "escrow", str(out), "--yes", **run), 3,
                   "never overwritten")
    assert out.read_bytes() == before

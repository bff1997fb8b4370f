"""`donnactl keys rotate` for real: killed half-way and run again, with a DAL that started
before the new KEK reading throughout; `keys status` and `keys retire`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from donnadb.crypto import envelope, keyfile, rotation
from donnadb.crypto.errors import KeyFileError
from donnadb.dal import PostgresDataAccess
from tests.support import superuser_psql

DONNACTL = str(Path(sys.executable).parent / "donnactl")
#: Data keys made directly (wrapping is cheap; the DAL would take minutes for as many).
BULK = 3000


def _bulk_keys(dbname: str, keys: keyfile.KeySet) -> None:
    """BULK users with a data key each, under the key set's current KEK."""
    rows = []
    for _ in range(BULK):
        uid = str(uuid.uuid4())
        kek_id, wrapped, _ = envelope.wrap(keys, uid)
        rows.append(f"('{uid}', '{kek_id}', '\\x{wrapped.hex()}')")
    superuser_psql("SET ROLE donna_owner;\n"
                   "CREATE TEMP TABLE k (user_id uuid, kek_id text, wrapped_key bytea);\n"
                   f"INSERT INTO k VALUES {', '.join(rows)};\n"
                   "INSERT INTO users (id, clerk_id, kek_id, wrapped_key, key_created_at) "
                   "SELECT user_id, user_id::text, kek_id, wrapped_key, now() FROM k;", dbname)


def _donnactl(*args: str, kek_file: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "CRYPTO_KEK_FILE": str(kek_file), "COLUMNS": "200",
           "OPS_LOG_FILE": str(kek_file.parent / "donnactl.jsonl")}
    return subprocess.Popen([DONNACTL, *args], env=env, cwd="/", text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_rotation_killed_half_way_finishes_when_run_again(sealed_settings, scratch_db, kek_file):
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as early:
        ids = [early.create_user({"clerk_id": f"c{n}", "email": f"u{n}@example.org",
                                  "name": f"User {n}", "profile": {"n": n}})
               for n in range(5)]
        for uid in ids:
            early.set_user_memory(uid, "context", "k", {"v": uid})
        _bulk_keys(scratch_db, keyfile.load(kek_file))
        old = keyfile.load(kek_file).current.kek_id
        new = keyfile.add_kek(kek_file).kek_id

        run = _donnactl("keys", "rotate", "--batch", "5", "--dbname", scratch_db,
                        kek_file=kek_file)
        deadline = time.monotonic() + 60
        while superuser_psql(f"SELECT count(*) FROM users WHERE kek_id = '{new}'",
                             scratch_db) == "0":
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.communicate()
        half = rotation.status(sealed_settings, dbname=scratch_db)
        assert 0 < half["to_rewrap"] < BULK + 5, half
        # Every key opens meanwhile, for a DAL that read the key file before the new KEK.
        for uid in ids:
            assert early.get_user_by_id(uid)["name"].startswith("User ")
        with pytest.raises(KeyFileError, match="still wrapped by KEK"):
            rotation.retire(sealed_settings, old, dbname=scratch_db)

        again = _donnactl("keys", "rotate", "--json", "--dbname", scratch_db,
                          kek_file=kek_file)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert json.loads(out)["left"] == 0
        status = _donnactl("keys", "status", "--json", "--dbname", scratch_db,
                           kek_file=kek_file)
        doc = json.loads(status.communicate(timeout=60)[0])
        assert doc["to_rewrap"] == 0 and doc["current"] == new and doc["missing"] == []
        assert {k["kek_id"]: k["data_keys"] for k in doc["key_file"]} == {new: BULK + 5, old: 0}

        rotation.retire(sealed_settings, old, dbname=scratch_db)
        assert [k.kek_id for k in keyfile.load(kek_file).keks] == [new]
        for uid in ids:
            assert early.get_user_memory(uid, "context") == {"k": {"v": uid}}
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as late:
        assert [late.get_user_by_id(uid)["email"] for uid in ids] == [
            f"u{n}@example.org" for n in range(5)]

"""Sealing what was stored in clear (`donnactl keys seal-existing`, donnadb/dal/sealed.py):
rows a store wrote with encryption off are refused by a sealed store, then sealed in
place, readable again, and gone from a dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb.crypto.errors import DecryptError
from donnadb.dal import PostgresDataAccess
from tests.support import crypto_settings

DONNACTL = str(Path(sys.executable).parent / "donnactl")


def _dump(dbname: str) -> str:
    return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dump", "-d", dbname,
                           "-t", "users", "-t", "user_memory"], capture_output=True,
                          text=True, check=True, cwd="/").stdout


def test_values_stored_in_clear_are_sealed_in_place(settings, pg_db, kek_file):
    with PostgresDataAccess(settings, dbname=pg_db) as plain:
        ann = plain.create_user({"clerk_id": "ann", "email": "zqann@example.org",
                                 "name": "zqAnn", "profile": {"city": "zqParis"},
                                 "preferences": {"theme": "zqdark"}})
        plain.set_user_memory(ann, "context", "note", {"zq": "zqnote"})
        bare = plain.ensure_user("bare")
        before = {u: (plain.get_user_by_id(u), plain.get_user_memory(u, "context"))
                  for u in (ann, bare)}
    assert "zqann@example.org" in _dump(pg_db)
    sealed = crypto_settings(settings, kek_file)
    with PostgresDataAccess(sealed, dbname=pg_db) as dal:
        with pytest.raises(DecryptError, match="users.email of user .* is stored in clear"):
            dal.get_user_by_id(ann)
        env = {**os.environ, "CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": str(kek_file)}
        run = [DONNACTL, "keys", "seal-existing", "--batch", "1", "--json", "--dbname", pg_db]
        done = subprocess.run(run, capture_output=True, text=True, env=env, cwd="/",
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"users_sealed": 1}
        for uid, (user, memory) in before.items():
            got = dal.get_user_by_id(uid)
            assert {k: got[k] for k in ("email", "name", "profile", "preferences")} == \
                {k: user[k] for k in ("email", "name", "profile", "preferences")}
            assert dal.get_user_memory(uid, "context") == memory
            assert dal.get_user_memory(uid, "profile") == user["profile"]
        again = subprocess.run(run, capture_output=True, text=True, env=env, cwd="/",
                               timeout=120, check=False)
        assert json.loads(again.stdout) == {"users_sealed": 0}
    dump = _dump(pg_db)
    assert not [m for m in ("zqann", "zqAnn", "zqParis", "zqdark", "zqnote") if m in dump]

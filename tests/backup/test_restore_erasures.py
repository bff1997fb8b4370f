"""A restore erases again whoever the live erasures ledger says was forgotten.

The users are written through the DAL with field encryption on; one of them is
forgotten after the backup. The restored copy gets her erasure before it takes the
target's name (in place over the live database, and into a new name beside it): her
rows and her data key are gone, the ciphertext the backup holds opens for nobody, and
everyone else reads as before. With no ledger left on the server the restore goes on
and says so; a ledger it cannot read stops it with the target untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb.backup import restore, snapshot, swap
from donnadb.backup.errors import BackupError
from donnadb.crypto.errors import DecryptError
from donnadb.dal import PostgresDataAccess
from donnadb.ops import users
from tests.backup.conftest import table_checksums
from tests.security.test_field_encryption import Person
from tests.support import superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))
#: A user's rows in every table that holds them (their data key is in the users row).
LEFT_SQL = """
SELECT (SELECT count(*) FROM users WHERE id = '{id}')
     + (SELECT count(*) FROM user_memory WHERE user_id = '{id}')
     + (SELECT count(*) FROM chat_sessions WHERE user_id = '{id}')
"""


@pytest.fixture
def forgotten(sealed_settings, bs, scratch_db):
    """(backup, alice, bob, alice's sealed e-mail): both written through the DAL with
    encryption on, backed up, then alice forgotten in the live database."""
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        alice, bob = Person(dal, "alice"), Person(dal, "bob")
    sealed_email = superuser_psql("SELECT encode(email_sealed, 'hex') FROM users "
                                  f"WHERE id = '{alice.id}'", scratch_db)
    backup = snapshot.create_backup(bs, dbname=scratch_db)
    assert users.forget_user(sealed_settings, alice.id, dbname=scratch_db)["data_key"] == 1
    return backup, alice, bob, sealed_email


def assert_erased_again(sealed_settings, dbname: str, alice: Person, bob: Person,
                        sealed_email: str) -> None:
    assert superuser_psql(LEFT_SQL.format(id=alice.id), dbname) == "0"
    assert superuser_psql(f"SELECT count(*) FROM erasures WHERE user_id = '{alice.id}'",
                          dbname) == "1"
    # Her ciphertext, as the backup holds it, put back: no data key opens it.
    superuser_psql(f"INSERT INTO users (id, clerk_id, email_sealed) VALUES ('{alice.id}', "
                   f"'back', decode('{sealed_email}', 'hex'))", dbname)
    with PostgresDataAccess(sealed_settings, dbname=dbname) as dal:
        with pytest.raises(DecryptError, match="no data key: it was erased"):
            dal.get_user_by_id(alice.id)
        assert bob.readable(dal)


def donnactl(bs, tmp_path, live: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BACKUP_REPO_DIR=str(bs.backup_repo_dir), DB_NAME=live,
               BACKUP_S3_BUCKET="", BACKUP_JOBS="1",
               BACKUP_SIGNING_KEY_FILE=str(bs.backup_signing_key_file),
               OPS_LOG_FILE=str(tmp_path / "ops.jsonl"), COLUMNS="250")
    return subprocess.run([DONNACTL, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd="/")


def test_a_restore_over_the_live_database_erases_again_before_the_swap(
        sealed_settings, bs, scratch_db, forgotten, tmp_path):
    backup, alice, bob, sealed_email = forgotten
    assert superuser_psql(LEFT_SQL.format(id=alice.id), scratch_db) == "0"
    args = ["backup", "restore", backup.backup_id, "--target-db", scratch_db, "--force"]

    plan = donnactl(bs, tmp_path, scratch_db, *args, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["erasures"] == {
        "ledger_from": [scratch_db], "ledger_entries": 1, "erased_again": 1, "note": None,
        "warnings": []}
    screen = donnactl(bs, tmp_path, scratch_db, *args, "--dry-run")
    assert f"would erase again 1 users erased since the backup (the erasures ledger of " \
           f"{scratch_db}: 1 entries)" in screen.stdout

    done = donnactl(bs, tmp_path, scratch_db, *args, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["erasures"] == {"ledger_from": [scratch_db], "ledger_entries": 1,
                                  "erased_again": 1, "note": None, "warnings": []}
    assert result["kept_as"].startswith(f"{scratch_db}{swap.KEPT_TAG}")
    assert_erased_again(sealed_settings, scratch_db, alice, bob, sealed_email)
    # Erased in the copy, under its temporary name: never visible under the live one.
    [line] = [json.loads(x) for x in (tmp_path / "ops.jsonl").read_text().splitlines()
              if "erasures applied again" in x]
    audit = line["context"]["audit"]
    assert audit["database"] == scratch_db and audit["erased_again"] == 1
    assert audit["restored_copy"].startswith(f"{scratch_db}{swap.TEMP_TAG}")
    assert alice.email not in (tmp_path / "ops.jsonl").read_text()


def test_a_restore_into_a_new_name_erases_again_while_the_source_exists(
        sealed_settings, bs, scratch_db, forgotten, target_name, tmp_path):
    backup, alice, bob, sealed_email = forgotten

    done = donnactl(bs, tmp_path, scratch_db, "backup", "restore", backup.backup_id,
                    "--target-db", target_name)
    assert done.returncode == 0, done.stderr
    assert f"erased again: 1 (the erasures ledger of {scratch_db}: 1 entries)" in done.stdout
    # Nothing more to do by hand: the command the runbook names finds nothing left.
    assert users.reapply_erasures(sealed_settings, ledger_db=scratch_db,
                                  dbname=target_name)["erased_again"] == []
    assert_erased_again(sealed_settings, target_name, alice, bob, sealed_email)


def test_with_no_ledger_left_the_restore_goes_on_and_says_so(
        bs, scratch_db, forgotten, target_name, tmp_path):
    backup, alice, _, _ = forgotten
    superuser_psql(f'DROP DATABASE "{scratch_db}" WITH (FORCE)')  # the host was lost

    done = donnactl(bs, tmp_path, "donna_not_this_one", "backup", "restore",
                    backup.backup_id, "--target-db", target_name)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "the erasures ledger since the backup cannot be read" in said
    assert f"run `donnactl keys reapply-erasures --ledger-db <a copy of the ledger> " \
           f"--dbname {target_name}` when you have one" in said
    # Nobody could say she was erased: she is back until the ledger is applied.
    assert superuser_psql(f"SELECT count(*) FROM users WHERE id = '{alice.id}'",
                          target_name) == "1"
    assert '"restored without an erasures ledger"' in (tmp_path / "ops.jsonl").read_text()


def test_a_ledger_that_cannot_be_read_stops_the_restore_with_the_target_untouched(
        settings, bs, scratch_db, forgotten):
    backup, alice, _, _ = forgotten
    before = table_checksums(scratch_db)
    superuser_psql(f"REVOKE SELECT ON erasures FROM {settings.db_role_readonly}", scratch_db)

    with pytest.raises(BackupError, match=f"cannot read the erasures ledger of {scratch_db}"):
        restore.restore_backup(bs, backup, scratch_db, force=True)
    assert table_checksums(scratch_db) == before
    assert superuser_psql("SELECT count(*) FROM pg_database WHERE starts_with(datname, "
                          f"'{scratch_db}_')") == "0"
    assert superuser_psql(LEFT_SQL.format(id=alice.id), scratch_db) == "0"


def test_a_user_forgotten_while_the_restore_swaps_is_erased_in_the_restored_database(
        sealed_settings, bs, scratch_db, forgotten, monkeypatch):
    backup, alice, bob, _ = forgotten
    real_swap_in = swap.swap_in

    def forget_bob_then_swap(*args, **kwargs):
        # After the ledgers were read and the copy erased: the live database still serves.
        users.forget_user(sealed_settings, bob.id, dbname=scratch_db)
        return real_swap_in(*args, **kwargs)

    monkeypatch.setattr(swap, "swap_in", forget_bob_then_swap)
    result = restore.restore_backup(bs, backup, scratch_db, force=True)

    assert sorted(result.erasures.erased_again) == sorted([alice.id, bob.id])
    for person in (alice, bob):
        assert superuser_psql(LEFT_SQL.format(id=person.id), scratch_db) == "0"
    assert superuser_psql("SELECT count(*) FROM erasures", scratch_db) == "2"

"""Field encryption (CRYPTO_ENABLED) attacked for real: a database dump read without the
key file, sealed values moved between rows and fields, a wrong or loose key file, and a
backup from before an erasure restored."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from donnadb.backup import restore, snapshot
from donnadb.crypto import keyfile
from donnadb.crypto.errors import DecryptError, KeyFileError
from donnadb.dal import PostgresDataAccess
from donnadb.ops import users
from tests.support import superuser_psql


def _marker(what: str) -> str:
    return f"zq{what}{uuid.uuid4().hex[:12]}"


class Person:
    """A user written through the DAL with a marker in every personal field."""

    def __init__(self, dal: PostgresDataAccess, who: str) -> None:
        self.email = f"{_marker(who)}@example.org"
        self.name = _marker(who + "name")
        self.city = _marker(who + "city")
        self.theme = _marker(who + "theme")
        self.note = _marker(who + "note")
        self.said = _marker(who + "said")
        self.id = dal.create_user({"clerk_id": f"clerk_{who}_{uuid.uuid4().hex[:6]}",
                                   "email": self.email, "name": self.name,
                                   "profile": {"city": self.city},
                                   "preferences": {"theme": self.theme}})
        dal.set_user_memory(self.id, "context", "note", {"text": self.note})
        dal.set_user_memory(self.id, "context", "other", "x")
        chat = f"chat_{who}_{uuid.uuid4().hex[:6]}"
        dal.create_chat_session(chat, self.id)
        dal.add_message(chat, "user", f"I said {self.said}")

    @property
    def personal(self) -> list[str]:
        return [self.email, self.name, self.city, self.theme, self.note]

    def readable(self, dal: PostgresDataAccess) -> bool:
        user = dal.get_user_by_id(self.id)
        return (user["email"], user["name"], user["profile"], user["preferences"]) == (
            self.email, self.name, {"city": self.city}, {"theme": self.theme}) and \
            dal.get_user_memory(self.id, "context", "note") == {"note": {"text": self.note}}


@pytest.fixture
def people(sealed_settings, scratch_db):
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        yield Person(dal, "alice"), Person(dal, "bob")


def _plain_dump(dbname: str) -> str:
    """pg_dump's plain SQL of the database: what a stolen backup shows, no key file."""
    return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dump", "-d", dbname],
                          capture_output=True, text=True, check=True, cwd="/").stdout


def test_a_dump_read_without_the_key_file_holds_no_personal_plaintext(
        clear_settings, scratch_db, people):
    dump = _plain_dump(scratch_db)
    rows = superuser_psql("SELECT json_agg(t)::text FROM (SELECT * FROM users) t "
                          "UNION ALL SELECT json_agg(t)::text FROM user_memory t", scratch_db)
    for person in people:
        for value in person.personal:
            assert value not in dump and value not in rows
        # The control: message text is not encrypted (it stays searchable), and the same
        # grep finds it.
        assert person.said in dump
    # ... and the lookup column is there, without the e-mail.
    assert superuser_psql("SELECT count(*) FROM users WHERE email_hmac IS NOT NULL "
                          "AND email IS NULL AND name IS NULL", scratch_db) == "2"
    # Without encryption the same writes are in the dump in clear (the test's control).
    with PostgresDataAccess(clear_settings, dbname=scratch_db) as plain:
        carol = plain.create_user({"clerk_id": "clerk_carol", "email": "carol@x.org",
                                   "name": _marker("carol")})
        plain.set_user_memory(carol, "context", "note", _marker("carolnote"))
    dump = _plain_dump(scratch_db)
    assert "carol@x.org" in dump


#: 1 while the user has a data key (kept in the users row), else 0.
KEYS_OF = "SELECT count(*) FROM users WHERE id = '{id}' AND wrapped_key IS NOT NULL"
SWAPS = {
    "another user's e-mail": (
        "UPDATE users AS u SET email_sealed = o.email_sealed FROM users AS o "
        "WHERE u.id = %(a)s AND o.id = %(b)s", "users.email of user {a}"),
    "the user's name as their e-mail": (
        "UPDATE users SET email_sealed = name_sealed WHERE id = %(a)s", "users.email of user {a}"),
    "another memory key's value": (
        "UPDATE user_memory AS m SET value = o.value FROM user_memory AS o "
        "WHERE m.user_id = %(a)s AND m.key = 'other' AND o.user_id = %(a)s AND o.key = 'note'",
        "the context value 'other' of user {a}"),
    "another user's memory value": (
        "UPDATE user_memory AS m SET value = o.value FROM user_memory AS o "
        "WHERE m.user_id = %(a)s AND o.user_id = %(b)s AND m.key = 'note' AND o.key = 'note'",
        "the context value 'note' of user {a}"),
    "another user's profile value": (
        "UPDATE users AS u SET profile = o.profile FROM users AS o "
        "WHERE u.id = %(a)s AND o.id = %(b)s", "the profile value 'city' of user {a}"),
    "another user's wrapped data key": (
        "UPDATE users AS u SET wrapped_key = o.wrapped_key FROM users AS o "
        "WHERE u.id = %(a)s AND o.id = %(b)s", "the data key of user {a}"),
    "a plain value in a sealed column": (
        "UPDATE user_memory SET value = '\"planted\"' WHERE user_id = %(a)s AND key = 'note'",
        "the context value 'note' of user {a} is not sealed"),
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_value_moved_between_rows_or_fields_is_refused(
        sealed_settings, scratch_db, people, connect_as, swap):
    alice, bob = people
    statement, names = SWAPS[swap]
    with connect_as("app", dbname=scratch_db, autocommit=True) as conn:
        assert conn.execute(statement, {"a": alice.id, "b": bob.id}).rowcount == 1
    with PostgresDataAccess(sealed_settings, dbname=scratch_db) as dal:
        with pytest.raises(DecryptError) as caught:
            dal.get_user_by_id(alice.id)
            dal.get_user_memory(alice.id, "context")
        message = str(caught.value)
        assert names.format(a=alice.id) in message and "\n" not in message
        # Never the value, clear or sealed.
        assert not any(v in message for v in alice.personal + bob.personal)
        assert "$dnc1$" not in message
        assert bob.readable(dal)


def test_a_wrong_or_loose_key_file_is_one_clear_line(sealed_settings, scratch_db, people,
                                                     tmp_path):
    alice, _ = people
    other = tmp_path / "other.key"
    keyfile.generate(other)
    wrong = sealed_settings.model_copy(update={"crypto_kek_file": other})
    with PostgresDataAccess(wrong, dbname=scratch_db) as dal, \
            pytest.raises(KeyFileError) as caught:
        dal.get_user_by_id(alice.id)
    message = str(caught.value)
    current = keyfile.load(sealed_settings.crypto_kek_file).current.kek_id
    assert f"wrapped by KEK {current}, which the key file does not hold" in message
    assert "\n" not in message and caught.value.exit_code == 3

    os.chmod(other, 0o640)
    with pytest.raises(KeyFileError, match=r"open to group or others \(mode 0640\)"):
        PostgresDataAccess(wrong, dbname=scratch_db)
    missing = sealed_settings.model_copy(update={"crypto_kek_file": tmp_path / "none.key"})
    with pytest.raises(KeyFileError, match="cannot open the key file"):
        PostgresDataAccess(missing, dbname=scratch_db)


def test_a_backup_from_before_an_erasure_does_not_bring_the_user_back(
        settings, sealed_settings, bs, scratch_db, people, target_name):
    alice, bob = people
    sealed_email = superuser_psql(
        f"SELECT encode(email_sealed, 'hex') FROM users WHERE id = '{alice.id}'", scratch_db)
    backup = snapshot.create_backup(bs, dbname=scratch_db)
    erased = users.forget_user(sealed_settings, alice.id, dbname=scratch_db)
    assert erased["data_key"] == 1 and erased["memory"] == 4
    assert superuser_psql(KEYS_OF.format(id=alice.id), scratch_db) == "0"
    assert superuser_psql("SELECT user_id FROM erasures", scratch_db) == alice.id

    # The backup holds Alice's wrapped key: without the ledger she comes back ...
    restore.restore_backup(bs, backup, target_name, apply_erasures=False)
    assert superuser_psql(KEYS_OF.format(id=alice.id), target_name) == "1"
    # ... and the ledger of the database she was forgotten in erases her again.
    result = users.reapply_erasures(settings, ledger_db=scratch_db, dbname=target_name)
    assert result == {"ledger": 1, "erased_again": [alice.id]}
    assert users.reapply_erasures(settings, ledger_db=scratch_db,
                                  dbname=target_name)["erased_again"] == []
    assert superuser_psql(KEYS_OF.format(id=alice.id), target_name) == "0"
    record = superuser_psql("SELECT context::text FROM system_logs WHERE message = "
                            "'user erased again (restored backup)'", target_name)
    assert json.loads(record)["user_id"] == alice.id and alice.email not in record

    # Her ciphertext, kept from the old backup and put back, opens for nobody: her data
    # key is gone, and no other key opens it.
    superuser_psql(f"INSERT INTO users (id, clerk_id, email_sealed) VALUES ('{alice.id}', "
                   f"'back', decode('{sealed_email}', 'hex'))", target_name)
    with PostgresDataAccess(sealed_settings, dbname=target_name) as dal:
        with pytest.raises(DecryptError, match="no data key: it was erased"):
            dal.get_user_by_id(alice.id)
        bob_key = superuser_psql(f"SELECT kek_id || ' ' || encode(wrapped_key, 'hex') FROM "
                                 f"users WHERE id = '{bob.id}'", target_name)
        superuser_psql(f"UPDATE users SET kek_id = '{bob_key.split()[0]}', wrapped_key = "
                       f"decode('{bob_key.split()[1]}', 'hex'), key_created_at = now() "
                       f"WHERE id = '{alice.id}'", target_name)
        with pytest.raises(DecryptError, match=f"the data key of user {alice.id}"):
            dal.get_user_by_id(alice.id)
        # Everyone else restored reads as before.
        assert bob.readable(dal)

"""Every store refuses names that could not be a file name (the file store and the export
turn chat ids, clerk ids and e-mails into paths) and metadata keys starting with
``_donnadb_`` (donnadb's own bookkeeping: the export would take a caller's
``_donnadb_legacy.source`` for a folder, the readers a ``_donnadb_content_escaped`` for
escaped text)."""

from __future__ import annotations

import errno
import os

import pytest

from donnadb.dal import FileDataAccess
from donnadb.dal.fileio import UnsafeNameError, check_file_name, create_under
from donnadb.errors import DataError

HOSTILE_NAMES = ["../../escaped", "/opt/donnadb-dal-absolute", "..", ".", "", "a\x00b",
                 "c" * 251, "é" * 126]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_chat_ids_are_refused(dal, name, tmp_path):
    with pytest.raises(DataError):
        dal.create_chat_session(name, None, {})
    if "\x00" not in name:  # PostgreSQL cannot even be asked for it
        assert dal.get_chat_session(name) is None
    assert not (tmp_path / "escaped.json").exists()
    assert not os.path.exists("/opt/donnadb-dal-absolute.json")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_clerk_ids_and_emails_are_refused(dal, name):
    with pytest.raises(DataError):
        dal.create_user({"clerk_id": name, "email": "x@example.org"})
    if name:  # an empty e-mail names nothing
        with pytest.raises(DataError, match="email"):
            dal.create_user({"clerk_id": "user_ok", "email": name})
        assert dal.get_user_by_clerk_id("user_ok") is None
        user_id = dal.create_user({"clerk_id": "user_ok2", "email": "ok@example.org"})
        with pytest.raises(DataError, match="email"):
            dal.update_user(user_id, {"email": name})
        assert dal.get_user_by_id(user_id)["email"] == "ok@example.org"


def _reserved_writes(dal):
    user_id = dal.create_user({"clerk_id": "user_r"})
    dal.create_chat_session("c_r", user_id, {})
    return {
        "chat metadata": lambda key: dal.create_chat_session("c_new", None, {key: 1}),
        "chat update": lambda key: dal.update_chat_session("c_r", {"metadata": {key: 1}}),
        "message metadata": lambda key: dal.add_message("c_r", "user", "\\u0041", {key: True}),
        "log context": lambda key: dal.write_log("info", "m", {key: {"source": "x"}}),
        "profile": lambda key: dal.create_user({"clerk_id": "user_p", "profile": {key: 1}}),
        "preferences": lambda key: dal.update_user(user_id, {"preferences": {key: 1}}),
        "memory key": lambda key: dal.set_user_memory(user_id, "profile", key, 1),
    }


@pytest.mark.parametrize("key", ["_donnadb_legacy", "_donnadb_content_escaped",
                                 "_donnadb_erasure", "_donnadb_anything"])
def test_reserved_keys_are_refused_everywhere(dal, key):
    for what, write in _reserved_writes(dal).items():
        with pytest.raises(DataError, match=f"key '{key}' is reserved"):
            write(key)
        assert dal.get_chat_session("c_new") is None, what
    assert dal.get_message_count("c_r") == 0
    assert dal.get_chat_session("c_r")["metadata"] == {}
    user = dal.get_user_by_clerk_id("user_r")
    assert user["profile"] == {} and user["preferences"] == {}


def test_a_message_cannot_pretend_to_be_escaped(dal):
    """The attack the reservation stops: content read back changed by a caller's marker."""
    dal.create_chat_session("c_m", None, {})
    with pytest.raises(DataError, match="reserved"):
        dal.add_message("c_m", "user", "\\u0041\\u0000", {"_donnadb_content_escaped": True})
    dal.add_message("c_m", "user", "\\u0041", {"donnadb_content_escaped": True})
    assert dal.get_chat_history("c_m")[0]["content"] == "\\u0041"


def test_copy_paths_of_the_postgres_store_refuse_them_too(settings, pg_db):
    from tests.dal.conftest import make_pg

    pg = make_pg(settings, pg_db)
    try:
        session = {"chat_id": "c_copy", "metadata": {"_donnadb_legacy": {"source": "x"}}}
        with pytest.raises(DataError, match="reserved"):
            pg.upsert_chat_session(session, None)
        with pytest.raises(DataError, match="cannot be a file name"):
            pg.upsert_chat_session({"chat_id": "../c", "metadata": {}}, None)
        with pytest.raises(DataError, match="cannot be a file name"):
            pg.ensure_user("../../u")
        with pytest.raises(DataError, match="cannot be a file name"):
            pg.upsert_user({"clerk_id": "a/b"}, [])
        with pytest.raises(DataError, match="reserved"):
            pg.upsert_user({"clerk_id": "u_ok", "profile": {"_donnadb_x": 1}}, [])
        pg.create_chat_session("c_ok", None)
        message = {"id": "00000000-0000-4000-8000-000000000001", "role": "user",
                   "content": "x", "metadata": {"_donnadb_content_escaped": True},
                   "sequence_number": 1}
        with pytest.raises(DataError, match="reserved"):
            pg.insert_messages("c_ok", [message])
        assert pg.get_chat_session("c_copy") is None and pg.get_message_count("c_ok") == 0
    finally:
        pg.close()


def test_the_shared_validator():
    assert check_file_name("c_01HV4K9M2ZQ", "chat_id", ".json") == "c_01HV4K9M2ZQ"
    assert check_file_name("early@example.com", "email") == "early@example.com"
    assert check_file_name("x" * 250, "chat_id", ".json")
    for bad in ("a/b", "..", ".", "", "a\x00", None, 5, "x" * 251):
        with pytest.raises(UnsafeNameError, match="chat_id .* cannot be a file name"):
            check_file_name(bad, "chat_id", ".json")


def test_nothing_is_created_through_a_planted_symlink(tmp_path):
    """A 0777 legacy folder lets anyone plant links: neither a lock file nor a new file
    is ever created through one."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dal = FileDataAccess(tmp_path / "data")
    (tmp_path / "data" / ".locks" / "chat_sessions" / "c_link.lock").symlink_to(
        outside / "created-through-lock")
    with pytest.raises(OSError) as err:
        dal.create_chat_session("c_link", None, {})
    assert err.value.errno == errno.ELOOP
    assert os.listdir(outside) == []
    root = os.open(tmp_path / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "data" / "linked").symlink_to(outside)
        with pytest.raises(OSError) as err:
            create_under(root, ("linked", "x.json"))
        assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)
        (tmp_path / "data" / "f.json").symlink_to(outside / "f.json")
        with pytest.raises(OSError):
            create_under(root, ("f.json",))
    finally:
        os.close(root)
    assert os.listdir(outside) == []
    dal.close()

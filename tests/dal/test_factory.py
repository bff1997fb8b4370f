"""create_data_access(): DATA_STORAGE_TYPE and MIGRATION_* pick the store."""

from __future__ import annotations

import pytest

from donnadb.config import Settings, load_settings
from donnadb.dal import (
    DualWriteDataAccess,
    FileDataAccess,
    MixedDataAccess,
    PostgresDataAccess,
    create_data_access,
    entity_phases,
)
from donnadb.errors import ConfigError


def build(settings, tmp_path, **update):
    return create_data_access(settings.model_copy(update={"data_dir": tmp_path, **update}))


def test_file_is_the_default(settings, tmp_path):
    dal = build(settings, tmp_path, data_storage_type="file")
    assert isinstance(dal, FileDataAccess) and dal.data_dir == tmp_path


def test_postgresql(settings, tmp_path, pg_db):
    dal = build(settings, tmp_path, data_storage_type="postgresql", db_name=pg_db)
    try:
        assert isinstance(dal, PostgresDataAccess)
        assert dal.health_check()["database"] == pg_db
    finally:
        dal.close()


@pytest.mark.parametrize(("storage", "flag", "primary"), [
    ("dual", False, "file"), ("dual", False, "postgresql"), ("file", True, "file"),
    ("postgresql", True, "postgresql"),
])
def test_dual_write(settings, tmp_path, pg_db, storage, flag, primary):
    dal = build(settings, tmp_path, data_storage_type=storage, db_name=pg_db,
                migration_enable_dual_write=flag, migration_primary_store=primary)
    try:
        assert isinstance(dal, DualWriteDataAccess)
        assert dal.primary == primary
        assert dal.queue.path == tmp_path / ".dualwrite" / "pending.jsonl"
        assert dal.health_check()["status"] == "ok"
    finally:
        dal.close()


def test_environment_selects_the_store(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_STORAGE_TYPE", "file")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "from-env"))
    dal = create_data_access(load_settings())
    assert isinstance(dal, FileDataAccess) and dal.data_dir == tmp_path / "from-env"


def test_an_unknown_storage_type_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DATA_STORAGE_TYPE", "mysql")
    with pytest.raises(ConfigError, match="DATA_STORAGE_TYPE.*'file', 'postgresql' or 'dual'"):
        load_settings()
    # Settings built without validation still cannot reach a store.
    unchecked = Settings.model_construct(data_storage_type="mysql")
    with pytest.raises(ConfigError, match="DATA_STORAGE_TYPE: 'mysql'; use one of file, "
                                          "postgresql, dual"):
        create_data_access(unchecked)


# ---------------------------------------------------------------- a store per entity
ENTITY_FIELDS = ("data_storage_users", "data_storage_memory", "data_storage_chats",
                 "data_storage_messages", "data_storage_logs")


def per_entity(*phases):
    return dict(zip(ENTITY_FIELDS, phases, strict=True))


@pytest.mark.parametrize(("update", "cls"), [
    # Every entity in one phase: today's classes, whatever DATA_STORAGE_TYPE says.
    ({"data_storage_type": "file", **per_entity(*["postgresql"] * 5)}, PostgresDataAccess),
    ({"data_storage_type": "postgresql", **per_entity(*["file"] * 5)}, FileDataAccess),
    ({"data_storage_type": "file", **per_entity(*["dual"] * 5)}, DualWriteDataAccess),
    ({"data_storage_type": "postgresql", "data_storage_logs": "postgresql"},
     PostgresDataAccess),
    ({"data_storage_type": "file", "migration_enable_dual_write": True,
      "data_storage_memory": "dual"}, DualWriteDataAccess),
])
def test_one_phase_for_all_gives_todays_store(settings, tmp_path, pg_db, update, cls):
    dal = build(settings, tmp_path, db_name=pg_db, **update)
    try:
        assert type(dal) is cls
    finally:
        dal.close()


def test_the_pilot_is_a_mixed_store(settings, tmp_path, pg_db):
    dal = build(settings, tmp_path, data_storage_type="file", data_storage_memory="dual",
                db_name=pg_db, migration_primary_store="postgresql")
    try:
        assert type(dal) is MixedDataAccess
        assert dal.primary == "postgresql"
        health = dal.health_check()
        assert (health["status"], health["store"]) == ("ok", "mixed")
        assert health["phases"] == {"users": "file", "memory": "dual", "chats": "file",
                                    "messages": "file", "logs": "file"}
    finally:
        dal.close()


def test_unset_entities_follow_the_dual_write_flag(settings, tmp_path, pg_db):
    dal = build(settings, tmp_path, data_storage_type="file", migration_enable_dual_write=True,
                data_storage_logs="file", db_name=pg_db)
    try:
        assert type(dal) is MixedDataAccess
        assert dal.phases == {"users": "dual", "memory": "dual", "chats": "dual",
                              "messages": "dual", "logs": "file"}
    finally:
        dal.close()


@pytest.mark.parametrize(("update", "message"), [
    ({"data_storage_memory": "postgresql"},
     "DATA_STORAGE_USERS=file with DATA_STORAGE_MEMORY=postgresql"),
    ({"data_storage_type": "dual", "data_storage_users": "postgresql"},
     "DATA_STORAGE_USERS=postgresql with DATA_STORAGE_MEMORY=dual"),
    ({"data_storage_chats": "postgresql", "data_storage_messages": "postgresql"},
     "DATA_STORAGE_CHATS=postgresql with DATA_STORAGE_USERS=file"),
    ({"data_storage_type": "postgresql", "data_storage_chats": "dual",
      "data_storage_messages": "dual"},
     "DATA_STORAGE_USERS=postgresql with DATA_STORAGE_CHATS=dual"),
    ({"data_storage_messages": "dual"},
     "DATA_STORAGE_MESSAGES=dual with DATA_STORAGE_CHATS=file"),
    ({"data_storage_type": "dual", "data_storage_messages": "postgresql"},
     "DATA_STORAGE_MESSAGES=postgresql with DATA_STORAGE_CHATS=dual"),
    ({"data_storage_type": "dual", "data_storage_messages": "file",
      "migration_primary_store": "postgresql"},
     "DATA_STORAGE_CHATS=dual with DATA_STORAGE_MESSAGES=file"),
])
def test_inconsistent_phases_are_one_clear_error(settings, tmp_path, update, message):
    # A closed port: the combination is refused before any connection is tried.
    with pytest.raises(ConfigError, match=message) as exc:
        build(settings, tmp_path, db_port=1, **update)
    assert "\n" not in str(exc.value)


def test_entity_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_STORAGE_TYPE", "file")
    monkeypatch.setenv("DATA_STORAGE_MEMORY", "dual")
    monkeypatch.setenv("DATA_STORAGE_CHATS", "")  # empty: follows DATA_STORAGE_TYPE
    s = load_settings()
    assert (s.data_storage_memory, s.data_storage_chats) == ("dual", None)
    assert entity_phases(s)["memory"] == "dual" and entity_phases(s)["chats"] == "file"
    monkeypatch.setenv("DATA_STORAGE_MESSAGES", "mysql")
    with pytest.raises(ConfigError, match="DATA_STORAGE_MESSAGES.*'file', 'postgresql' or "
                                          "'dual'"):
        load_settings()
    unchecked = Settings.model_construct(data_storage_type="file",
                                         data_storage_logs="mysql")
    with pytest.raises(ConfigError, match="DATA_STORAGE_LOGS: 'mysql'"):
        create_data_access(unchecked)

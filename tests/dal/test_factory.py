"""create_data_access(): DATA_STORAGE_TYPE and MIGRATION_* pick the store."""

from __future__ import annotations

import pytest

from donnadb.config import Settings, load_settings
from donnadb.dal import (
    DualWriteDataAccess,
    FileDataAccess,
    PostgresDataAccess,
    create_data_access,
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

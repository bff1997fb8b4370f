"""The settings object: precedence and clear errors."""

from __future__ import annotations

import pytest

from donnadb.config import load_settings
from donnadb.errors import ConfigError


def test_environment_beats_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DB_NAME=from_dotenv\nDB_PORT=6000\n")
    monkeypatch.setenv("DB_NAME", "from_env")
    s = load_settings()
    assert s.db_name == "from_env"
    assert s.db_port == 6000


def test_flag_beats_environment(monkeypatch):
    monkeypatch.setenv("DB_NAME", "from_env")
    assert load_settings(db_name="from_flag").db_name == "from_flag"


def test_unknown_storage_type_names_the_variable(monkeypatch):
    monkeypatch.setenv("DATA_STORAGE_TYPE", "mongodb")
    with pytest.raises(ConfigError, match="DATA_STORAGE_TYPE"):
        load_settings()


def test_unknown_role_kind():
    with pytest.raises(ConfigError, match="unknown role kind"):
        load_settings().role("superuser")

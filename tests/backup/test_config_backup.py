"""Backup settings live in the one Settings object (donnadb/config.py)."""

from __future__ import annotations

import pytest

from donnadb import config
from donnadb.config import BACKUP_ENV_FILE, HOST_ENV_FILE, Settings, load_settings
from donnadb.errors import ConfigError
from donnadb.ops import health
from donnadb.ops.checks import Severity


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("BACKUP_REPO_DIR", "BACKUP_JOBS", "BACKUP_MAX_AGE_HOURS", "DB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_backup_env_is_read_after_the_host_file_and_before_dotenv(clean_env, monkeypatch):
    assert list(Settings.model_config["env_file"]) == [HOST_ENV_FILE, BACKUP_ENV_FILE]
    host, backup = clean_env / "donnadb.env", clean_env / "backup.env"
    host.write_text("DB_NAME=from_host\nBACKUP_JOBS=4\n")
    backup.write_text("BACKUP_REPO_DIR=/srv/from_backup_env\nBACKUP_JOBS=3\n")
    monkeypatch.setattr(config, "HOST_ENV_FILE", host)
    monkeypatch.setattr(config, "BACKUP_ENV_FILE", backup)
    s = load_settings()
    assert (s.db_name, str(s.backup_repo_dir), s.backup_jobs) == (
        "from_host", "/srv/from_backup_env", 3)
    dotenv = clean_env / ".env"  # load_settings adds it last when it is safe to read
    dotenv.write_text("BACKUP_JOBS=1\n")
    dotenv.chmod(0o600)
    assert load_settings().backup_jobs == 1
    monkeypatch.setenv("BACKUP_JOBS", "5")
    assert load_settings().backup_jobs == 5


def test_flags_beat_environment_for_backup_settings(clean_env, monkeypatch):
    monkeypatch.setenv("BACKUP_REPO_DIR", "/srv/env")
    assert str(load_settings(backup_repo_dir="/srv/flag").backup_repo_dir) == "/srv/flag"
    assert str(load_settings(backup_repo_dir=None).backup_repo_dir) == "/srv/env"


def test_one_max_age_setting(clean_env, monkeypatch):
    monkeypatch.setenv("BACKUP_MAX_AGE_HOURS", "7")
    assert load_settings().backup_max_age_hours == 7
    assert "health_backup_max_age_hours" not in Settings.model_fields
    monkeypatch.setenv("BACKUP_MAX_AGE_HOURS", "0")
    with pytest.raises(ConfigError, match="BACKUP_MAX_AGE_HOURS"):
        load_settings()


def test_health_warns_at_the_age_backup_check_fails(settings):
    s = settings.model_copy(update={"backup_max_age_hours": 26.0,
                                    "health_backup_crit_age_hours": 50.0})
    report = {"age_hours": 27.0, "repository": "/r"}
    assert health._backup(report, s).severity == Severity.WARNING
    relaxed = s.model_copy(update={"backup_max_age_hours": 28.0})
    assert health._backup(report, relaxed).severity == Severity.OK
    assert health._backup({**report, "age_hours": 51.0}, s).severity == Severity.CRITICAL

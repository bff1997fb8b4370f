"""The settings object: precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

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


# Every path setting leads to files root or a privileged role reads, writes or runs.
PATH_SETTINGS = ["DATA_DIR", "DB_PASSFILE", "BACKUP_REPO_DIR", "BACKUP_PG_BIN_DIR",
                 "BACKUP_ENCRYPTION_KEY_FILE", "BACKUP_SIGNING_KEY_FILE", "SCHEMA_DIR",
                 "LOG_ARCHIVE_DIR", "OPS_LOG_FILE", "PGBACKREST_CONFIG", "PG_DATA_DIR",
                 "MIGRATION_RECONCILE_QUEUE", "PGBOUNCER_AUTH_FILE", "METRICS_TEXTFILE"]


@pytest.mark.parametrize("name", PATH_SETTINGS)
@pytest.mark.parametrize("value", ["relative/dir", "./data", "/var/backups/../../etc/cron.d",
                                   "/etc/donnadb/../../tmp/pgpass"])
def test_a_path_setting_must_be_absolute_without_dotdot(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(f"invalid setting {name}: ") and "\n" not in message
    assert "must be an absolute path without '..'" in message


def test_a_path_setting_from_dotenv_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("BACKUP_PG_BIN_DIR=bin\n")
    with pytest.raises(ConfigError, match="invalid setting BACKUP_PG_BIN_DIR"):
        load_settings()


def test_a_path_flag_with_nul_is_refused():
    with pytest.raises(ConfigError, match="invalid setting BACKUP_REPO_DIR: .*NUL"):
        load_settings(backup_repo_dir="/var/backups/do\x00nna")


def test_absolute_paths_and_the_defaults_pass(monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/srv/legacy/data")
    monkeypatch.setenv("BACKUP_REPO_DIR", "/var/backups/donna.d/x..y")  # '..' inside a name
    s = load_settings()
    assert str(s.data_dir) == "/srv/legacy/data"
    monkeypatch.delenv("DATA_DIR")
    assert load_settings().data_dir.is_absolute()


@pytest.mark.parametrize("name", ["DB_USER", "DB_ROLE_OWNER", "DB_ROLE_MIGRATOR", "DB_ROLE_APP",
                                  "DB_ROLE_READONLY", "DB_ROLE_BACKUP", "DB_ROLE_MONITOR"])
@pytest.mark.parametrize("value", ['donna_app"; DROP ROLE postgres; --', "Donna_App",
                                   "donna app", "1donna", "pg_monitor", "", "a" * 64])
def test_a_role_name_must_be_a_plain_identifier(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(f"invalid setting {name}: ")
    assert "is not a plain role name" in str(err.value)


def test_plain_role_names_pass(monkeypatch):
    monkeypatch.setenv("DB_ROLE_APP", "_app_2")
    assert load_settings().role("app") == "_app_2"


def test_the_cluster_s_paths_follow_pg_version_and_pg_cluster(monkeypatch):
    monkeypatch.setenv("PG_VERSION", "16")
    monkeypatch.setenv("PG_CLUSTER", "blue")
    s = load_settings()
    assert s.backup_pg_bin_dir == Path("/usr/lib/postgresql/16/bin")
    assert s.pg_data_dir == Path("/var/lib/postgresql/16/blue")
    monkeypatch.setenv("BACKUP_PG_BIN_DIR", "/opt/pg/bin")
    monkeypatch.setenv("PG_DATA_DIR", "/srv/pgdata")
    s = load_settings()
    assert (s.backup_pg_bin_dir, s.pg_data_dir) == (Path("/opt/pg/bin"), Path("/srv/pgdata"))


@pytest.mark.parametrize("name, value", [("PG_CLUSTER", "../etc"), ("PG_CLUSTER", "a/b"),
                                         ("PG_VERSION", "fifteen")])
def test_a_bad_cluster_is_one_clear_error(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"invalid setting {name}"):
        load_settings()

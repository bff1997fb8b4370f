"""group_data/all.py and its validation."""

from __future__ import annotations

import pytest

from donnadb import config
from donnadb.errors import ConfigError
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data


class _Data(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def test_group_data_defaults_match_the_runtime():
    s = load_deploy_settings(_Data(load_group_data()))
    defaults = config.Settings(_env_file=None)
    kinds = ("owner", "migrator", "app", "readonly", "backup", "monitor")
    assert [s.role(k) for k in kinds] == [getattr(defaults, f"db_role_{k}") for k in kinds]
    assert (s.db_host, s.pg_port, s.db_name, s.db_passfile) == (
        defaults.db_host, defaults.db_port, defaults.db_name, str(defaults.db_passfile))
    assert s.roles["migrator"].member_of == (s.role("owner"),)
    assert not s.roles["owner"].login


@pytest.mark.parametrize("key,value", [("db_role_app", "app; DROP TABLE x"),
                                       ("db_name", "Donna"), ("pg_cluster", "")])
def test_unsafe_names_are_refused(key, value):
    data = _Data(load_group_data())
    data[key] = value
    with pytest.raises(ConfigError, match=key):
        load_deploy_settings(data)


def test_missing_setting_names_it():
    data = _Data(load_group_data())
    del data["pg_port"]
    with pytest.raises(ConfigError, match="pg_port is missing"):
        load_deploy_settings(data)


def test_packages_follow_pg_version():
    data = _Data(load_group_data())
    assert load_deploy_settings(data).pg_packages == (
        "postgresql-15", "postgresql-15-partman", "postgresql-15-pgaudit")
    data["pg_version"] = 16
    s = load_deploy_settings(data)
    assert s.pg_packages == ("postgresql-16", "postgresql-16-partman", "postgresql-16-pgaudit")
    assert s.conf_dir == "/etc/postgresql/16/main"


@pytest.mark.parametrize("key,value,match", [
    ("pg_version", "15; rm -rf /", "pg_version"), ("pg_version", 9, "pg_version"),
    ("pg_packages", ["postgresql-15"], "pg_packages is not a setting")])
def test_version_and_packages_are_checked(key, value, match):
    data = _Data(load_group_data())
    data[key] = value
    with pytest.raises(ConfigError, match=match):
        load_deploy_settings(data)

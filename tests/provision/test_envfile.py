"""donnadb.env as the deploy renders it: the runtime follows group_data's cluster."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from donnadb.config import Settings
from donnadb.provision import envfile


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_the_env_file_carries_the_cluster_and_the_runtime_follows_it(deploy_settings,
                                                                     tmp_path):
    other = dataclasses.replace(deploy_settings, pg_version=16, pg_cluster="blue")
    text = envfile.render_env(other)
    lines = _env_lines(text)
    assert (lines["PG_VERSION"], lines["PG_CLUSTER"]) == ("16", "blue")
    env_file = tmp_path / "donnadb.env"
    env_file.write_text(text)
    runtime = Settings(_env_file=env_file)
    assert (runtime.pg_version, runtime.pg_cluster) == (16, "blue")
    assert runtime.backup_pg_bin_dir == Path("/usr/lib/postgresql/16/bin")
    assert runtime.pg_data_dir == Path("/var/lib/postgresql/16/blue")


def test_group_data_s_own_cluster_is_written(deploy_settings):
    lines = _env_lines(envfile.render_env(deploy_settings))
    assert lines["PG_VERSION"] == str(deploy_settings.pg_version)
    assert lines["PG_CLUSTER"] == deploy_settings.pg_cluster


class _Inventory:
    """What monitoring.prometheus_address reads of pyinfra's inventory."""

    def __init__(self, groups: dict[str, list]) -> None:
        self.groups = groups

    def get_group(self, name: str) -> list:
        return self.groups[name]


def test_the_env_file_names_the_prometheus_the_dashboard_reads(deploy_settings, tmp_path):
    from types import SimpleNamespace

    from donnadb.provision import monitoring
    from tests.provision.deployrun import load_group_data
    from tests.support import GroupData

    own = dataclasses.replace(deploy_settings, pg_listen_addresses="10.0.0.5,localhost")
    single = monitoring.prometheus_address(own, _Inventory({}))
    text = envfile.render_env(own, single)
    assert _env_lines(text)["PROMETHEUS_URL"] == "http://10.0.0.5:9090"
    env_file = tmp_path / "donnadb.env"
    env_file.write_text(text)
    assert Settings(_env_file=env_file).prometheus_url == "http://10.0.0.5:9090"
    # A monitor host's Prometheus serves every database host.
    monitor = SimpleNamespace(data=GroupData({**load_group_data(),
                                              "monitor_listen_address": "10.0.0.9"}))
    inventory = _Inventory({"monitor_servers": [monitor]})
    assert monitoring.prometheus_address(own, inventory) == "http://10.0.0.9:9090"
    # On loopback the runtime default is right: no line.
    loopback = dataclasses.replace(deploy_settings, pg_listen_addresses="localhost")
    assert "PROMETHEUS_URL" not in _env_lines(envfile.render_env(
        loopback, monitoring.prometheus_address(loopback, _Inventory({}))))


@pytest.mark.parametrize(("lines", "expected"), [
    ({}, False),
    ({"DATA_STORAGE_MEMORY": "dual"}, True),
    ({"DATA_STORAGE_TYPE": "dual"}, True),
    ({"DATA_STORAGE_TYPE": "postgresql", "DATA_STORAGE_MESSAGES": "dual"}, True),
    ({"MIGRATION_ENABLE_DUAL_WRITE": "True"}, True),
    # Every entity named: the global choice applies to none of them.
    ({"MIGRATION_ENABLE_DUAL_WRITE": "true", "DATA_STORAGE_USERS": "postgresql",
      "DATA_STORAGE_MEMORY": "postgresql", "DATA_STORAGE_CHATS": "postgresql",
      "DATA_STORAGE_MESSAGES": "postgresql", "DATA_STORAGE_LOGS": "file"}, False),
])
def test_the_mirror_stats_folder_is_set_where_some_entity_is_in_dual(deploy_settings,
                                                                     tmp_path, lines, expected):
    """Both settings files name MIGRATION_MIRROR_STATS_DIR exactly when the lines the deploy
    writes put an entity in dual-write, and the runtime reads it from there."""
    from donnadb.provision import bootstrap, dualstats, tls

    ours = dataclasses.replace(deploy_settings, donnadb_env_extra=lines)
    db_host_text = envfile.render_env(ours)
    app_text = bootstrap.render("app.env.j2", cfg=ours, db=ours, db_host="db1", port=6432,
                                read_port=None, passfile="/etc/donnadb/pgpass.d/donna-app",
                                tls=tls, dal_env={}, stats_dir=dualstats.stats_dir(ours))
    for text in (db_host_text, app_text):
        assert ("MIGRATION_MIRROR_STATS_DIR" in _env_lines(text)) is expected
        env_file = tmp_path / "donnadb.env"
        env_file.write_text(text)
        runtime = Settings(_env_file=env_file)
        assert runtime.migration_mirror_stats_dir == (
            Path(dualstats.STATS_DIR) if expected else None)

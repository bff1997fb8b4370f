"""The example inventory is the tested fleet's shape; host roles and budgets are checked
before anything runs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from donnadb.errors import ConfigError
from donnadb.provision import app, install
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data
from tests.support import GroupData

ROOT = Path(__file__).resolve().parents[2]


def groups_of(path: Path) -> dict[str, list[tuple[str, dict]]]:
    found = runpy.run_path(str(path))
    return {name: value for name, value in found.items()
            if name in (app.DB_GROUP, app.APP_GROUP, app.MONITOR_GROUP)}


def test_the_example_inventory_has_the_tested_fleets_groups_and_keys(tmp_path, monkeypatch):
    spec = tmp_path / "fleet.json"
    spec.write_text(json.dumps({"db": "127.0.0.11", "app": "127.0.0.12", "ssh_user": "deploy",
                                "ssh_key": "/k", "known_hosts": "/kh", "ca_dir": "/ca",
                                "memory_mb": 2048, "cpus": 1}))
    monkeypatch.setenv("DONNADB_FLEET_FILE", str(spec))
    tested = groups_of(ROOT / "tests" / "fleet" / "inventory.py")
    example = groups_of(ROOT / "inventory" / "production.py")
    assert set(tested) == set(example) == {app.DB_GROUP, app.APP_GROUP}
    for group in tested:
        assert [set(data) for _, data in tested[group]] == \
            [set(data) for _, data in example[group]], group
    # Every key is one the deploy knows (or pyinfra's SSH connector / sudo).
    known = set(load_group_data()) | {"_sudo"}
    for hosts in (*tested.values(), *example.values()):
        for _, data in hosts:
            assert {k for k in data if not k.startswith("ssh_")} <= known


def settings(**data):
    return load_deploy_settings(GroupData({**load_group_data(), **data}))


def fake_host(name: str, groups: list[str], inventory=None):
    return SimpleNamespace(name=name, groups=groups, inventory=inventory,
                           data=GroupData(load_group_data()))


def fake_inventory(db_names: list[str]):
    hosts = [fake_host(n, [app.DB_GROUP]) for n in db_names]
    return SimpleNamespace(groups={app.DB_GROUP: hosts} if hosts else {},
                           get_group=lambda name: hosts)


def test_a_host_in_no_role_group_is_refused():
    assert app.roles_of(fake_host("h", [app.DB_GROUP])) == (True, False)
    assert app.roles_of(fake_host("h", [app.APP_GROUP, "production"])) == (False, True)
    assert app.roles_of(fake_host("h", [app.MONITOR_GROUP])) == (False, False)
    with pytest.raises(ConfigError, match="none of db_servers, app_servers and monitor_servers"):
        app.roles_of(fake_host("h", ["production"]))


def test_an_app_host_finds_its_database_host_or_says_which_to_name():
    one = fake_inventory(["db1"])
    assert app.database_server(settings(), fake_host("a", [], one)).name == "db1"
    two = fake_inventory(["db1", "db2"])
    with pytest.raises(ConfigError, match="set app_db_server to one of"):
        app.database_server(settings(), fake_host("a", [], two))
    assert app.database_server(settings(app_db_server="db2"), fake_host("a", [], two)).name \
        == "db2"
    with pytest.raises(ConfigError, match="not in the inventory's db_servers"):
        app.database_server(settings(app_db_server="db9"), fake_host("a", [], two))


def test_an_app_host_gets_the_application_users_and_lock_only():
    s = settings()
    assert app.app_users(s) == {"donna-app": ("app",)}
    consumers = {u: k for u, k in load_group_data()["db_consumers"].items() if k != ["app"]}
    with pytest.raises(ConfigError, match="no user holding the application role alone"):
        app.app_users(settings(db_consumers=consumers))
    assert install.app_lock(s) == "requirements/app.lock"
    assert install.app_lock(settings(app_extras=["loadtest"])) == \
        "requirements/app-loadtest.lock"
    for lock in ("app.lock", "app-loadtest.lock"):
        assert (ROOT / "requirements" / lock).is_file()
    with pytest.raises(ConfigError, match="app_extras"):
        settings(app_extras=["ops"])


def test_an_app_host_in_dual_write_gets_donnactl_for_its_metrics_job():
    dual = {"donnadb_env_extra": {"DATA_STORAGE_LOGS": "dual"}}
    assert install.app_host_lock(settings()) == "requirements/app.lock"
    assert install.app_host_lock(settings(**dual)) == install.HOST_LOCK
    # The load test's lock holds the [ops] packages already.
    assert install.app_host_lock(settings(app_extras=["loadtest"], **dual)) == \
        "requirements/app-loadtest.lock"


def test_the_tuning_budget_must_be_a_sane_number():
    assert settings(host_memory_mb=2048, host_cpus=1).host_memory_mb == 2048
    for bad in ({"host_memory_mb": 10}, {"host_cpus": 0}, {"host_cpus": "2"}):
        with pytest.raises(ConfigError, match="whole number"):
            settings(**bad)


def test_the_example_cluster_inventory_has_the_tested_clusters_groups_and_keys(tmp_path,
                                                                            monkeypatch):
    spec = tmp_path / "cluster.json"
    spec.write_text(json.dumps({
        "db": [["db1", "127.0.0.21"], ["db2", "127.0.0.22"], ["db3", "127.0.0.23"]],
        "app": ["app2", "127.0.0.24"], "ssh_user": "deploy", "ssh_key": "/k",
        "known_hosts": "/kh", "ca_dir": "/ca", "memory_mb": 2048, "cpus": 1,
        "s3": {"bucket": "b", "endpoint_url": "https://127.0.0.1:9000"}}))
    monkeypatch.setenv("DONNADB_CLUSTER_FILE", str(spec))
    tested = groups_of(ROOT / "tests" / "fleet" / "ha" / "inventory.py")
    example = groups_of(ROOT / "inventory" / "cluster.py")
    assert set(tested) == set(example) == {app.DB_GROUP, app.APP_GROUP, app.MONITOR_GROUP}
    for group in tested:
        assert [set(data) for _, data in tested[group]] == \
            [set(data) for _, data in example[group]], group
    known = set(load_group_data()) | {"_sudo", "app_address"}
    for hosts in (*tested.values(), *example.values()):
        for _, data in hosts:
            assert {k for k in data if not k.startswith("ssh_")} <= known
            assert data["ha"] is True
    assert len(example[app.DB_GROUP]) == 3

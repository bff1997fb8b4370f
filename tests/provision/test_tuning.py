"""postgresql.conf tuning: the group_data formulas, evaluated for this host, are live."""

from __future__ import annotations

import os
import subprocess

import pytest

from donnadb.provision.settings import FORMULAS
from tests.provision.deployrun import load_group_data
from tests.support import superuser_psql


def _host_memory_mb() -> int:
    # Same source and rounding as pyinfra's hardware.Memory fact (vmstat -s, KiB).
    out = subprocess.run(["vmstat", "-s"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LANG": "C"}).stdout
    kib = next(int(line.split()[0]) for line in out.splitlines() if "total memory" in line)
    return round(kib / 1024)


def _setting_mb(name: str) -> int:
    value, unit = superuser_psql(
        f"SELECT setting, unit FROM pg_settings WHERE name = '{name}'").split("|")
    factor = {"8kB": 8, "kB": 1, "MB": 1024}[unit]
    return int(value) * factor // 1024


@pytest.mark.deploy
@pytest.mark.parametrize("name", ["shared_buffers", "effective_cache_size", "work_mem",
                                  "maintenance_work_mem"])
def test_memory_settings_follow_the_formulas(deployed, name):
    data = load_group_data()
    formula = data[f"pg_{name}_mb"]
    expected = formula(_host_memory_mb(), os.cpu_count(), data["pg_max_connections"])
    assert _setting_mb(name) == expected


@pytest.mark.deploy
def test_other_settings_are_live(deployed):
    data = load_group_data()
    cpus = os.cpu_count()
    live = dict(row.split("|") for row in superuser_psql(
        "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', "
        "'shared_preload_libraries', 'password_encryption', 'log_min_duration_statement', "
        "'listen_addresses', 'max_parallel_workers_per_gather', 'max_wal_size', "
        "'checkpoint_completion_target', 'pg_partman_bgw.role', 'pg_partman_bgw.dbname')"
    ).splitlines())
    assert live["max_connections"] == str(data["pg_max_connections"])
    assert live["shared_preload_libraries"] == "pg_stat_statements,pg_partman_bgw,pgaudit"
    assert live["password_encryption"] == "scram-sha-256"
    assert live["log_min_duration_statement"] == str(data["pg_log_min_duration_statement_ms"])
    assert live["listen_addresses"] == data["pg_listen_addresses"]
    assert live["max_parallel_workers_per_gather"] == str(
        data["pg_max_parallel_workers_per_gather"](0, cpus, 0))
    assert live["max_wal_size"] == "4096"
    assert live["checkpoint_completion_target"] == "0.9"
    assert live["pg_partman_bgw.role"] == (data["pg_partman_bgw_role"] or data["db_role_migrator"])
    assert live["pg_partman_bgw.dbname"] == data["db_name"]
    # Nothing in the drop-in was rejected by the server.
    errors = superuser_psql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL")
    assert errors == "0"


@pytest.mark.parametrize("memory_mb,cpus", [(1024, 1), (4096, 2), (24105, 2), (262144, 64)])
def test_formulas_stay_in_sane_bounds(memory_mb, cpus):
    data = load_group_data()
    mc = data["pg_max_connections"]
    t = {name: data[name](memory_mb, cpus, mc) for name in FORMULAS}
    assert 0 < t["pg_shared_buffers_mb"] <= memory_mb // 4
    assert t["pg_shared_buffers_mb"] < t["pg_effective_cache_size_mb"] < memory_mb
    assert 4 <= t["pg_work_mem_mb"] <= 64
    # Even every connection sorting at once stays within the RAM shared_buffers leaves.
    assert t["pg_work_mem_mb"] * mc <= memory_mb - t["pg_shared_buffers_mb"] or \
        t["pg_work_mem_mb"] == 4
    assert 64 <= t["pg_maintenance_work_mem_mb"] <= 2048
    assert t["pg_max_parallel_workers_per_gather"] <= t["pg_max_parallel_workers"] \
        <= t["pg_max_worker_processes"]

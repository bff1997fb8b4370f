"""`donnactl cluster update` on this single host, for real: the deployed server goes from
the older minor version (15.18 from bookworm) to apt's candidate (15.20 from
bookworm-security), through apt-get and one restart, while its data stays.

The module first puts the host on the older version (packages and running server); the
update test, last, leaves it on the new one, running, for the tests after it. CI runs it
on its machine without systemd (pg_ctlcluster) and on the booted Debian 12 host
(systemctl restart postgresql@15-main), where it also shows that apt-get's maintainer
scripts did not restart the server themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from donnadb.ops.drillfault import ctl_command
from donnadb.ops.update import upstream
from tests.support import (
    apt_policy,
    create_scratch_database,
    drop_database,
    install_server_packages,
    older_server_version,
    one_line_error,
    superuser_psql,
)

# It downgrades and upgrades this host's PostgreSQL packages: only when asked (`make
# test` asks), never in a partial run such as `pytest tests/ops`.
pytestmark = [pytest.mark.minor_update,
              pytest.mark.skipif(os.environ.get("DONNADB_MINOR_UPDATE") != "1",
                                 reason="changes this host's PostgreSQL packages: set "
                                        "DONNADB_MINOR_UPDATE=1 (make test does)")]
SINGLE = {"PATRONI_CONFIG": ""}
START_SQL = "SELECT pg_postmaster_start_time()"


def _wait_running(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            superuser_psql("SELECT 1")
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _server_version() -> str:
    return upstream(superuser_psql("SHOW server_version"))


def _ensure_running(settings) -> None:
    """However a test ended, the shared server runs afterwards."""
    try:
        superuser_psql("SELECT 1")
    except subprocess.CalledProcessError:
        subprocess.run(ctl_command(settings.pg_version, settings.pg_cluster, "start"),
                       capture_output=True, check=False, cwd="/")
        _wait_running()


@pytest.fixture(scope="module")
def old_version(settings):
    """This host on the older version: packages installed, server restarted onto them."""
    old = older_server_version()
    if old is None:
        pytest.skip("apt offers no postgresql-15 older than its candidate to go back to")
    try:
        install_server_packages(old)
        if _server_version() != upstream(old):
            subprocess.run(ctl_command(settings.pg_version, settings.pg_cluster, "restart"),
                           capture_output=True, check=True, cwd="/", timeout=300)
            _wait_running()
        assert _server_version() == upstream(old)
        yield old
    finally:
        _ensure_running(settings)


@pytest.fixture(scope="module")
def rows(settings):
    """A database with rows that must survive the update."""
    name = create_scratch_database(settings, prefix="donna_update")
    superuser_psql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 5000) g",
                   dbname=name)
    yield name
    drop_database(name)


def test_dry_run_and_a_no_change_nothing(cli, old_version):
    started = superuser_psql(START_SQL)
    dry = cli("cluster", "update", "--dry-run", "--json", env=SINGLE)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["mode"] == "single"
    assert plan["running_version"] == upstream(old_version)
    server = next(p for p in plan["packages"] if p["name"] == "postgresql-15")
    assert server["installed"] == old_version and server["upgrade"] is True
    assert plan["steps"][0].startswith("apt-get install -y --only-upgrade")
    assert f"postgresql-15={server['candidate']}" in plan["steps"][0]
    assert "restart" in plan["steps"][-1]
    text = cli("cluster", "update", "--dry-run", env=SINGLE)
    assert text.returncode == 0 and "would run" in text.stdout
    no = cli("cluster", "update", env=SINGLE, input="n\n")
    assert no.returncode == 130, (no.stdout, no.stderr)
    assert apt_policy("postgresql-15")[0] == old_version
    assert superuser_psql(START_SQL) == started


def test_a_long_transaction_refuses_before_anything_changes(cli, old_version, connect_as):
    started = superuser_psql(START_SQL)
    held = connect_as("readonly")
    held.execute("SELECT 1")  # psycopg opened a transaction: it stays open
    pid = held.info.backend_pid
    time.sleep(1.5)
    run = cli("cluster", "update", "--yes", env={**SINGLE, "UPDATE_MAX_XACT_AGE_S": "1"})
    held.rollback()
    one_line_error(run, 14, "UPDATE_MAX_XACT_AGE_S=1", f"pid {pid}",
                    f"donnactl queries terminate {pid}")
    assert apt_policy("postgresql-15")[0] == old_version
    assert superuser_psql(START_SQL) == started


def test_update_moves_packages_and_server_with_one_short_outage(cli, old_version, rows):
    new = apt_policy("postgresql-15")[1]
    started = superuser_psql(START_SQL)
    run = cli("cluster", "update", "--yes", "--json", env=SINGLE, timeout=900)
    assert run.returncode == 0, (run.stdout, run.stderr)
    result = json.loads(run.stdout)
    assert result["before"]["packages"]["postgresql-15"] == old_version
    assert result["after"]["packages"]["postgresql-15"] == new
    assert result["after"]["packages"]["postgresql-client-15"] == new
    assert result["before"]["server_version"] == upstream(old_version)
    assert result["after"]["server_version"] == upstream(new) == _server_version()
    # Our restart, not the maintainer scripts' (which would have stopped it for the
    # whole unpack): the probe saw one short refusal, then the new server.
    assert result["restarted_by"] == "donnactl"
    outage = result["outage"]
    assert outage["refused_attempts"] >= 1
    assert 0 < outage["refused_seconds"] < 60
    assert superuser_psql(START_SQL) != started
    assert superuser_psql("SELECT count(*) FROM kept", dbname=rows) == "5000"
    audit = [json.loads(ln) for ln in cli.log_file.read_text().splitlines()]
    assert any(a.get("context", {}).get("command") == "cluster update"
               and a["context"].get("exit_code") == 0 for a in audit)

    started = superuser_psql(START_SQL)
    again = cli("cluster", "update", "--yes", "--json", env=SINGLE)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["nothing_to_do"] is True and second["steps"] == []
    assert second["running_version"] == upstream(new)
    text = cli("cluster", "update", env=SINGLE)
    assert text.returncode == 0 and "nothing to update" in text.stdout
    assert upstream(new) in text.stdout
    assert superuser_psql(START_SQL) == started

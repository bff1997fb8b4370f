"""`donnactl health` exit codes: the Nagios contract a monitor relies on."""

import json

import pytest

# Thresholds no healthy test database can trip, whatever else the suite is doing.
CALM = {
    "HEALTH_CONNECTIONS_WARN_PCT": "99", "HEALTH_CONNECTIONS_CRIT_PCT": "100",
    "HEALTH_CACHE_HIT_WARN_PCT": "0", "HEALTH_CACHE_HIT_CRIT_PCT": "0",
    "HEALTH_LONG_QUERY_WARN_SECONDS": "86400", "HEALTH_LONG_QUERY_CRIT_SECONDS": "86400",
    "HEALTH_LONG_XACT_WARN_SECONDS": "86400", "HEALTH_LONG_XACT_CRIT_SECONDS": "86400",
    "HEALTH_BACKUP_REQUIRED": "false", "BACKUP_MAX_AGE_HOURS": "1e9",
    "HEALTH_BACKUP_CRIT_AGE_HOURS": "1e9",
    "HEALTH_PARTITIONS_AHEAD_WARN": "0", "HEALTH_PARTITIONS_AHEAD_CRIT": "0",
    "HEALTH_BLOAT_WARN_PCT": "101", "HEALTH_BLOAT_CRIT_PCT": "101",
}


def test_ok_exits_0(cli):
    done = cli("health", env=CALM)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("DONNADB OK - ")


def test_warning_exits_1_and_names_the_check(cli):
    done = cli("health", env={**CALM, "HEALTH_CONNECTIONS_WARN_PCT": "0"})
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith("DONNADB WARNING - connections:")


def test_critical_exits_2(cli):
    env = {**CALM, "HEALTH_CONNECTIONS_WARN_PCT": "0", "HEALTH_CONNECTIONS_CRIT_PCT": "0"}
    done = cli("health", "--json", env=env)
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert doc["state"] == "CRITICAL"
    assert {c["name"]: c["severity"] for c in doc["checks"]}["connections"] == "CRITICAL"


def test_missing_partitions_ahead_is_critical(cli):
    done = cli("health", env={**CALM, "HEALTH_PARTITIONS_AHEAD_CRIT": "1000",
                              "HEALTH_PARTITIONS_AHEAD_WARN": "1000"})
    assert done.returncode == 2 and "partitions_ahead" in done.stdout.splitlines()[0]


def test_unknown_backup_is_a_warning_when_backups_are_required(cli, tmp_path):
    done = cli("health", env={**CALM, "HEALTH_BACKUP_REQUIRED": "true",
                              "BACKUP_REPO_DIR": str(tmp_path)})
    assert done.returncode == 1 and "backup_age: no successful backup" in done.stdout


def test_database_down_is_critical(cli):
    done = cli("health", env={**CALM, "DB_PORT": "1"})
    assert done.returncode == 2
    assert done.stdout.startswith("DONNADB CRITICAL - cannot connect")
    assert done.stdout.count("\n") == 1


@pytest.mark.parametrize("command", [("health",), ("status",)])
def test_wrong_password(cli, tmp_path, settings, command):
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{settings.db_role_readonly}:not-the-password\n")
    passfile.chmod(0o600)
    done = cli(*command, env={"DB_PASSFILE": str(passfile)})
    output = done.stdout if command == ("health",) else done.stderr
    assert done.returncode == (2 if command == ("health",) else 4)
    assert "password authentication failed" in output and "make deploy" in output


def test_bad_setting_exits_3(cli):
    done = cli("health", env={"HEALTH_CACHE_HIT_WARN_PCT": "lots"})
    assert done.returncode == 3
    assert "HEALTH_CACHE_HIT_WARN_PCT" in done.stderr

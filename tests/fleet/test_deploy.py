"""A fresh database host and application host, deployed over SSH as an operator with
sudo: the second run changes nothing, systemd runs the jobs, each host holds only what
its role needs."""

from __future__ import annotations

import json
import shlex
import textwrap

import paramiko
import pytest

from tests.fleet.conftest import Fleet


def test_the_second_deploy_changes_nothing_on_any_host(fleet: Fleet):
    assert fleet.second.totals["changed"] == 0, fleet.second.output[-4000:]
    assert fleet.second.changed_operations() == [], fleet.second.output[-4000:]
    # Both hosts did their own steps in the first run.
    assert "Application host | Install the application's code" in fleet.first.output
    assert "Install PgBouncer | Write /etc/pgbouncer/pgbouncer.ini" in fleet.first.output


def test_the_deploy_logs_in_as_the_operator_and_root_cannot_log_in(fleet: Fleet):
    code, who = fleet.ssh(fleet.db, "id -un; sudo -n id -un")
    assert (code, who.split()) == (0, ["deploy", "root"])
    with pytest.raises(paramiko.AuthenticationException):
        fleet.ssh(fleet.db, "true", user="root")


def test_the_database_host_passes_its_own_check(fleet: Fleet):
    done = fleet.db.run("donnactl db check --security --json", check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert json.loads(done.stdout)["ok"] is True


def test_postgresql_and_pgbouncer_listen_on_the_hosts_own_address_only(fleet: Fleet):
    # The hosts share this machine's network: only sockets of the host's own processes
    # (ss -p names them only when they are in the host's process namespace) count.
    listening = fleet.db.run("ss -Hltnp").stdout.split("\n")
    ports = {line.split()[3] for line in listening if "users:" in line}
    assert {"127.0.0.11:5432", "127.0.0.11:6432"} <= ports
    assert not [p for p in ports if p.endswith((":5432", ":6432")) and
                not p.startswith("127.0.0.11:")], ports
    # Monitoring too: Prometheus, Alertmanager and the exporters have no login.
    monitoring = {"127.0.0.11:9090", "127.0.0.11:9093", "127.0.0.11:9100", "127.0.0.11:9187"}
    assert monitoring <= ports
    assert not [p for p in ports if p.endswith((":9090", ":9093", ":9100", ":9094", ":9187"))
                and p not in monitoring], ports


def test_prometheus_scrapes_every_target_of_the_host(fleet: Fleet):
    """Its own, Alertmanager's, node_exporter's (which carries our textfile) and
    postgres_exporter's, which logs in as the monitor role over TLS (pg_up 1)."""
    probe = textwrap.dedent("""
        import json, time, urllib.request
        for _ in range(60):
            with urllib.request.urlopen("http://127.0.0.11:9090/api/v1/targets") as r:
                targets = json.load(r)["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            query = "http://127.0.0.11:9090/api/v1/query?query=pg_up"
            with urllib.request.urlopen(query) as r:
                pg_up = [s["value"][1] for s in json.load(r)["data"]["result"]]
            if len(health) == 4 and set(health.values()) == {"up"} and pg_up == ["1"]:
                break
            time.sleep(2)
        print(json.dumps({"targets": health, "pg_up": pg_up}))
    """)
    done = fleet.db.run(f"python3 -c {shlex.quote(probe)}", timeout=200)
    assert json.loads(done.stdout) == {
        "targets": {"prometheus": "up", "alertmanager": "up", "node": "up", "postgres": "up"},
        "pg_up": ["1"]}


def test_the_jobs_are_systemd_timers_and_a_backup_runs_under_systemd(fleet: Fleet):
    timers = fleet.db.run("systemctl list-timers --all --no-legend --plain").stdout
    for unit in ("donna-backup-snapshot.timer", "donna-ops-partitions.timer",
                 "donna-ops-metrics.timer"):
        assert unit in timers
        assert fleet.db.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    assert fleet.db.run("test ! -e /etc/cron.d/donna-backup", check=False).returncode == 0
    fleet.db.start_unit("donna-backup-snapshot.service")
    listed = json.loads(fleet.db.run("donnactl backup list --json").stdout)
    assert listed, "the snapshot job made no backup"


def test_point_in_time_recovery_is_on_and_its_jobs_run_under_systemd(fleet: Fleet):
    """pgBackRest by default: WAL archived, the physical backup job works in its
    sandbox, and the hourly check then sees the backup and archiving healthy."""
    assert fleet.db.run("sudo -u postgres psql -XAtc 'SHOW archive_mode'").stdout.strip() == "on"
    # The deploy took the first full backup: a fresh host recovers to a moment at once.
    info = json.loads(fleet.db.run("sudo -u postgres pgbackrest --stanza=donna info "
                                   "--output=json").stdout)
    assert [b["type"] for b in info[0]["backup"]][:1] == ["full"], info
    for job in ("physical-full", "physical-diff", "physical-verify"):
        unit = f"donna-backup-{job}.timer"
        assert fleet.db.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    for job in ("physical-full", "physical-verify"):
        fleet.db.start_unit(f"donna-backup-{job}.service")
    checked = fleet.db.run("donnactl backup check --json", check=False)
    report = json.loads(checked.stdout)
    assert report["engine"]["ok"], report["engine"]
    assert report["engine"]["repos"]["1"]["backups"] >= 1
    health = json.loads(fleet.db.run("donnactl health --json", check=False).stdout)
    checks = {c["name"]: c["severity"] for c in health["checks"]}
    assert checks["wal_archive"] == "OK" and checks["physical_backup_age"] == "OK", checks


def test_the_app_host_holds_the_application_credential_only(fleet: Fleet):
    app = fleet.app
    assert app.run("ls /etc/donnadb/pgpass.d").stdout.split() == ["donna-app"]
    assert app.run("test ! -e /etc/donnadb/pgpass", check=False).returncode == 0
    passfile = app.run("stat -c '%U %a' /etc/donnadb/pgpass.d/donna-app").stdout.split()
    assert passfile == ["donna-app", "600"]
    lines = app.run("cat /etc/donnadb/pgpass.d/donna-app").stdout.splitlines()
    assert [line.split(":")[3] for line in lines] == ["donna_app"]
    # No database server, no ops job but the metrics job of its dual-write figures
    # (test_app_metrics.py), no other role's settings.
    assert app.run("dpkg -s postgresql-15", check=False).returncode != 0
    timers = app.run("systemctl list-timers --all --no-legend --plain").stdout.split()
    assert [t for t in timers if t.startswith("donna-") and t.endswith(".timer")] == [
        "donna-ops-metrics.timer"]
    env = dict(line.split("=", 1) for line in app.run(
        "grep -v '^#' /etc/donnadb/donnadb.env").stdout.split("\n") if "=" in line)
    assert env["DB_HOST"] == fleet.db.address
    assert env["DB_PASSFILE"] == "/etc/donnadb/pgpass.d/donna-app"

import json
from datetime import UTC, datetime, timedelta

from donnadb.backup import storage_local
from donnadb.backup.storage_local import new_backup_id
from donnadb.ops import backups, status


def _bound(lo: str, hi: str) -> str:
    return f"FOR VALUES FROM ('{lo} 00:00:00+00') TO ('{hi} 00:00:00+00')"


def test_partition_coverage_counts_partitions_after_now():
    rows = [{"name": "d", "bound": "DEFAULT"},
            {"name": "p10", "bound": _bound("2026-10-01", "2026-11-01")},
            {"name": "p11", "bound": _bound("2026-11-01", "2026-12-01")},
            {"name": "p12", "bound": _bound("2026-12-01", "2027-01-01")}]
    cov = status.partition_coverage(rows, datetime(2026, 11, 25, tzinfo=UTC))
    assert cov["ahead"] == 1 and cov["current_covered"] and cov["has_default"]
    assert cov["covered_until"] == datetime(2027, 1, 1, tzinfo=UTC)
    late = status.partition_coverage(rows, datetime(2027, 2, 1, tzinfo=UTC))
    assert late["ahead"] == 0 and not late["current_covered"]


def test_collect_reads_every_figure_of_the_deployed_database(settings):
    report = status.collect(settings)
    assert report["server"]["version"].startswith("15")
    assert report["server"]["role"] == "primary"
    assert report["schema"]["applied"] >= 1 and report["schema"]["version"]
    assert report["connections"]["total"] >= 1
    assert report["connections"]["max"] > report["connections"]["total"]
    assert report["partitions"]["present"] and report["partitions"]["current_covered"]
    assert report["wraparound"]["xid_age"] > 0


def test_one_scrape_reads_the_backup_manifests_once(settings, monkeypatch, tmp_path):
    """The newest backup and the drills' "oldest backup" come from one listing."""
    listed = []
    real = storage_local.list_backups
    monkeypatch.setattr(storage_local, "list_backups",
                        lambda repo: listed.append(repo) or real(repo))
    report = status.collect(settings.model_copy(update={"backup_repo_dir": tmp_path}))
    assert listed == [tmp_path]
    assert report["backup"]["status"] == "unknown" and report["drill"]["kinds"] == {}


def test_status_json_and_screen(cli):
    done = cli("status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["server"]["database"] == "donna"
    assert {c["name"] for c in doc["checks"]} >= {"connections", "backup_age", "wraparound"}
    screen = cli("status")
    assert screen.returncode == 0
    for label in ("server", "connections", "cache hit", "last backup", "partitions", "xid age"):
        assert label in screen.stdout


def test_status_reports_database_down_in_one_line(cli):
    done = cli("status", env={"DB_PORT": "1"})
    assert done.returncode == 4
    assert done.stderr.count("\n") == 1 and "cannot connect" in done.stderr
    assert "pg_lsclusters" in done.stderr


def test_latest_backup_from_a_repository(tmp_path):
    assert backups.latest(repo=tmp_path)["status"] == "unknown"
    finished = datetime.now(UTC) - timedelta(hours=5)
    ids = {}
    for name, when, verify in (("old", finished - timedelta(days=2), None),
                               ("new", finished, None),
                               ("bad", finished + timedelta(hours=1), {"ok": False})):
        ids[name] = new_backup_id(when)
        d = tmp_path / ids[name]
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({
            "backup_id": ids[name], "database": "donna", "started_at": when.isoformat(),
            "finished_at": when.isoformat(), "server_version": "15", "schema_version": "0001",
            "database_size": 1, "row_counts": {}, "files": [], "tools": {},
            "compress_level": 1, "jobs": 1}))
        if verify is not None:
            (d / "verify.json").write_text(json.dumps(verify))
    latest = backups.latest(repo=tmp_path)
    assert latest["backup_id"] == ids["new"]  # the failed-verify one is newer but not good
    assert 4.9 < latest["age_hours"] < 5.1


def test_pgbouncer_unreachable_is_reported_not_fatal(cli):
    done = cli("status", "--json", env={"PGBOUNCER_PORT": "1"})
    assert done.returncode == 0, done.stderr
    bouncer = json.loads(done.stdout)["pgbouncer"]
    assert bouncer["configured"] is True and bouncer["pools"] == []
    assert "Connection refused" in bouncer["error"] or "connect" in bouncer["error"]
    assert "pgbouncer" in cli("status", env={"PGBOUNCER_PORT": "1"}).stdout


def test_status_svg_capture(cli, tmp_path):
    target = tmp_path / "status.svg"
    done = cli("status", "--svg", str(target))
    assert done.returncode == 0, done.stderr
    svg = target.read_text()
    assert svg.startswith("<svg") and "connections" in svg and "last&#160;backup" in svg


def test_pgbouncer_pools_of_the_deployed_pgbouncer(cli, settings):
    """The deploy runs PgBouncer on group_data's port with donna_readonly as a stats user."""
    import runpy
    from pathlib import Path

    group_data = runpy.run_path(str(Path(__file__).resolve().parents[2] / "group_data/all.py"))
    port = settings.pgbouncer_port or group_data["pgbouncer_port"]
    done = cli("status", "--json", env={"PGBOUNCER_PORT": str(port)})
    assert done.returncode == 0, done.stderr
    bouncer = json.loads(done.stdout)["pgbouncer"]
    assert bouncer["error"] is None
    assert {p["database"] for p in bouncer["pools"]} <= {settings.db_name}
    assert all(p["pool_mode"] == "transaction" for p in bouncer["pools"])

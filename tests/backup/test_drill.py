"""`donnactl backup drill`: a restored copy is proved against the numbers its backup
took in the dump's own snapshot (rows per table and partition, a checksum per table),
and a real one-byte fault in the dump fails the drill, naming the table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from donnadb import db
from donnadb.backup import dbfacts, drill, drillclean, pitr, signing, snapshot
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupError
from donnadb.ops import archiving, backups, health, metrics
from donnadb.ops.checks import Severity
from tests.support import drop_database, superuser_psql

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture
def ds(bs, source_db, tmp_path):
    """Settings whose live database is the seeded scratch database."""
    return bs.model_copy(update={"db_name": source_db, "ops_log_file": tmp_path / "ops.jsonl"})


def _env(ds, **extra: str) -> dict[str, str]:
    return dict(os.environ, DB_NAME=ds.db_name, BACKUP_REPO_DIR=str(ds.backup_repo_dir),
                BACKUP_SIGNING_KEY_FILE=str(ds.backup_signing_key_file),
                OPS_LOG_FILE=str(ds.ops_log_file), BACKUP_S3_BUCKET="",
                PGBACKREST_ENABLED="false", **extra)


def _drill_logs(ds) -> list[str]:
    return superuser_psql("SELECT level || ' ' || message FROM system_logs "
                          "WHERE message LIKE 'backup drill %' ORDER BY created_at",
                          dbname=ds.db_name).splitlines()


def test_manifest_records_partition_counts_and_checksums_in_the_snapshot(ds):
    backup = snapshot.create_backup(ds)
    m = backup.manifest
    assert set(m.checksums) == set(m.row_counts)
    # the seed spreads 200 log rows over 40 days: at least two partitions hold rows
    logs = {k: v for k, v in m.partition_counts.items() if k.startswith("public.system_logs")}
    assert sum(logs.values()) == m.row_counts["public.system_logs"] == 200
    assert len([v for v in logs.values() if v]) >= 2
    assert m.extra["facts_seconds"] >= 0


def test_clean_drill_passes_and_is_recorded(ds):
    snapshot.create_backup(ds)
    done = subprocess.run([DONNACTL, "backup", "drill", "--json"], env=_env(ds),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    logical, physical = doc["results"]
    assert doc["ok"] and logical["ok"] and logical["checksums_available"]
    assert physical["skipped"].startswith("skipped: pgBackRest is not enabled")
    assert logical["tables"] and all(t["checksum_equal"] and
                                     t["rows_expected"] == t["rows_restored"]
                                     for t in logical["tables"])
    parts = [p for p in logical["partitions"] if p["partition"].startswith("public.system_logs")]
    assert sum(p["rows_restored"] for p in parts) == 200
    assert all(p["rows_expected"] == p["rows_restored"] for p in parts)
    assert logical["rto_seconds"] > 0 and 0 <= logical["rpo_seconds"] < 3600
    assert logical["backup_size_bytes"] > 0
    # the throwaway database is gone, the result is in system_logs and the state file
    assert superuser_psql("SELECT count(*) FROM pg_database WHERE datname LIKE "
                          "'donna\\_drill\\_%'") == "0"
    assert _drill_logs(ds) == ["info backup drill logical passed"]
    state = drill.read_state(ds.backup_repo_dir)
    assert state["logical"]["ok"] and state["logical"]["last_success_at"]

    # the same for people: a summary table, one line per table
    human = subprocess.run([DONNACTL, "backup", "drill", "--logical"], env=_env(ds),
                           capture_output=True, text=True, check=False)
    assert human.returncode == 0, human.stderr
    assert "logical drill of" in human.stdout and "public.messages" in human.stdout


def _flip_one_byte_of_a_message(backup) -> mf.Manifest:
    """Change one byte of one row in the messages data file and re-sign the manifest's
    file hashes, so that only the content checksum can tell."""
    dump = backup.path / mf.DUMP_DIR
    needle = b"hello hello hello "
    data = next(p for p in sorted(dump.glob("*.dat")) if needle in p.read_bytes())
    raw = data.read_bytes()
    at = raw.index(needle)
    data.write_bytes(raw[:at] + b"j" + raw[at + 1:])
    m = backup.manifest
    m.files = mf.hash_tree(backup.path)
    return m


def test_one_byte_changed_in_the_dump_fails_the_drill_naming_the_table(ds):
    backup = snapshot.create_backup(ds, compress_level=0)  # plain .dat files to edit
    m = _flip_one_byte_of_a_message(backup)
    signing.sign(m, signing.load_keys(ds))
    mf.write_private(backup.path / mf.MANIFEST_NAME, m.to_json())

    done = subprocess.run([DONNACTL, "backup", "drill", "--logical"], env=_env(ds),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout
    [line] = done.stderr.strip().splitlines()
    assert "table public.messages: content checksum differs" in line
    assert "DIFFERS" in done.stdout
    assert _drill_logs(ds) == ["error backup drill logical FAILED"]
    state = drill.read_state(ds.backup_repo_dir)
    assert not state["logical"]["ok"] and state["logical"]["last_success_at"] is None

    # metrics say it failed, health is CRITICAL, the alert rule fires
    text = metrics.exposition(ds)
    assert 'donnadb_backup_drill_failed{kind="logical",repo=""} 1.0' in text
    check = health.backup_drill(backups.drills(repo=ds.backup_repo_dir), ds)
    assert check.severity == Severity.CRITICAL and "public.messages" in check.summary


def test_old_manifest_without_checksums_drills_on_counts(ds):
    backup = snapshot.create_backup(ds)
    m = backup.manifest
    m.extra = {}  # as a manifest made before drills
    signing.sign(m, signing.load_keys(ds))
    mf.write_private(backup.path / mf.MANIFEST_NAME, m.to_json())
    backup = type(backup)(backup.backup_id, backup.path, mf.load(backup.path), None)

    result = drill.logical_drill(ds, backup)
    assert result.ok, result.problems
    assert not result.checksums_available and not result.partitions
    assert all(t["checksum_equal"] is None for t in result.tables)


def test_manifest_of_the_first_checksum_method_is_drilled_with_it(ds):
    """Backups in retention name "sum-md5-64": the drill checks them with md5 still, and
    a method this version does not know is drilled on counts."""
    backup = snapshot.create_backup(ds, compress_level=0)
    assert backup.manifest.checksum_algorithm == dbfacts.CHECKSUM_ALGORITHM
    with db.connection("backup", settings=ds, dbname=ds.db_name) as conn:
        old = dbfacts.table_facts(conn, algorithm=dbfacts.LEGACY_MD5_ALGORITHM)
    assert old.checksums != backup.manifest.checksums

    def rewrite(m: mf.Manifest, algorithm: str):
        m.extra = {**m.extra, "checksums": old.checksums, "checksum_algorithm": algorithm}
        signing.sign(m, signing.load_keys(ds))
        mf.write_private(backup.path / mf.MANIFEST_NAME, m.to_json())
        return type(backup)(backup.backup_id, backup.path, mf.load(backup.path), None)

    result = drill.logical_drill(ds, rewrite(backup.manifest, dbfacts.LEGACY_MD5_ALGORITHM))
    assert result.ok and result.checksums_available, result.problems
    assert all(t["checksum_equal"] for t in result.tables)

    unknown = drill.logical_drill(ds, rewrite(backup.manifest, "sum-sha-999"))
    assert unknown.ok and not unknown.checksums_available

    m = _flip_one_byte_of_a_message(backup)
    failed = drill.logical_drill(ds, rewrite(m, dbfacts.LEGACY_MD5_ALGORITHM))
    assert not failed.ok
    assert any("public.messages: content checksum differs" in p for p in failed.problems)


def test_health_warns_when_the_drill_is_stale_and_metrics_show_it(ds):
    repo = ds.backup_repo_dir
    repo.mkdir(mode=0o700, parents=True)
    old = (datetime.now(UTC) - timedelta(hours=ds.backup_drill_max_age_hours + 1)).isoformat()
    (repo / drill.STATE_NAME).write_text(json.dumps({"logical": {
        "ok": True, "last_run_at": old, "last_success_at": old, "backup_id": "x",
        "rto_seconds": 12.5, "rpo_seconds": 60.0, "problem": None}}))
    view = backups.drills(repo=repo)
    check = health.backup_drill(view, ds)
    assert check.severity == Severity.WARNING and "last logical restore drill" in check.summary
    fresh = ds.model_copy(update={"backup_drill_max_age_hours": 1e6,
                                  "health_backup_drill_crit_age_hours": 2e6})
    assert health.backup_drill(view, fresh).severity == Severity.OK

    text = metrics.exposition(ds)
    for name in ("last_success_timestamp_seconds", "age_seconds", "rto_seconds",
                 "rpo_seconds"):
        assert f'donnadb_backup_drill_{name}{{kind="logical",repo=""}}' in text
    assert 'donnadb_backup_drill_failed{kind="logical",repo=""} 0.0' in text

    done = subprocess.run([DONNACTL, "health", "--json"], env=_env(ds),
                          capture_output=True, text=True, check=False)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["backup_drill"]["severity"] == "WARNING"


def test_no_drill_yet_warns_only_once_backups_are_older_than_the_interval(ds):
    view = {"kinds": {}, "oldest_backup_age_hours": 1.0}
    assert health.backup_drill(view, ds).severity == Severity.OK
    view["oldest_backup_age_hours"] = ds.backup_drill_max_age_hours
    assert health.backup_drill(view, ds).severity == Severity.WARNING


def _database_exists(name: str) -> bool:
    return superuser_psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"


def test_a_drill_first_removes_the_databases_killed_drills_left(ds):
    snapshot.create_backup(ds)
    leftover = "donna_drill_0badc0de"
    try:
        # While another drill runs (it holds the drills' lock shared) no copy is surely a
        # leftover: that drill's own must not be dropped under it.
        with drillclean.session(ds):
            superuser_psql(f"CREATE DATABASE {leftover}")
            busy = subprocess.run([DONNACTL, "backup", "drill", "--logical", "--json"],
                                  env=_env(ds), capture_output=True, text=True, check=False)
        assert busy.returncode == 0, busy.stderr
        assert json.loads(busy.stdout)["leftovers"] is None and _database_exists(leftover)

        done = subprocess.run([DONNACTL, "backup", "drill", "--logical", "--json"],
                              env=_env(ds), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["ok"] and doc["leftovers"] == [
            {"kind": "database", "name": leftover, "removed": True, "kept_because": None}]
        assert not _database_exists(leftover)
        audit = [json.loads(line) for line in ds.ops_log_file.read_text().splitlines()]
        assert [a["context"]["audit"] for a in audit
                if a["message"] == "restore drill leftover removed"] == [
            {"kind": "database", "name": leftover}]
    finally:
        drop_database(leftover)


def test_restore_cleanup_drops_what_killed_drills_left_too(ds):
    leftover = "donna_drill_feedf00d"
    superuser_psql(f"CREATE DATABASE {leftover}")

    def cleanup(*flags: str) -> dict:
        done = subprocess.run([DONNACTL, "backup", "restore", "--cleanup", "--json", *flags],
                              env=_env(ds), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return {d["name"]: d for d in json.loads(done.stdout)["drill_leftovers"]}

    try:
        assert cleanup("--dry-run")[leftover] == {
            "kind": "database", "name": leftover, "removed": False, "kept_because": None}
        assert _database_exists(leftover)
        assert cleanup("--yes")[leftover]["removed"] and not _database_exists(leftover)
    finally:
        drop_database(leftover)


@pytest.fixture
def drill_dir():
    """BACKUP_DRILL_DIR where the cluster owner can look, like /var/tmp/donna-drill."""
    path = Path(tempfile.mkdtemp(prefix="donna-drills-", dir="/var/tmp"))  # noqa: S108
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_leftover_copies_of_physical_drills_are_removed_and_others_kept(bs, drill_dir):
    s = bs.model_copy(update={"pgbackrest_enabled": True, "backup_drill_dir": drill_dir})
    killed = drill_dir / "drill-20260101T040000-repo2"
    (killed / "base").mkdir(parents=True)
    # a machine that died with the copy running leaves a stale pid file behind
    (killed / "PG_VERSION").write_text("15\n")
    (killed / "postmaster.pid").write_text("999999\n")
    for path in (killed, killed / "base", killed / "PG_VERSION", killed / "postmaster.pid"):
        shutil.chown(path, "postgres", "postgres")
    killed.chmod(0o700)
    stranger = drill_dir / "drill-notes"
    stranger.mkdir()
    with drillclean.session(s) as removed:
        assert [(i.kind, i.name, i.removed) for i in removed if i.kind == "directory"] == [
            ("directory", str(killed), True)]
        # the running drill's session: a cleanup now finds nothing it may touch
        with drillclean.removing(s) as found:
            assert found is None
    assert not killed.exists() and stranger.exists()


def test_the_wait_for_archiving_reads_what_monitoring_reads(ds, monkeypatch):
    """One query of pg_stat_archiver (archiving.ARCHIVER_SQL) for status and the drill."""
    monkeypatch.setattr(archiving, "ARCHIVER_SQL",
                        "SELECT '00000001000000FF00000010' AS last_archived_wal, "
                        "'00000001000000FF00000011' AS last_failed_wal")
    drill._wait_archived(ds, "00000001000000FF00000010", timeout=0)
    with pytest.raises(BackupError, match="last failed 00000001000000FF00000011"):
        drill._wait_archived(ds, "00000001000000FF00000011", timeout=0)


def test_physical_drills_are_kept_per_repository(ds):
    """drill-state.json keeps each repository's last physical drill; metrics label it,
    health names it; a state file from before, with one "physical" entry, is repo1's."""
    repo = ds.backup_repo_dir
    repo.mkdir(mode=0o700, parents=True)
    now = datetime.now(UTC).isoformat()
    (repo / drill.STATE_NAME).write_text(json.dumps({"physical": {
        "ok": True, "last_run_at": now, "last_success_at": now, "backup_id": "old",
        "rto_seconds": 3.0, "rpo_seconds": 2.0, "problem": None}}))
    assert drill.read_state(repo)["physical-repo1"]["repo"] == 1
    results = [drill.DrillResult("physical", True, backup_id="b1", repo=1, rto_seconds=4.0),
               drill.DrillResult("physical", False, backup_id="b2", repo=2,
                                 problems=["restore: the bucket said no"])]
    drill.record(ds, results)
    state = json.loads((repo / drill.STATE_NAME).read_text())
    assert sorted(state) == ["physical-repo1", "physical-repo2"]
    assert state["physical-repo2"]["repo"] == 2 and not state["physical-repo2"]["ok"]
    assert _drill_logs(ds) == ["info backup drill physical repo1 passed",
                               "error backup drill physical repo2 FAILED"]

    text = metrics.exposition(ds)
    assert 'donnadb_backup_drill_failed{kind="physical",repo="1"} 0.0' in text
    assert 'donnadb_backup_drill_failed{kind="physical",repo="2"} 1.0' in text
    assert 'donnadb_backup_drill_rto_seconds{kind="physical",repo="1"} 4.0' in text
    check = health.backup_drill(backups.drills(repo=repo), ds)
    assert check.severity == Severity.CRITICAL
    assert "physical repo2 restore drill failed: restore: the bucket said no" in check.summary


def test_a_repository_no_longer_configured_leaves_the_drill_state(ds):
    """On a cluster (repo2 only) the entry from before drills were per repository, read
    as repo1's, goes with the first physical drill instead of turning stale."""
    repo = ds.backup_repo_dir
    repo.mkdir(mode=0o700, parents=True)
    then = datetime.now(UTC).isoformat()
    (repo / drill.STATE_NAME).write_text(json.dumps({"physical": {
        "ok": True, "last_run_at": then, "last_success_at": then, "backup_id": "old"}}))
    cluster = ds.model_copy(update={"pgbackrest_enabled": True, "pgbackrest_s3": True,
                                    "pgbackrest_local_repo": False})
    drill.record(cluster, [drill.DrillResult("physical", True, backup_id="b2", repo=2)])
    assert sorted(drill.read_state(repo)) == ["physical-repo2"]


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--repo", "2"), {"PGBACKREST_ENABLED": "true", "PGBACKREST_S3": "false"},
     "repository 2 is not configured; this host's pgBackRest has repo1 only"),
    (("--logical", "--repo", "1"), {}, "drop --logical"),
    (("--repo", "1"), {}, "--repo needs pgBackRest"),
])
def test_a_repository_that_cannot_be_drilled_is_refused_in_one_line(ds, args, env, message):
    done = subprocess.run([DONNACTL, "backup", "drill", *args], capture_output=True,
                          text=True, check=False, env={**_env(ds), **env})
    assert done.returncode == 3, done.stdout
    [line] = done.stderr.strip().splitlines()
    assert message in line


def test_physical_without_pgbackrest_says_so_in_one_line(ds):
    done = subprocess.run([DONNACTL, "backup", "drill", "--physical"], env=_env(ds),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert "--physical needs pgBackRest" in line


PHYSICAL_PORT, PHYSICAL_COPY_PORT = 5461, 5462
#: What the physical drill needs of the live database: the audit table's columns.
SYSTEM_LOGS_SQL = """
CREATE TABLE public.system_logs (id bigserial PRIMARY KEY, level text NOT NULL,
    message text NOT NULL, context jsonb NOT NULL DEFAULT '{}', trace_id text,
    created_at timestamptz NOT NULL DEFAULT now());
"""


def test_physical_drill_replays_wal_to_just_after_the_marker(bs, tmp_path):
    from tests.backup.pgbackrest_cluster import drill_cluster

    with drill_cluster(PHYSICAL_PORT) as (eng, work):
        pitr.stanza_create(eng)
        superuser_psql("CREATE DATABASE drilldb", port=PHYSICAL_PORT)
        superuser_psql(SYSTEM_LOGS_SQL, dbname="drilldb", port=PHYSICAL_PORT)
        s = bs.model_copy(update={
            "pgbackrest_enabled": True, "pgbackrest_config": eng.config,
            "pgbackrest_stanza": eng.stanza, "pg_cluster": eng.cluster.name,
            "pg_data_dir": eng.cluster.data_dir, "db_port": PHYSICAL_PORT,
            "db_name": "drilldb", "backup_drill_port": PHYSICAL_COPY_PORT,
            "backup_drill_dir": work / "copy-drills"})
        # before the first physical backup (a fresh host): skipped, not failed
        early = drill.physical_drill(s, archive_timeout=120)
        assert early.ok and "no pgBackRest backup in repo1 yet" in early.skipped
        pitr.physical_backup(eng, "full")

        result = drill.physical_drill(s, archive_timeout=120)
        assert result.ok, result.problems
        assert result.backup_id and result.target_time
        assert result.rto_seconds > 0 and 0 <= result.rpo_seconds < 600
        # the copy is stopped and deleted, the live cluster untouched and still writable
        assert not any((work / "copy-drills").iterdir())
        assert superuser_psql("SELECT count(*) FROM system_logs WHERE message = "
                              f"'{drill.MARKER_MESSAGE}'", dbname="drilldb",
                              port=PHYSICAL_PORT) == "2"

        drill.record(s, [result])
        # the metrics job reads it as its own user, in the repository's group
        assert (s.backup_repo_dir / drill.STATE_NAME).stat().st_mode & 0o777 == 0o640
        assert superuser_psql("SELECT level || ' ' || message FROM system_logs WHERE "
                              "message LIKE 'backup drill physical%'", dbname="drilldb",
                              port=PHYSICAL_PORT) == "info backup drill physical repo1 passed"
        state = drill.read_state(s.backup_repo_dir)
        assert state["physical-repo1"]["ok"] and state["physical-repo1"]["rto_seconds"] > 0


def test_the_copy_directory_must_be_private(tmp_path):
    """BACKUP_DRILL_DIR may sit in /var/tmp: one that someone else could write is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BackupError, match="nobody else can write"):
        drill._private_dir(shared)
    made = tmp_path / "made"
    drill._private_dir(made)
    assert made.stat().st_mode & 0o777 == 0o700 and made.owner() == "postgres"


def test_a_configured_repository_never_drilled_warns_beside_fresh_drills(ds):
    """repo2 (the bucket) added after the drills began: the logical and repo1 drills are
    fresh, repo2's is missing; once the backups are older than the interval, health says
    so."""
    both = ds.model_copy(update={"pgbackrest_enabled": True, "pgbackrest_local_repo": True,
                                 "pgbackrest_s3": True})
    fresh = {"failed": False, "age_seconds": 3600.0}
    view = {"kinds": {"logical": {**fresh, "kind": "logical", "repo": None},
                      "physical-repo1": {**fresh, "kind": "physical", "repo": 1}},
            "oldest_backup_age_hours": both.backup_drill_max_age_hours}
    check = health.backup_drill(view, both)
    assert check.severity == Severity.WARNING
    assert "pgBackRest repo2" in check.summary and "--repo 2" in check.summary
    assert health.backup_drill({**view, "oldest_backup_age_hours": 1.0}, both).severity \
        == Severity.OK
    view["kinds"]["physical-repo2"] = {**fresh, "kind": "physical", "repo": 2}
    assert health.backup_drill(view, both).severity == Severity.OK
    # Without pgBackRest no physical drill is expected.
    view["kinds"] = {"logical": view["kinds"]["logical"]}
    assert health.backup_drill(view, ds.model_copy(
        update={"pgbackrest_enabled": False})).severity == Severity.OK

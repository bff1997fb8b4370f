"""Point-in-time recovery from the encrypted S3 repository (repo2) on moto's server over
TLS: the host's own repository lost, the cluster comes back to a moment, a WAL location
or a transaction from the bucket alone, and the bucket holds nothing readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from donnadb.backup import drill, pitr
from donnadb.backup.errors import RestoreRefused
from tests.backup.conftest import TLS_BUCKET as BUCKET
from tests.backup.pgbackrest_cluster import drill_cluster
from tests.backup.test_drill import SYSTEM_LOGS_SQL
from tests.support import superuser_psql

PORT, COPY_PORT = 5451, 5452
DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture(scope="module")
def s3_engine(tls_s3):
    """One cluster for the module, with one full backup in each repository (taken once:
    the tests share it; the one that loses repo1 puts it back)."""
    endpoint, client = tls_s3
    repo = pitr.S3Repo(bucket=BUCKET, path=f"/t-{uuid.uuid4().hex[:8]}/pgbackrest",
                       region="us-east-1", endpoint=endpoint.host, port=endpoint.port,
                       uri_style="path", ca_file=str(endpoint.ca_file), key_type="shared")
    keys = "repo2-s3-key=testing\nrepo2-s3-key-secret=testing\n"
    with drill_cluster(PORT, s3=repo, s3_keys=keys) as (eng, work):
        pitr.stanza_create(eng)
        taken = pitr.physical_backup(eng, "full")
        assert [b["database"]["repo-key"] for b in taken] == [1, 2]
        yield eng, work, repo, client


def bucket_objects(client, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (what a thief of the bucket has)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def cli(eng: pitr.Engine, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
               PGBACKREST_INCLUDE_PATH=str(eng.include), PGBACKREST_S3="true",
               PGBACKREST_STANZA="drill", PG_CLUSTER=eng.cluster.name, DB_PORT=str(PORT))
    done = subprocess.run([DONNACTL, "backup", *args], env=env, capture_output=True,
                          text=True, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def restored_notes(port: int) -> str:
    """Rows restored, and how many of them were written after the target."""
    return superuser_psql("SELECT count(*), count(*) FILTER (WHERE note = 'then after') "
                          "FROM drill", port=port)


def test_the_drill_restores_from_each_repository_in_turn(s3_engine, bs):
    """The weekly drill (no --repo) proves the bucket's copy too, not only the host's."""
    eng, work, _, _ = s3_engine
    superuser_psql("CREATE DATABASE drilldb", port=PORT)
    superuser_psql(SYSTEM_LOGS_SQL, dbname="drilldb", port=PORT)
    s = bs.model_copy(update={
        "pgbackrest_enabled": True, "pgbackrest_config": eng.config,
        "pgbackrest_include_path": eng.include, "pgbackrest_s3": True,
        "pgbackrest_stanza": eng.stanza, "pg_cluster": eng.cluster.name,
        "pg_data_dir": eng.cluster.data_dir, "db_port": PORT, "db_name": "drilldb",
        "backup_drill_port": COPY_PORT, "backup_drill_dir": work / "copy-drills"})
    results = drill.physical_drills(s, archive_timeout=120)
    assert [(r.repo, r.ok) for r in results] == [(1, True), (2, True)], \
        [r.problems for r in results]
    assert all(r.backup_id and r.rto_seconds > 0 for r in results)
    assert not any((work / "copy-drills").iterdir())
    drill.record(s, results)
    state = drill.read_state(s.backup_repo_dir)
    assert {k: (v["repo"], v["ok"]) for k, v in state.items()} == {
        "physical-repo1": (1, True), "physical-repo2": (2, True)}

    # `backup drill --repo 2`: that one only
    assert drill.drill_repos(s, 2) == (2,) and drill.drill_repos(s) == (1, 2)


def test_pitr_from_the_s3_repository_alone(s3_engine):
    eng, work, repo, client = s3_engine
    needle = f"needle-{uuid.uuid4().hex}"
    superuser_psql("CREATE TABLE drill (id int PRIMARY KEY, note text);"
                   f"INSERT INTO drill SELECT g, 'before' FROM generate_series(1, 100) g;"
                   f"INSERT INTO drill VALUES (0, 'before {needle}')", port=PORT)
    xid = superuser_psql("BEGIN; INSERT INTO drill VALUES (1000, 'before last');"
                         "SELECT pg_current_xact_id(); COMMIT;", port=PORT)
    lsn = superuser_psql("SELECT pg_current_wal_lsn()", port=PORT)
    time.sleep(1.1)
    noted = datetime.fromisoformat(superuser_psql("SELECT now()", port=PORT))
    time.sleep(1.1)
    superuser_psql("INSERT INTO drill SELECT g, 'then after' FROM generate_series(101, 150) g;"
                   "SELECT pg_switch_wal();", port=PORT)
    report = pitr.check(eng)  # waits until the switched segment is in both repositories
    assert report["ok"], report
    assert {n: r["backups"] for n, r in report["repos"].items()} == {"1": 1, "2": 1}

    # Whoever reads the bucket finds neither the rows nor the passphrase.
    objects = bucket_objects(client, repo.path.lstrip("/"))
    # pgBackRest's cipher writes OpenSSL's salted format: info files, WAL and bundles alike
    # (plain ones would start with "[backrest]" or zstd's magic number).
    assert {k for k, body in objects.items() if not body.startswith(b"Salted__")} == set()
    stored = b"".join(objects.values())
    assert needle.encode() not in stored
    passphrase = (eng.include / pitr.CIPHER_FILE).read_text().split("=", 1)[1].strip()
    assert len(passphrase) >= 40 and passphrase not in eng.config.read_text()
    assert passphrase.encode() not in stored
    assert (eng.include / pitr.CIPHER_FILE).stat().st_mode & 0o777 == 0o600
    assert all(passphrase not in log.read_text() for log in work.glob("*.log"))

    # The host's repository is lost: WAL and backups come from the bucket. (Moved aside
    # and put back after: the module's other tests use it.)
    (work / "repo").rename(work / "repo-lost")
    try:
        _restore_from_the_bucket(eng, work, noted, xid, lsn)
    finally:
        (work / "repo-lost").rename(work / "repo")


def _restore_from_the_bucket(eng: pitr.Engine, work: Path, noted: datetime, xid: str,
                             lsn: str) -> None:
    result = pitr.restore_to(eng, pitr.Target.at_time(noted), repo=2,
                             data_dir=work / "copy-time", port=COPY_PORT)
    assert result.repo == 2 and result.target.startswith("time ")
    assert restored_notes(COPY_PORT) == "102|0"
    pitr.stop_copy(eng.cluster, work / "copy-time")

    by_xid = json.loads(cli(eng, "pitr", "--xid", xid, "--repo", "2", "--data-dir",
                            str(work / "copy-xid"), "--port", str(COPY_PORT), "--json").stdout)
    assert by_xid["target"] == f"xid {xid}" and by_xid["repo"] == 2
    assert restored_notes(COPY_PORT) == "102|0"
    pitr.stop_copy(eng.cluster, work / "copy-xid")

    by_lsn = json.loads(cli(eng, "pitr", "--lsn", lsn, "--repo", "2", "--data-dir",
                            str(work / "copy-lsn"), "--port", str(COPY_PORT), "--json").stdout)
    assert by_lsn["target"] == f"lsn {lsn}"
    assert restored_notes(COPY_PORT) == "102|0"
    pitr.stop_copy(eng.cluster, work / "copy-lsn")
    assert superuser_psql("SELECT count(*) FROM drill", port=PORT) == "152"  # untouched


def test_a_repository_that_is_not_configured_is_refused(s3_engine):
    eng, work, _, _ = s3_engine
    one = pitr.Engine(eng.config, eng.stanza, eng.cluster, include=eng.include, repos=(1,))
    with pytest.raises(RestoreRefused, match="repository 2 is not configured"):
        pitr.restore_to(one, pitr.Target.at_lsn("0/1"), repo=2, data_dir=work / "copy",
                        port=COPY_PORT)
    assert not (work / "copy").exists()


@pytest.mark.parametrize(("args", "message"), [
    ((), "exactly one of --to"),
    (("--to", "2026-01-01 10:00:00+00", "--xid", "5"), "exactly one of --to"),
    (("--lsn", "not-an-lsn"), "not a WAL location"),
    (("--xid", "12a"), "not a transaction id"),
    (("--to", "2026-01-01 10:00:00"), "time zone"),
])
def test_a_bad_target_is_refused_before_anything_runs(args, message):
    done = subprocess.run([DONNACTL, "backup", "pitr", *args, "--data-dir", "/nonexistent/x",
                           "--port", "5454"], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PGBACKREST_ENABLED="true"))
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

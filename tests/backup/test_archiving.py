"""Monitoring sees WAL archiving fail and recover, on a real cluster whose
archive_command fails (a stanza that does not exist yet), then works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from donnadb.backup import pitr
from donnadb.config import Settings
from donnadb.ops import archiving, health
from donnadb.ops.checks import Severity
from tests.backup.pgbackrest_cluster import drill_cluster
from tests.support import superuser_psql

PORT = 5453
DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def archiver_row(port: int) -> dict:
    return json.loads(superuser_psql(
        f"SELECT row_to_json(a) FROM ({archiving.ARCHIVER_SQL}) a", port=port))


def wait_for(port: int, done, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = archiver_row(port)
        if done(row):
            return row
        time.sleep(0.5)
    raise AssertionError(f"archiver never got there: {row}")


def graded(row: dict, state_dir) -> tuple[dict, dict[str, Severity]]:
    report = archiving.summary(row, state_dir)
    settings = Settings.model_construct()
    return report, {c.name: c.severity for c in health._archiving(report, settings)}


def test_a_failing_archive_command_is_critical_until_it_works(tmp_path):
    with drill_cluster(PORT) as (eng, work):
        # No stanza yet: every archive-push fails, as with an unreachable repository.
        superuser_psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;"
                       "SELECT pg_switch_wal();", port=PORT)
        row = wait_for(PORT, lambda r: r["failed_count"] > 0)
        report, checks = graded(row, work)
        assert report["failing"] and report["pending_segments"] >= 1
        assert checks["wal_archive"] == Severity.CRITICAL
        assert checks["physical_backup_age"] == Severity.WARNING  # none recorded

        pitr.stanza_create(eng)
        row = wait_for(PORT, lambda r: r["archived_count"] > 0
                       and r["last_archived_at"] > (r["last_failed_at"] or 0))
        # `donnactl backup physical` as the timer runs it: it saves the state monitoring reads
        done = subprocess.run(
            [DONNACTL, "backup", "physical", "--type", "full", "--json"], capture_output=True,
            text=True, check=False, env=dict(
                os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
                PGBACKREST_INCLUDE_PATH=str(eng.include), PGBACKREST_STANZA=eng.stanza,
                PG_CLUSTER=eng.cluster.name, DB_PORT=str(PORT), BACKUP_REPO_DIR=str(work)))
        assert done.returncode == 0, done.stderr
        [taken] = json.loads(done.stdout)["backups"]
        # the metrics job reads it as its own user, in the repository's group
        assert (work / pitr.STATE_FILE).stat().st_mode & 0o777 == 0o640
        report, checks = graded(archiver_row(PORT), work)
        assert not report["failing"] and checks["wal_archive"] == Severity.OK
        assert report["physical"]["1"]["newest_backup"] == taken["label"]
        assert checks["physical_backup_age"] == Severity.OK


def test_lag_counts_the_segments_between_the_archived_and_the_current_one():
    row = {"mode": "on", "archived_count": 5, "failed_count": 0, "last_failed_wal": None,
           "last_archived_wal": "0000000100000002000000FE", "last_failed_at": None,
           "last_archived_at": 1000.0, "current_wal": "000000010000000300000001"}
    report = archiving.summary(row, None, now=1300.0)
    # FE archived; FF, 3/00 due; 3/01 being written
    assert (report["pending_segments"], report["lag_seconds"]) == (2, 300.0)
    caught_up = archiving.summary(row | {"current_wal": "0000000100000002000000FF"}, None,
                                  now=1300.0)
    assert (caught_up["pending_segments"], caught_up["lag_seconds"]) == (0, 0.0)
    off = archiving.summary(row | {"mode": "off"}, None)
    assert not off["enabled"] and off["pending_segments"] is None
    # archive_mode on for another archiver (no pgBackRest here): no physical backups graded
    assert report["physical"] is None
    assert "physical_backup_age" not in {c.name for c in health._archiving(
        report, Settings.model_construct())}

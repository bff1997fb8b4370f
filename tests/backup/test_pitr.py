"""PITR drill with pgBackRest on a throwaway cluster: write rows, note the time, write
more, restore to the noted time: exactly the first rows are there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from donnadb.backup import pitr
from donnadb.backup.errors import BackupError, RestoreRefused
from tests.backup.pgbackrest_cluster import drill_cluster
from tests.support import superuser_psql

PORT, COPY_PORT = 5447, 5448
#: The in-place drill's own throwaway cluster.
IN_PLACE_PORT = 5450
DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture
def engine():
    with drill_cluster(PORT) as made:
        yield made


@pytest.fixture
def in_place_engine():
    with drill_cluster(IN_PLACE_PORT) as made:
        yield made


def write_before_and_after(eng: pitr.Engine, port: int) -> datetime:
    """A full backup, 100 'before' rows, the noted moment, 50 'after' rows, all archived."""
    pitr.stanza_create(eng)
    [full] = pitr.physical_backup(eng, "full")
    assert full["type"] == "full" and full["database"]["repo-key"] == 1
    superuser_psql("CREATE TABLE drill (id int PRIMARY KEY, note text);"
                   "INSERT INTO drill SELECT g, 'before' FROM generate_series(1, 100) g;",
                   port=port)
    time.sleep(1.1)
    noted = datetime.fromisoformat(superuser_psql("SELECT now()", port=port))
    time.sleep(1.1)
    superuser_psql("INSERT INTO drill SELECT g, 'after' FROM generate_series(101, 150) g;"
                   "SELECT pg_switch_wal();", port=port)
    report = pitr.check(eng)  # also waits until the switched segment is archived
    assert report["ok"] and report["backups"] == 1
    return noted


def test_restore_to_a_moment_has_exactly_the_rows_before_it(engine):
    eng, work = engine
    noted = write_before_and_after(eng, PORT)

    result = pitr.restore_to_time(eng, noted, data_dir=work / "copy", port=COPY_PORT)
    assert superuser_psql("SELECT count(*), min(note), max(note) FROM drill",
                          port=COPY_PORT) == "100|before|before"
    assert superuser_psql("SELECT count(*) FROM drill", port=PORT) == "150"  # untouched
    assert result.seconds > 0 and not result.in_place
    # the copy does not archive into the cluster's repository
    assert superuser_psql("SHOW archive_mode", port=COPY_PORT) == "off"
    # nor does pg_partman's worker run maintenance in it
    assert superuser_psql("SHOW pg_partman_bgw.dbname", port=COPY_PORT) == ""
    # a copy that does not stop in time is stopped immediately, not waited for forever
    pitr.stop_copy(eng.cluster, work / "copy", fast_timeout=0)
    assert not pitr.copy_running(eng.cluster, work / "copy")

    with pytest.raises(RestoreRefused, match="not empty"):
        pitr.restore_to_time(eng, noted, data_dir=work / "copy", port=COPY_PORT)

    # `backup check` reports pgBackRest's own check (exit 8: no logical backup here)
    env = dict(os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
               PGBACKREST_INCLUDE_PATH=str(eng.include),
               PGBACKREST_STANZA="drill", PG_CLUSTER=eng.cluster.name, DB_PORT=str(PORT),
               BACKUP_REPO_DIR=str(work / "logical"), BACKUP_S3_BUCKET="")
    done = subprocess.run([DONNACTL, "backup", "check", "--json"], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 8, done.stderr
    report = json.loads(done.stdout)
    assert report["engine"]["ok"] and report["engine"]["backups"] == 1
    assert report["engine"]["wal_max"]


def test_in_place_pitr_replaces_the_cluster_and_keeps_its_old_data(in_place_engine):
    """`donnactl backup pitr --in-place --force`: the cluster itself goes back to the
    noted moment on its own port and keeps archiving; the old data directory is kept."""
    eng, work = in_place_engine
    cluster = eng.cluster
    noted = write_before_and_after(eng, IN_PLACE_PORT)
    env = dict(os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
               PGBACKREST_INCLUDE_PATH=str(eng.include),
               PGBACKREST_STANZA="drill", PG_CLUSTER=cluster.name,
               DB_PORT=str(IN_PLACE_PORT))
    args = [DONNACTL, "backup", "pitr", "--to", noted.isoformat(), "--in-place"]

    refused = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 3 and "--force" in refused.stderr
    assert superuser_psql("SELECT count(*) FROM drill", port=IN_PLACE_PORT) == "150"

    said_no = subprocess.run([*args, "--force"], env=env, capture_output=True, text=True,
                             check=False, input="n\n")
    assert said_no.returncode == 130
    assert superuser_psql("SELECT count(*) FROM drill", port=IN_PLACE_PORT) == "150"

    done = subprocess.run([*args, "--force", "--yes", "--json"], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["in_place"] and result["port"] == IN_PLACE_PORT
    assert result["data_dir"] == str(cluster.data_dir)
    assert superuser_psql("SELECT count(*), min(note), max(note) FROM drill",
                          port=IN_PLACE_PORT) == "100|before|before"
    # promoted, writable, and still archiving into the stanza (a new timeline)
    superuser_psql("INSERT INTO drill VALUES (151, 'after pitr')", port=IN_PLACE_PORT)
    assert superuser_psql("SHOW archive_mode", port=IN_PLACE_PORT) == "on"
    assert pitr.check(eng)["ok"]
    [aside] = cluster.data_dir.parent.glob(f"{cluster.name}.before-pitr-*")
    assert (aside / "PG_VERSION").exists() and not (aside / "postmaster.pid").exists()


def _replay(steps: int, *, lsn_moves: bool):
    """A restored server's answers: ``steps`` polls in recovery (the replay LSN moving on
    each, or stuck), then promoted."""
    polls = iter(range(10_000))

    def probe() -> list[str]:
        n = next(polls)
        if n >= steps:
            return ["f", "0/9000000"]
        return ["t", f"0/{(n if lsn_moves else 1) * 0x1000000:X}"]
    return probe


def test_a_long_replay_is_waited_for_while_it_moves():
    # Replay goes on for about 3 s (15 polls) against a 1 s stall limit: a copy that has
    # a day of WAL to replay must not fail the drill for taking long.
    started = time.monotonic()
    pitr._wait_promoted(0, stall_timeout=1.0, probe=_replay(15, lsn_moves=True))
    assert time.monotonic() - started > 2.0


def test_a_stuck_replay_fails_after_the_stall_limit():
    started = time.monotonic()
    with pytest.raises(BackupError, match=r"replayed no WAL for 1 s \(still at 0/1000000\)"):
        pitr._wait_promoted(0, stall_timeout=1.0, probe=_replay(10_000, lsn_moves=False))
    assert 1.0 <= time.monotonic() - started < 3.0

"""PITR drill with pgBackRest on a throwaway cluster: write rows, note the time, write
more, restore to the noted time: exactly the first rows are there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from donnadb.backup import pitr
from donnadb.backup.errors import BackupError, RestoreRefused
from tests.backup.pgbackrest_cluster import drill_cluster
from tests.support import one_line_error, small_disk, superuser_psql

PORT, COPY_PORT = 5447, 5448
#: The in-place drill's own throwaway cluster.
IN_PLACE_PORT = 5450
#: The full-disk drill's own throwaway cluster.
FULL_DISK_PORT = 5456
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


def _pitr_in_place(eng: pitr.Engine, port: int, to: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
               PGBACKREST_INCLUDE_PATH=str(eng.include), PGBACKREST_STANZA="drill",
               PG_CLUSTER=eng.cluster.name, PG_DATA_DIR=str(eng.cluster.data_dir),
               DB_PORT=str(port),
               # pgBackRest's own option: no retry of a failed file 15 s later.
               PGBACKREST_JOB_RETRY="0")
    return subprocess.run([DONNACTL, "backup", "pitr", "--to", to, "--in-place", "--force",
                           "--yes"], env=env, capture_output=True, text=True, check=False)


def _as_before(cluster: pitr.Cluster, port: int) -> None:
    """The cluster runs on its own data again, writable, nothing kept aside."""
    assert superuser_psql("SELECT count(*) FROM drill", port=port) == "150"
    superuser_psql("INSERT INTO drill VALUES (151, 'after the failed restore')", port=port)
    assert not list(cluster.data_dir.parent.glob(f"{cluster.name}.before-pitr-*"))


@pytest.fixture
def full_disk_engine():
    """A drill cluster with its data directory on a file system of its own."""
    parent = Path(tempfile.mkdtemp(prefix="donna-pitr-disk-", dir="/var/tmp"))  # noqa: S108
    parent.chmod(0o755)
    try:
        with small_disk(parent, "512m") as disk:
            disk.chmod(0o755)  # pg_createcluster makes the data directory as postgres
            with drill_cluster(FULL_DISK_PORT, data_dir=disk / "data") as made:
                yield made, disk
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_an_in_place_pitr_bound_to_fail_is_refused_before_any_stop(full_disk_engine):
    """A time before the oldest backup, then a file system without room for the copy:
    each refused in one line, the server never stopped."""
    (eng, _), disk = full_disk_engine
    write_before_and_after(eng, FULL_DISK_PORT)
    up_since = superuser_psql("SELECT pg_postmaster_start_time()", port=FULL_DISK_PORT)

    too_early = _pitr_in_place(eng, FULL_DISK_PORT, "2001-01-01T00:00:00+00:00")
    one_line_error(too_early, 3, "no backup ended before 2001-01-01", "choose a later time")

    # Room for the cluster to go on (a few WAL segments), not for a second copy of it.
    used = shutil.disk_usage(disk).used
    subprocess.run(["mount", "-o", f"remount,size={used + 36 * 2**20}", str(disk)],
                   check=True)
    no_room = _pitr_in_place(eng, FULL_DISK_PORT, datetime.now(UTC).isoformat())
    one_line_error(no_room, 1, f"{disk} has ", "MiB free", "nothing was changed")

    assert superuser_psql("SELECT pg_postmaster_start_time()", port=FULL_DISK_PORT) == up_since
    _as_before(eng.cluster, FULL_DISK_PORT)


def test_an_in_place_pitr_of_a_data_directory_that_is_a_mount_point_is_refused(tmp_path):
    """It could not be renamed aside: refused before the cluster is touched (this one
    does not even exist, so any stop or pgBackRest call would fail otherwise)."""
    with small_disk(tmp_path, "1m") as mount:
        (mount / "PG_VERSION").write_text("15\n")
        cluster = pitr.Cluster(15, "nosuchcluster", 5999, mount)
        engine = pitr.Engine(tmp_path / "none.conf", "none", cluster)
        with pytest.raises(RestoreRefused, match="is a mount point.*nothing was changed"):
            pitr.restore_to(engine, pitr.Target.at_time(datetime.now(UTC)), in_place=True)
        assert (mount / "PG_VERSION").exists()


def test_an_in_place_pitr_that_fails_half_way_puts_the_cluster_back(in_place_engine):
    """A file of the backup lost from the repository: pgBackRest fails after the
    cluster stopped and part of the copy was written; the old data go back."""
    eng, work = in_place_engine
    noted = write_before_and_after(eng, IN_PLACE_PORT)
    [lost] = list((work / "repo" / "backup" / "drill").glob("*F/pg_data/PG_VERSION*"))
    lost.unlink()
    done = _pitr_in_place(eng, IN_PLACE_PORT, noted.isoformat())
    one_line_error(done, 1, "pgbackrest restore failed", "nothing was changed")
    _as_before(eng.cluster, IN_PLACE_PORT)


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

"""bench/scratch.py: a benchmark does not start on a disk it would fill, and settles."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def scratch(bench_script):
    return bench_script("scratch")


def test_a_benchmark_does_not_start_without_room_for_its_wal(scratch):
    data_dir = scratch.db.superuser_psql("SHOW data_directory")
    free = shutil.disk_usage(data_dir).free
    scratch.check_free_space(minimum=1)  # room: nothing said
    with pytest.raises(SystemExit, match=r"GiB free, under the .* GiB a benchmark needs"):
        scratch.check_free_space(minimum=free + 2**40)


def test_settle_waits_for_the_archiver(scratch):
    psql = scratch.db.superuser_psql
    if psql("SHOW archive_mode") != "on":
        pytest.skip("WAL archiving is off on this cluster")
    psql("CHECKPOINT")  # some WAL in the current segment, which the switch then closes
    segment = psql("SELECT pg_walfile_name(pg_switch_wal())")
    assert scratch.settle(timeout=120) < 120
    archived = psql("SELECT last_archived_wal FROM pg_stat_archiver")
    assert archived >= segment

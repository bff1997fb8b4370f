"""The per-entity figures of dual-write's copies (mirrorstats.py): every mirrored write
has an entity, the p95 follows a bounded window, and each process's figures reach its
file for `donnactl metrics`. What the stores count is tested in test_dualwrite.py and
test_mixed.py; the metrics of a real dual-write store in tests/ops/test_cutover.py."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time

import pytest

from donnadb.dal import dualwrite
from donnadb.dal.mirrorstats import (
    BUCKETS,
    FLUSH_SECONDS,
    FOLDED,
    OP_ENTITY,
    WINDOW,
    MirrorStats,
    fold_dead,
    p95,
    read_dir,
)
from tests.dal.conftest import ENTITIES


def test_every_mirrored_write_has_an_entity():
    """A write added to dual-write without an entity would go uncounted."""
    source = inspect.getsource(dualwrite)
    assert set(OP_ENTITY) == set(re.findall(r'self\._mirror\("(\w+)"', source))
    assert set(OP_ENTITY.values()) == set(ENTITIES)


def test_the_p95_is_over_the_last_window_of_copies():
    stats = MirrorStats()
    for _ in range(WINDOW):
        stats.copied("add_message", 1.0)
    for _ in range(WINDOW):
        stats.copied("add_message", 0.001)
    m = stats.snapshot()["messages"]
    assert m["copies"] == 2 * WINDOW and m["seconds_p95"] == 0.001
    assert m["seconds_sum"] == pytest.approx(WINDOW * 1.001)
    assert stats.snapshot()["logs"] == {"copies": 0, "seconds_sum": 0.0,
                                        "seconds_p95": None, "failures": 0}
    assert p95([float(v) for v in range(1, 101)]) == 95.0


def test_each_process_s_file_is_added_up(tmp_path):
    """Two processes (this one and a child) write their own files; the reader adds them
    up per entity, cumulative buckets included, and a torn or foreign file counts for
    nothing."""
    stats_dir = tmp_path / "stats"
    child = ("import sys; from pathlib import Path; from donnadb.dal.mirrorstats import "
             "MirrorStats; s = MirrorStats(Path(sys.argv[1])); s.copied('add_message', 0.002); "
             "s.queued(['add_message']); s.close()")
    subprocess.run([sys.executable, "-c", child, str(stats_dir)], check=True, timeout=60)
    ours = MirrorStats(stats_dir)
    ours.copied("add_message", 0.2)
    ours.copied("set_user_memory", 9.0)
    ours.close()
    (stats_dir / "123.json").write_text('{"v": 1, "buckets": [')  # cut mid-write
    (stats_dir / "124.json").write_text(json.dumps(
        {"v": 1, "buckets": list(BUCKETS), "entities": {"messages": {
            "copies": 5, "seconds_sum": 1, "failures": 5, "buckets": [5]}}}))
    total = read_dir(stats_dir)
    assert len(list(stats_dir.glob("*.json"))) == 4  # the child's, ours and the two bad
    m = total["messages"]
    assert (m["copies"], m["failures"]) == (2, 1)
    assert m["seconds_sum"] == pytest.approx(0.202)
    assert m["buckets"][BUCKETS.index(0.0025)] == 1 and m["buckets"][BUCKETS.index(0.25)] == 2
    assert m["buckets"][-1] == 2  # +Inf: every copy
    assert total["memory"]["buckets"][-2:] == [0, 1]  # 9 s: over every bound
    assert total["users"] == {"copies": 0, "seconds_sum": 0.0, "failures": 0,
                              "buckets": [0] * (len(BUCKETS) + 1)}
    assert (stats_dir / f"{os.getpid()}.json").stat().st_mode & 0o777 == 0o640


def test_a_live_process_s_figures_reach_its_file_within_the_flush_interval(tmp_path):
    stats = MirrorStats(tmp_path / "stats")
    stats.copied("write_log", 0.01)
    deadline = time.monotonic() + FLUSH_SECONDS + 5
    while read_dir(tmp_path / "stats")["logs"]["copies"] == 0:
        assert time.monotonic() < deadline, "the timer never wrote the file"
        time.sleep(0.05)
    stats.close()


def test_no_stats_dir_writes_nothing_and_a_missing_folder_reads_as_none(tmp_path):
    stats = MirrorStats()
    stats.copied("add_message", 0.01)
    stats.close()
    assert list(tmp_path.iterdir()) == []
    assert read_dir(tmp_path / "absent")["messages"]["copies"] == 0


def test_a_folder_it_cannot_write_never_fails_a_write(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    stats = MirrorStats(blocker / "stats")  # under a regular file: mkdir fails
    stats.copied("add_message", 0.01)
    stats.close()
    assert "cannot write the dual-write figures" in caplog.text


#: A process that copies ``argv[2]`` messages (one failed), writes its file and exits,
#: or, with ``argv[3]``, waits for its stdin to close first (a live process).
WRITER = ("import sys; from pathlib import Path; from donnadb.dal.mirrorstats import "
          "MirrorStats; s = MirrorStats(Path(sys.argv[1])); s._folded = True\n"
          "for _ in range(int(sys.argv[2])): s.copied('add_message', 0.003)\n"
          "s.queued(['write_log']); s.flush()\n"
          "if len(sys.argv) > 3: print('ready', flush=True); sys.stdin.read()")


def _writer(stats_dir, copies: int) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(stats_dir), str(copies)], check=True,
                   timeout=60)


def test_the_files_of_processes_gone_fold_into_one_and_no_sum_changes(tmp_path):
    stats_dir = tmp_path / "stats"
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(stats_dir), "7", "live"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "ready\n"
        for copies in (1, 2, 3):
            _writer(stats_dir, copies)
        before = read_dir(stats_dir)
        assert before["messages"]["copies"] == 13 and before["logs"]["failures"] == 4
        assert fold_dead(stats_dir) == 3
        assert {p.name for p in stats_dir.glob("*.json")} == {FOLDED, f"{live.pid}.json"}
        assert read_dir(stats_dir) == before
        assert fold_dead(stats_dir) == 0  # nothing new: nothing written
        # Processes that go later are added to what was folded before.
        _writer(stats_dir, 5)
        assert fold_dead(stats_dir) == 1
        after = read_dir(stats_dir)
        assert after["messages"]["copies"] == 18 and after["logs"]["failures"] == 5
        assert after["messages"]["buckets"][BUCKETS.index(0.005)] == 18
    finally:
        live.communicate(timeout=30)
    # A new process folds at its first write: the live one has gone since.
    ours = MirrorStats(stats_dir)
    ours.copied("add_message", 0.003)
    ours.close()
    assert {p.name for p in stats_dir.glob("*.json")} == {FOLDED, f"{os.getpid()}.json"}
    assert read_dir(stats_dir)["messages"]["copies"] == 19


def test_a_fold_killed_half_way_changes_no_sum_and_the_next_one_finishes(tmp_path):
    """SIGKILL at the fold's first removal (strace injects it): the folded file lists
    the files it holds, which are still there; the reader counts each once."""
    stats_dir = tmp_path / "stats"
    for copies in (1, 2):
        _writer(stats_dir, copies)
    before = read_dir(stats_dir)
    fold = ("import sys; from pathlib import Path; from donnadb.dal.mirrorstats import "
            "fold_dead; fold_dead(Path(sys.argv[1]))")
    killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null",
                             "-e", "trace=unlink,unlinkat", "-e",
                             "inject=unlink,unlinkat:signal=KILL",
                             sys.executable, "-c", fold, str(stats_dir)], timeout=60)
    assert killed.returncode != 0
    assert len(list(stats_dir.glob("*.json"))) == 3  # the two and the folded one
    assert read_dir(stats_dir) == before
    assert fold_dead(stats_dir) == 0  # already folded: only their removal was left
    assert [p.name for p in stats_dir.glob("*.json")] == [FOLDED]
    assert read_dir(stats_dir) == before


def test_a_folded_pid_used_again_counts_the_new_process(tmp_path):
    stats_dir = tmp_path / "stats"
    _writer(stats_dir, 2)
    name = next(stats_dir.glob("*.json")).name
    old = (stats_dir / name).read_bytes()
    killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e",
                             "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:signal=KILL",
                             sys.executable, "-c", "import sys; from pathlib import Path; "
                             "from donnadb.dal.mirrorstats import fold_dead; "
                             "fold_dead(Path(sys.argv[1]))", str(stats_dir)], timeout=60)
    assert killed.returncode != 0 and (stats_dir / name).read_bytes() == old
    # A new process with that pid writes its own file: counted, not taken as folded.
    fresh = json.loads(old)
    fresh["entities"]["messages"]["copies"] = 40
    (stats_dir / name).write_text(json.dumps(fresh))
    assert read_dir(stats_dir)["messages"]["copies"] == 2 + 40

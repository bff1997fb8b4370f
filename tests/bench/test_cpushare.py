"""bench/cpushare.py: the capacity steps' CPU shares and planning times are measured,
not guessed: a backend that burnt CPU and exited still counts, the load generator's
running children count, a window's shares are fractions of the cores, and
track_planning is back as it was after the run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from donnadb import db
from donnadb.loadtest import serverstats

#: Enough work to measure above a clock tick's resolution (about 0.3-1 s of one core).
BURN_SQL = "SELECT count(*) FROM generate_series(1, 4000000) AS g WHERE g % 7 = 3"


@pytest.fixture
def cpushare(bench_script):
    return bench_script("cpushare")


def _wait_setting(settings, name: str, want: str) -> str:
    """A new session's value of ``name``, once the reload reached it (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        with db.connection("readonly", settings=settings, autocommit=True) as conn:
            got = conn.execute(f"SHOW {name}").fetchone()[0]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_backend_that_exited_still_counts_as_server_cpu(cpushare, settings):
    before = cpushare.server_cpu_seconds()
    started = time.monotonic()
    with db.connection("readonly", settings=settings) as conn:
        conn.execute(BURN_SQL).fetchone()
    burnt = time.monotonic() - started
    time.sleep(0.3)  # the backend is gone and reaped: only the postmaster's cutime has it
    spent = cpushare.server_cpu_seconds() - before
    assert spent >= 0.6 * burnt, (spent, burnt)


def test_planning_is_tracked_for_the_run_then_restored(cpushare, settings):
    """With track_planning on, the load test's statement report has each statement's
    planning time beside its execution time."""
    name = cpushare.TRACK_PLANNING
    was = _wait_setting(settings, name, "off")
    with cpushare.planning_tracked():
        assert _wait_setting(settings, name, "on") == "on"
        with db.connection("readonly", settings=settings) as conn:
            for i in range(20):
                conn.execute("SELECT count(*) FROM chat_sessions WHERE title = %s",
                             [f"cpushare-{i}"])
        top = [s for s in serverstats.statements(settings, settings.db_name,
                                                  limit=5000)["top"]
               if "FROM chat_sessions WHERE title" in s["query"]]
        assert top and top[0]["calls"] >= 20
        assert float(top[0]["plan_ms"]) > 0
    assert _wait_setting(settings, name, was) == was
    assert db.superuser_psql(cpushare.AUTO_VALUE) == ""


def test_a_run_killed_with_sigterm_restores_the_setting(cpushare, settings, tmp_path):
    """`kill` (or a timeout) of a capacity run must not leave planning tracked."""
    ready = tmp_path / "ready"
    bench = str(Path(cpushare.__file__).parent)
    script = (f"import sys, time; sys.path.insert(0, {bench!r})\n"
              "import cpushare\n"
              "with cpushare.planning_tracked():\n"
              f"    open({str(ready)!r}, 'w').close()\n"
              "    time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists()
        assert db.superuser_psql(cpushare.AUTO_VALUE) == "on"
        run.terminate()
        assert run.wait(timeout=30) == 128 + 15
    finally:
        run.kill()
    assert db.superuser_psql(cpushare.AUTO_VALUE) == ""


def test_a_live_child_counts_as_load_in_a_window(cpushare):
    """Inside a run the load generator has not been reaped yet: the sampler counts this
    process's live descendants."""
    sampler = cpushare.Sampler(interval=0.1)
    with sampler.running():
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time\nend = time.monotonic() + 1.5\n"
                                  "while time.monotonic() < end: pass"])
        started = time.time()
        time.sleep(1.2)
        ended = time.time()
        child.wait(timeout=30)
    shares = sampler.shares(started, ended)
    assert shares is not None
    # Counted at all (an unreaped child counted nothing): it spun the whole window, yet
    # on a machine busy with other work it may have had well under a core.
    assert 0.1 / cpushare.CORES < shares.load <= 1.0, shares
    assert shares.load <= shares.busy + 0.1  # the machine was busy at least that much


def test_no_shares_without_two_samples_in_the_window(cpushare):
    sampler = cpushare.Sampler(interval=60)
    with sampler.running():
        pass
    first = sampler.samples[0].at
    assert sampler.shares(first - 10, first - 5) is None
    assert sampler.shares(first, sampler.samples[-1].at) is not None

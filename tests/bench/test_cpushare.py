"""bench/cpushare.py: the capacity steps' CPU shares and planning times are measured,
not guessed: a backend that burnt CPU and exited still counts, the load generator's
reaped children count, and track_planning is back as it was after the run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from donnadb import db

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


def test_the_load_generators_reaped_children_count(cpushare):
    before = cpushare.load_cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert cpushare.load_cpu_seconds() - before > 0.05


def test_shares_are_fractions_of_the_cores(cpushare):
    with cpushare.Shares().measure() as shares:
        subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"],
                       check=True)
    assert 0.2 / cpushare.CORES < shares.load <= 1.0
    assert shares.load <= shares.busy + 0.05  # the machine was busy at least that much


def test_planning_is_tracked_for_the_run_then_restored(cpushare, settings):
    name = cpushare.TRACK_PLANNING
    was = _wait_setting(settings, name, "off")
    with cpushare.planning_tracked():
        assert _wait_setting(settings, name, "on") == "on"
        times = cpushare.StatementTimes(settings, settings.db_name)
        times.start()
        with db.connection("readonly", settings=settings) as conn:
            for i in range(20):
                conn.execute("SELECT count(*) FROM chat_sessions WHERE chat_id = %s",
                             [f"cpushare-{i}"])
        top = [t for t in times.top(50) if "FROM chat_sessions WHERE chat_id" in t.query]
        assert top and top[0].calls >= 20, times.top(50)
        assert top[0].plan_ms > 0 and 0 < top[0].plan_share < 1
    assert _wait_setting(settings, name, was) == was
    assert db.superuser_psql(cpushare.AUTO_VALUE) == ""

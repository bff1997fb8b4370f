"""bench/capacity.py: the CPU per request is read over the steady window only (after the
ramp-up and the warm-up, before the users stop), with the requests that ended in it."""

from __future__ import annotations

import pytest

HEADER = "Timestamp,User Count,Type,Name,Requests/s,Total Request Count\n"


@pytest.fixture
def capacity(bench_script):
    return bench_script("capacity")


def _history(path, users_by_second: list[int], t0: int = 1_000) -> None:
    rows = [f"{t0 + i},{users},,Aggregated,0,{i * 10}\n{t0 + i},{users},sql,memory.get,0,0\n"
            for i, users in enumerate(users_by_second)]
    path.write_text(HEADER + "".join(rows))


def test_the_window_opens_after_the_ramp_and_the_warmup(capacity, tmp_path):
    history = tmp_path / "history.csv"
    # Ramp 0-3, 4 users from second 4 to 30, stopping at 31.
    _history(history, [0, 1, 2, 3, *[4] * 27, 2, 0])
    assert capacity.steady_window(history, 4, 0) == (1_004 + capacity.RESET_MARGIN, 1_030)
    assert capacity.steady_window(history, 4, 10) == (1_014 + capacity.RESET_MARGIN, 1_030)


@pytest.mark.parametrize(("users", "warmup"), [(5, 0), (4, 30)])
def test_no_window_when_the_run_never_got_there(capacity, tmp_path, users, warmup):
    history = tmp_path / "history.csv"
    _history(history, [0, 2, *[4] * 20, 0])
    assert capacity.steady_window(history, users, warmup) is None


def test_no_window_without_a_history(capacity, tmp_path):
    assert capacity.steady_window(tmp_path / "missing.csv", 4, 0) is None


def test_requests_are_counted_by_their_end_time(capacity, tmp_path):
    log = tmp_path / "requests.log"
    log.write_text("".join(f"{1_000 + i * 0.25:.3f} 0 1.50 history.read_last_20\n"
                           for i in range(40)))  # 1000.00 ... 1009.75
    assert capacity.requests_between(log, 1_002.0, 1_004.0) == 8  # (1002, 1004]
    assert capacity.requests_between(log, 999.0, 2_000.0) == 40
    assert capacity.requests_between(tmp_path / "missing.log", 0, 2_000) == 0

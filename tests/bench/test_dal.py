"""bench/dal.py: the storage modes side by side, the cache and field encryption, run
for real on a tiny data set (a scratch database, the legacy files, a throwaway
redis-server, a throwaway key file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.bench.conftest import BENCH

OPERATIONS = ("get_chat_history", "add_message", "set_user_memory", "write_log")


@pytest.fixture
def dalsides(bench_script):
    return bench_script("dalsides")


def test_modes_are_checked_and_the_cache_goes_on_the_postgresql_mode(dalsides):
    assert dalsides.parse_modes("postgresql,file") == ("file", "postgresql")
    with pytest.raises(ValueError, match="--modes"):
        dalsides.parse_modes("file,sqlite")
    names = [s.name for s in dalsides.sides(("file", "dual", "postgresql"), "both")]
    assert names == ["file", "dual", "postgresql", "postgresql+cache"]
    assert [s.name for s in dalsides.sides(("postgresql",), "on")] == ["postgresql+cache"]
    with pytest.raises(ValueError, match="add it to --modes"):
        dalsides.sides(("file",), "on")
    names = [s.name for s in dalsides.sides(("postgresql",), "off", "both")]
    assert names == ["postgresql", "postgresql+crypto"]
    assert [s.name for s in dalsides.sides(("postgresql",), "off", "on")] == [
        "postgresql+crypto"]
    with pytest.raises(ValueError, match="--crypto on/both .* add it to --modes"):
        dalsides.sides(("dual",), "off", "both")


def test_each_side_gets_its_own_rows(dalsides):
    shares = [dalsides.share(list(range(10)), 3, k) for k in range(3)]
    assert sorted(x for s in shares for x in s) == list(range(10))
    assert dalsides.share([1, 2], 1, 0) == [1, 2]
    with pytest.raises(ValueError, match="more --messages"):
        dalsides.share([1, 2], 3, 0)


def test_three_modes_and_the_cache_side_by_side():
    """One round, a few calls: every operation per mode, the ratios to postgresql,
    dual-write's copies per entity and the cache's hit ratio are printed."""
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    run = subprocess.run(
        [sys.executable, str(BENCH / "dal.py"), "--messages", "400", "--calls", "2",
         "--threads", "1", "--rounds", "1", "--closed-loop",
         "--modes", "file,dual,postgresql", "--cache", "both"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    out = run.stdout
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: the history verdict failed
    side_by_side = out.split("side by side", 1)[1]
    for op in OPERATIONS:
        for mode in ("file", "dual", "postgresql", "postgresql+cache"):
            assert re.search(rf"round 1   1 threads  {re.escape(mode)} +{op} ", out), (op, mode)
        for ratio in ("file/postgresql", "dual/postgresql", "postgresql+cache/postgresql"):
            assert re.search(rf"{op} .* {re.escape(ratio)} p50 [0-9.]+ +p95 [0-9.]+",
                             side_by_side), (op, ratio)
    assert re.search(r"^  messages +copies +2 +p95 +[0-9.]+ ms  failures 0$", out, re.M), out
    assert re.search(r"postgresql\+cache: cache hit ratio [0-9.]+", out)
    assert re.search(r"get_chat_history p95 with the cache [0-9.]+ ms, without [0-9.]+ ms, "
                     r"ratio [0-9.]+", out)
    assert re.search(r"^(PASS|FAIL): get_chat_history \(latest 20\) \(postgresql\)", out, re.M)


def test_sides_interleaved_call_by_call(bench_script):
    """One thread alternates the sides, each side's call numbers run 0, 1, 2, ... (what
    its writes are keyed by), and each latency is counted for the side that made it."""
    dal = bench_script("dal")
    made: list[tuple[str, int]] = []

    def side(name: str, pause: float):
        return lambda i: (made.append((name, i)), time.sleep(pause))

    fast, slow = dal.measure_paired([side("a", 0), side("b", 0.02)], 6, 1)
    assert made == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert len(fast) == len(slow) == 3
    assert min(slow) >= 20 > min(fast), (fast, slow)  # every 20 ms sleep on b's side
    made.clear()
    parts = dal.measure_paired([side("a", 0), side("b", 0)], 40, 4, 1.0)
    assert [len(p) for p in parts] == [20, 20]
    assert sorted(i for name, i in made if name == "b") == list(range(20))


@pytest.mark.parametrize("interleave", ["blocks", "calls"])
def test_field_encryption_beside_the_plain_store(interleave):
    """One round, a few calls: the encrypted side's rows, its ratio to the plain side
    per memory and profile operation, and the goal's verdict are printed."""
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    run = subprocess.run(
        [sys.executable, str(BENCH / "dal.py"), "--messages", "400", "--calls", "2",
         "--threads", "1", "--rounds", "1", "--closed-loop", "--crypto", "both",
         "--interleave", interleave],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    out = run.stdout
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: a verdict failed
    assert re.search(r"^postgresql\+crypto: sealed the imported rows of [1-9][0-9]* users",
                     out, re.M), out
    report = out.split("field encryption: postgresql+crypto against postgresql", 1)[1]
    for op in ("get_user_memory", "set_user_memory", "delete_user_memory", "get_user_by_id",
               "get_user_by_clerk_id", "create_user", "update_user"):
        for side in ("postgresql", "postgresql+crypto"):
            assert re.search(rf"round 1   1 threads  {re.escape(side)} +{op} ", out), (op, side)
        assert re.search(rf"^  1 threads  {op} +plain p50 +[0-9.]+  p95 +[0-9.]+ ms  sealed "
                         rf"p50 +[0-9.]+  p95 +[0-9.]+ ms  ratio p50 [0-9.]+  p95 [0-9.]+$",
                         report, re.M), op
    assert "threads  get_chat_history" not in report  # no sealed field: not in the goal
    assert re.search(r"^(PASS: field encryption p95 ratio <= 1\.2 on every|FAIL: field "
                     r"encryption p95 ratio above 1\.2: )", report, re.M), report
    assert re.search(r"^(PASS|FAIL): get_chat_history \(latest 20\) \(postgresql\)", out,
                     re.M)

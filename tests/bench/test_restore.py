"""bench/restore.py: the largest database within the objective, derived linearly from
two measured sizes."""

from __future__ import annotations

import pytest


@pytest.fixture
def bench_restore(bench_script):
    return bench_script("restore")


def test_the_line_through_two_sizes_gives_fixed_cost_and_rate(bench_restore):
    fixed, per_gib, limit = bench_restore.linear_limit([1.0, 3.0], [70.0, 190.0])
    assert (fixed, per_gib) == pytest.approx((10.0, 60.0))
    assert limit == pytest.approx((300 - 10) / 60)


def test_a_line_that_does_not_rise_falls_back_to_the_larger_size_rate(bench_restore):
    fixed, per_gib, limit = bench_restore.linear_limit([1.0, 2.0], [50.0, 40.0])
    assert (fixed, per_gib, limit) == pytest.approx((0.0, 20.0, 15.0))

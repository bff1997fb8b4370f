"""The SLO gate's logic, on hand-made Locust stats (no database)."""

from __future__ import annotations

import pytest

from donnadb.errors import DataError
from donnadb.loadtest import slo
from donnadb.loadtest.names import QUERY_NAMES

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
          "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
          "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n")


def row(name: str, requests: int = 100, failures: int = 0, p95: str = "20") -> str:
    kind = "" if name == slo.AGGREGATED else "sql"
    return (f"{kind},{name},{requests},{failures},3,5.0,1.0,90.0,10.0,12.5,0.0,"
            f"3,4,5,6,10,{p95},30,40,50,60,90\n")


def stats(tmp_path, *rows: str):
    path = tmp_path / "locust_stats.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    return slo.read_stats(path)


def test_all_good_passes(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, *(row(n) for n in QUERY_NAMES),
                                 row(slo.AGGREGATED, 900)),
                           expected_names=QUERY_NAMES, pool_efficiency=0.97)
    assert verdict.passed, verdict.failed_checks
    assert {c.what for c in verdict.checks} >= {"p95 overall (ms)", "failed requests",
                                                "pool efficiency"}


@pytest.mark.parametrize("p95", ["100", "130", "N/A"])
def test_one_slow_query_fails_at_or_over_the_limit(tmp_path, p95):
    verdict = slo.evaluate(stats(tmp_path, row("memory.get", p95=p95), row("logs.write"),
                                 row(slo.AGGREGATED, 200)))
    assert not verdict.passed
    assert [c.what for c in verdict.failed_checks] == ["p95 memory.get (ms)"]


def test_overall_p95_is_judged_too(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, row("memory.get"), row(slo.AGGREGATED, p95="120")))
    assert [c.what for c in verdict.failed_checks] == ["p95 overall (ms)"]


def test_any_failure_fails(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, row("memory.get", failures=1),
                                 row(slo.AGGREGATED, failures=1)))
    assert [c.what for c in verdict.failed_checks] == ["failed requests"]


def test_missing_query_name_fails(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, row("memory.get"), row(slo.AGGREGATED)),
                           expected_names=("memory.get", "search.fulltext"))
    assert [c.what for c in verdict.failed_checks] == ["requests search.fulltext"]


def test_low_pool_efficiency_fails(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, row("memory.get"), row(slo.AGGREGATED)),
                           pool_efficiency=0.85)
    assert [c.what for c in verdict.failed_checks] == ["pool efficiency"]


def test_no_requests_after_ramp_up_fails(tmp_path):
    verdict = slo.evaluate(stats(tmp_path, row(slo.AGGREGATED, requests=0, p95="N/A")))
    assert not verdict.passed


def test_unreadable_stats_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        slo.read_stats(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a Locust stats CSV"):
        slo.read_stats(bad)

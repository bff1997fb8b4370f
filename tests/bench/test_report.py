"""bench/: every comparison runs in interleaved rounds and is reported as a range, and the
latest raw outputs are kept with the date and machine they came from."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
#: Scripts that compare or measure (report.py, cpushare.py and dalsides.py are their
#: helpers, scratch.py a fixture).
SCRIPTS = sorted(p for p in BENCH.glob("*.py")
                 if p.stem not in {"report", "scratch", "cpushare", "dalsides"})
HEADER = re.compile(r"^# bench/(\w+)\.py: \d{4}-\d\d-\d\d \d\d:\d\d UTC; host \S+, \d+ cores, "
                    r"\d+ GiB RAM, .*; (\d+) interleaved rounds$", re.M)


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sides_alternate_within_each_round():
    report = _report()
    calls = []
    rounds = []
    times = report.interleaved({"base": lambda: calls.append("base"),
                                "ours": lambda: calls.append("ours")}, 3,
                               lambda r, this: rounds.append((r, sorted(this))))
    assert calls == ["base", "ours"] * 3
    assert rounds == [(1, ["base", "ours"]), (2, ["base", "ours"]), (3, ["base", "ours"])]
    assert [len(v) for v in times.values()] == [3, 3]


def test_a_range_is_min_to_max_and_ratios_pair_rounds():
    report = _report()
    assert report.span([2.0, 1.25, 3.5]) == "1.25–3.50"
    assert report.span([1.0, 1.001]) == "1.00"
    assert report.ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        report.ratios([1.0], [1.0, 2.0])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_runs_at_least_three_rounds_by_default(script):
    defaults = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant)):
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant):
                    defaults[node.args[0].value] = kw.value.value
    assert defaults.get("--rounds", 0) >= 3, f"{script.name}: no --rounds default >= 3"
    assert "--repeat" not in defaults, "best-of-N hides the spread: use --rounds"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_script_prints_the_header(script):
    assert f'header("bench/{script.name}"' in script.read_text()


def test_raw_results_are_kept_per_script_with_date_and_machine():
    kept = {p.stem: p.read_text() for p in (BENCH / "results").glob("*.txt")}
    # capacity.py (multi-thousand-user Locust runs) is the one not re-run every time;
    # docs/benchmarks.md gives its last measured figures.
    expected = {p.stem for p in SCRIPTS} - {"capacity"}
    assert expected <= set(kept), f"missing in bench/results/: {expected - set(kept)}"
    for name in expected:
        headers = HEADER.findall(kept[name])
        assert headers, f"bench/results/{name}.txt has no header line"
        assert all(h[0] == name and int(h[1]) >= 3 for h in headers), headers
        assert re.search(r"\d–\d", kept[name]), f"bench/results/{name}.txt: no range"


def test_after_runs_untimed_after_each_side():
    report = _report()
    calls = []
    times = report.interleaved({"base": lambda: calls.append("base"),
                                "ours": lambda: calls.append("ours")}, 2,
                               after=lambda side: calls.append(f"after {side}"))
    assert calls == ["base", "after base", "ours", "after ours"] * 2
    assert [len(v) for v in times.values()] == [2, 2]


def test_raw_figures_are_saved_with_the_header(tmp_path):
    report = _report()
    out = tmp_path / "results" / "x.json"
    report.save_raw(out, report.header("bench/x.py", 3), 3,
                    {"seconds": {"base": [1.0, 2.0, 3.0]}})
    saved = json.loads(out.read_text())
    assert HEADER.match(saved["header"]) and saved["rounds"] == 3
    assert saved["seconds"] == {"base": [1.0, 2.0, 3.0]}


def test_a_side_the_server_turns_away_is_timed_again(capsys):
    report = _report()
    attempts = []

    def side():
        attempts.append(1)
        if len(attempts) < 3:
            raise report.Busy("too many connections for role")

    assert report.not_busy(side, attempts=5, pause=0) >= 0
    assert len(attempts) == 3 and "the failed one not counted" in capsys.readouterr().out
    with pytest.raises(report.Busy):
        report.not_busy(lambda: (_ for _ in ()).throw(report.Busy("x")), attempts=2, pause=0)

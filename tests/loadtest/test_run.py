"""The CI-sized load test: 120 users for 60 s through PgBouncer, judged by the SLO gate
(the plan's "100+ concurrent users").

It asserts the gate's verdict and that every scenario's query shows up in the stats,
with its server-side and PgBouncer figures. (The full run is `make loadtest`.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from donnadb.dal.sealed import PLAIN_VALUE
from donnadb.errors import UsageError
from donnadb.loadtest import runner
from donnadb.loadtest.names import QUERY_NAMES
from tests.loadtest.conftest import PGBOUNCER_PORT
from tests.support import full_disk, one_line_error

#: Memory values stored in clear (not a sealed JSON string).
CLEAR_MEMORY_SQL = f"SELECT count(*) FROM user_memory WHERE {PLAIN_VALUE.format(v='value')}"
#: Seconds at full load before the measured time.
WARMUP = 5.0


def test_short_run_passes_the_gate_and_reports_every_query(settings, seeded_db, tmp_path):
    requests = tmp_path / "requests.log"
    opts = runner.RunOptions(users=120, spawn_rate=60, duration="55s", warmup=WARMUP,
                             out_dir=tmp_path, dbname=seeded_db, pgbouncer_port=PGBOUNCER_PORT,
                             pool_size=30, extra_args=["--donna-request-log", str(requests)])
    result = runner.run(opts, settings)

    names = {q.name for q in result.verdict.queries if q.requests > 0}
    assert set(QUERY_NAMES) <= names, set(QUERY_NAMES) - names
    assert result.verdict.passed, [c for c in result.verdict.checks if not c.ok]
    assert sum(q.failures for q in result.verdict.queries) == 0

    # Server side: PgBouncer counted our transactions; pg_stat_statements saw our SQL.
    assert result.pool["transactions"] > 0
    assert 0.0 < result.pool["efficiency"] <= 1.0
    assert result.pool["peak_server_connections"] >= 1
    assert result.statements["error"] is None, result.statements
    top = " ".join(r["query"] for r in result.statements["top"])
    assert "SELECT add_message(" in top, top  # the chat's appends, one statement each

    for key in ("stats_csv", "html", "png"):
        assert (tmp_path / result.files[key].rsplit("/", 1)[-1]).stat().st_size > 0
    verdict = json.loads((tmp_path / "verdict.json").read_text(encoding="utf-8"))
    assert verdict["verdict"]["passed"] is True
    # Ramp-up excluded: --reset-stats restarted the counters once all users ran, so
    # the final stats hold fewer requests than the whole history.
    with (tmp_path / "locust_stats_history.csv").open(encoding="utf-8") as f:
        history = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    assert max(int(r["User Count"]) for r in history) == 120
    # Warm-up excluded: the counters restarted again WARMUP seconds after all users ran,
    # and hold the requests that ended after that (Locust's last stats leave out the
    # final half second or so).
    log = (tmp_path / "locust.log").read_text(encoding="utf-8")
    spawned, restarted = _logged_at(log, "All users spawned"), _logged_at(log, "warm-up of")
    assert restarted - spawned == pytest.approx(WARMUP, abs=0.5)
    ends = [float(line.split()[0]) for line in requests.read_text().splitlines()]
    after = sum(t >= restarted for t in ends)
    total = next(q.requests for q in result.verdict.queries if q.name == "Aggregated")
    assert 0.97 * after <= total <= after + 3, (total, after)
    assert sum(spawned <= t < restarted for t in ends) > 100  # the warm-up had load


def _logged_at(log: str, text: str) -> float:
    """The time of the first Locust log line holding ``text`` (its local-time stamp)."""
    line = next(ln for ln in log.splitlines() if text in ln)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_sealed_store_takes_the_load_without_failures_and_stays_sealed(
        sealed_settings, sealed_seeded_db, tmp_path, connect_as):
    conn = connect_as("readonly", dbname=sealed_seeded_db)
    started = conn.execute("SELECT now()").fetchone()[0]
    # Bounded: 30 users for 30 s on this host, through PgBouncer on 127.0.0.1.
    opts = runner.RunOptions(users=30, spawn_rate=30, duration="30s", out_dir=tmp_path,
                             dbname=sealed_seeded_db, pgbouncer_port=PGBOUNCER_PORT,
                             pool_size=10)
    result = runner.run(opts, sealed_settings)

    queries = {q.name: q for q in result.verdict.queries}
    failures = {q.name: q.failures for q in result.verdict.queries if q.failures}
    assert not failures, (failures, (tmp_path / "locust.log").read_text()[-2000:])
    assert queries["memory.get"].requests > 0 and queries["memory.set"].requests > 0
    # The run's own writes were sealed: its Locust processes had the run's encryption
    # (with it off they would read ciphertext without failing, and write in clear).
    written = conn.execute("SELECT count(*) FROM user_memory WHERE updated_at >= %s",
                           (started,)).fetchone()[0]
    assert written > 0
    assert conn.execute(CLEAR_MEMORY_SQL).fetchone()[0] == 0


@pytest.mark.parametrize("bad", ["", "5x", "0", "m"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(UsageError, match="duration"):
        runner.parse_duration(bad)


def test_durations():
    assert [runner.parse_duration(t) for t in ("90", "45s", "5m", "1h30m")] == [
        90, 45, 300, 5400]


def test_processes_and_master_exclude_each_other():
    with pytest.raises(UsageError, match="not both"):
        runner.RunOptions(processes=2, expect_workers=2).validate()


def test_locust_command_excludes_ramp_up_and_passes_options_to_workers():
    cmd = runner.locust_command(runner.RunOptions(users=10, dbname="x", expect_workers=2))
    assert "--reset-stats" in cmd and "--headless" in cmd
    assert cmd[cmd.index("--expect-workers") + 1] == "2"
    assert cmd[cmd.index("--donna-dbname") + 1] == "x"
    assert cmd[-1] == "ChatUser"


def test_the_warm_up_lengthens_the_run_and_reaches_every_process():
    cmd = runner.locust_command(runner.RunOptions(duration="1m", warmup=7.5, processes=2))
    assert cmd[cmd.index("-t") + 1] == "68s"
    assert cmd[cmd.index("--donna-warmup") + 1] == "7.5"
    plain = runner.locust_command(runner.RunOptions(duration="1m"))
    assert plain[plain.index("-t") + 1] == "1m" and "--donna-warmup" not in plain
    with pytest.raises(UsageError, match="--warmup"):
        runner.RunOptions(warmup=-1).validate()


def test_a_full_out_dir_is_one_line_naming_it_and_keeps_the_last_run(seeded_db, tmp_path):
    last = {"out/verdict.json": '{"verdict": "the previous run"}',
            "out/report.html": "<html>the previous run</html>",
            "out/locust_stats.csv": "Type,Name\nthe previous run,\n"}
    with full_disk(tmp_path, last) as disk:
        out = disk / "out"
        done = subprocess.run(
            [str(Path(sys.executable).with_name("donnactl")), "loadtest", "run", "--out",
             str(out), "--users", "2", "--spawn-rate", "2", "--duration", "3s", "--dbname",
             seeded_db], capture_output=True, text=True, timeout=60,
            env={**os.environ, "OPS_LOG_FILE": str(tmp_path / "ops.jsonl")})
        assert "locust" in done.stdout  # it ran: Locust's own writes failed, not a check
        one_line_error(done, 1, f"cannot write {out}: No space left on device", "free space")
        # Every report of the previous run whole, none of this one's half-written.
        assert {f"out/{p.name}": p.read_text() for p in out.iterdir()
                if p.name != "locust.log"} == last

"""gevent cooperation: N users' pg_sleep(1) run at the same time, not one after another.

No duration is asserted (timing belongs in bench/): the proof is that every sleep was
in flight at one common instant, which a blocking driver cannot achieve.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loadtest.conftest import PGBOUNCER_PORT

ROOT = Path(__file__).resolve().parents[2]

ROOT_CMD = [sys.executable, "-m", "donnadb.loadtest.smoke", "--users", "20"]


@pytest.mark.parametrize("port", [0, PGBOUNCER_PORT], ids=["direct", "pgbouncer"])
def test_sleeps_overlap_under_gevent(port):
    done = subprocess.run([*ROOT_CMD, "--pgbouncer-port", str(port)], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["overlap"] is True
    # psycopg chose a Python wait function (gevent-patched), not the blocking C one.
    assert result["wait_function"] != "wait_c"

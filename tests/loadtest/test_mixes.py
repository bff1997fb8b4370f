"""The load test's mixes run the actions they declare, at the weights they declare.

Locust adds a base class's tasks to a subclass's own: a mix built on another would run
the other's tasks as well (the read-heavy mix then searched, logged and wrote three
times as often as it says). The classes are read in a child process, since importing
the locustfile monkey-patches this interpreter for gevent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Each mix's weights, as its class states them.
MIXES = {
    "ChatUser": {"read_history": 10, "converse": 4, "list_sessions": 3, "get_memory": 3,
                 "write_log": 2, "set_memory": 1, "new_session": 1, "search": 1},
    "ReaderUser": {"read_history": 30, "get_memory": 6, "list_sessions": 3, "converse": 1,
                   "set_memory": 1},
}

READ_TASKS = """
import collections, json
from donnadb.loadtest import locustfile
print(json.dumps({name: collections.Counter(t.__name__ for t in getattr(locustfile, name).tasks)
                  for name in %r}))
"""


@pytest.fixture(scope="module")
def tasks() -> dict[str, dict[str, int]]:
    out = subprocess.run([sys.executable, "-c", READ_TASKS % (list(MIXES),)], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_a_mix_runs_its_own_tasks_only(tasks, mix):
    assert tasks[mix] == MIXES[mix]


def test_the_read_heavy_mix_writes_rarely(tasks):
    """Writes (two appends per conversation turn, a memory write) are under a tenth of
    its requests: the mix the cache is measured on."""
    weights = tasks["ReaderUser"]
    requests = sum(weights.values()) + weights["converse"]  # a turn is two appends
    writes = 2 * weights["converse"] + weights["set_memory"]
    assert writes / requests < 0.1
    assert "search" not in weights and "write_log" not in weights

"""The per-entity figures of dual-write's copies (mirrorstats.py): every mirrored write
has an entity, the p95 follows a bounded window. What the stores count is tested in
test_dualwrite.py and test_mixed.py."""

from __future__ import annotations

import inspect
import re

import pytest

from donnadb.dal import dualwrite
from donnadb.dal.mirrorstats import OP_ENTITY, WINDOW, MirrorStats, p95
from tests.dal.conftest import ENTITIES


def test_every_mirrored_write_has_an_entity():
    """A write added to dual-write without an entity would go uncounted."""
    source = inspect.getsource(dualwrite)
    assert set(OP_ENTITY) == set(re.findall(r'self\._mirror\("(\w+)"', source))
    assert set(OP_ENTITY.values()) == set(ENTITIES)


def test_the_p95_is_over_the_last_window_of_copies():
    stats = MirrorStats()
    for _ in range(WINDOW):
        stats.copied("add_message", 1.0)
    for _ in range(WINDOW):
        stats.copied("add_message", 0.001)
    m = stats.snapshot()["messages"]
    assert m["copies"] == 2 * WINDOW and m["seconds_p95"] == 0.001
    assert m["seconds_sum"] == pytest.approx(WINDOW * 1.001)
    assert stats.snapshot()["logs"] == {"copies": 0, "seconds_sum": 0.0,
                                        "seconds_p95": None, "failures": 0}
    assert p95([float(v) for v in range(1, 101)]) == 95.0

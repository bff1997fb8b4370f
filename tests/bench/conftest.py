"""Fixtures for the bench/ scripts' tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


@pytest.fixture
def bench_script(monkeypatch):
    """``load(name)`` imports bench/<name>.py beside its helpers (report, scratch); it is
    forgotten after the test."""
    loaded = []

    def load(name: str):
        monkeypatch.syspath_prepend(str(BENCH))
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)

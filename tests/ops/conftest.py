"""Fixtures of the operations tests: one migrated scratch database per module, and a
runner for the real `donnactl` executable (exit codes are part of the contract)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import create_scratch_database, drop_database

DONNACTL = str(Path(sys.executable).parent / "donnactl")


@pytest.fixture(scope="module")
def ops_db(settings):
    """A migrated scratch database shared by one test module; dropped afterwards."""
    from donnadb.migrate import apply_migrations

    name = create_scratch_database(settings, prefix="donna_ops")
    try:
        apply_migrations(settings=settings, dbname=name)
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def cli(tmp_path):
    """``cli("status", "--json", env={...})`` runs donnactl; returns the CompletedProcess.

    Logs go to a temporary file (``cli.log_file``) so tests never write /var/log.
    """
    log_file = tmp_path / "donnactl.jsonl"

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "OPS_LOG_FILE": str(log_file), "COLUMNS": "200",
                    **(env or {})}
        return subprocess.run([DONNACTL, *args], capture_output=True, text=True,
                              env=full_env, input=input if input is not None else "",
                              timeout=timeout, cwd="/")

    run.log_file = log_file
    return run

"""Fixtures of the legacy-migration tests: generated data directories, a second database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb import db
from donnadb.legacy.fixtures import generate
from donnadb.legacy.verify import table_checksums
from tests.support import create_scratch_database, drop_database, plain_settings

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture(scope="session")
def settings(settings):
    """The host's settings with field encryption off, whatever its settings file says
    today: these tests are of the import in clear (test_sealed_import.py turns it on)."""
    return plain_settings(settings)


@pytest.fixture(autouse=True)
def _cli_in_clear(monkeypatch):
    """``donnactl`` as these tests run it: field encryption off unless a test says
    otherwise (the environment beats the host's settings file)."""
    monkeypatch.setenv("CRYPTO_ENABLED", "false")


@pytest.fixture(scope="session")
def deviant_dir(tmp_path_factory) -> tuple[Path, object]:
    """A small data directory with every deviation (read-only for the tests)."""
    root = tmp_path_factory.mktemp("legacy") / "data"
    info = generate(root, users=12, chats=40, messages_per_chat=8, logs=50,
                    large_message_bytes=2 * 1024 * 1024, long_chat_messages=20_000)
    return root, info


@pytest.fixture
def second_db(settings):
    """Another migrated scratch database (for comparing two imports)."""
    from donnadb.migrate import apply_migrations

    name = create_scratch_database(settings)
    apply_migrations(settings=settings, dbname=name)
    yield name
    drop_database(name)


def parser_processes() -> dict[int, int]:
    """{pid: parent pid} of the processes running multiprocessing's forkserver code: the
    parallel import's forkserver and the workers it forked."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"multiprocessing.forkserver" in (proc / "cmdline").read_bytes():
                found[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return found


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``donnactl`` as an operator would (a real process, real exit code)."""
    return subprocess.run([DONNACTL, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def checksums(settings, dbname: str) -> dict:
    with db.connect("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        return table_checksums(conn)

"""`donnactl loadtest run` checks what it needs before any load: it fails in seconds with
the fix instead of running the whole duration and reporting zero requests."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.loadtest.conftest import PGBOUNCER_PORT

DONNACTL = str(Path(sys.executable).parent / "donnactl")
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cmd: list[str] | None = None, env: dict | None = None,
         tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([*(cmd or [DONNACTL]), "loadtest", "run", "--duration", "5m",
                           "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, **(env or {})})
    return done, time.monotonic() - started


def test_an_unseeded_database_fails_in_seconds_with_the_fix(scratch_db, tmp_path):
    done, seconds = _run("--dbname", scratch_db, "--direct", tmp_path=tmp_path)
    assert done.returncode == 11, done.stderr
    assert seconds < 30
    assert done.stderr.count("\n") == 1 and "donnactl loadtest seed" in done.stderr
    assert not (tmp_path / "out" / "locust.log").exists()  # Locust never started


def test_an_unmigrated_database_names_migrate_apply(empty_db, tmp_path):
    done, _ = _run("--dbname", empty_db, "--direct", tmp_path=tmp_path)
    assert done.returncode == 11 and "donnactl migrate apply" in done.stderr, done.stderr


def test_pgbouncer_down_fails_in_seconds_with_the_fix(seeded_db, tmp_path):
    # Port 1: nothing listens there, as when PgBouncer is stopped.
    done, seconds = _run("--dbname", seeded_db, "--pgbouncer-port", "1", tmp_path=tmp_path)
    assert done.returncode == 4, done.stderr
    assert seconds < 30
    assert done.stderr.count("\n") == 1
    assert "PgBouncer on port 1" in done.stderr and "--direct" in done.stderr


def test_a_seeded_database_behind_pgbouncer_passes_the_checks(settings, seeded_db):
    from donnadb.loadtest import runner

    runner.preflight(runner.RunOptions(dbname=seeded_db, pgbouncer_port=PGBOUNCER_PORT),
                     settings)


def test_locust_missing_fails_with_the_install_line(seeded_db, tmp_path):
    # The same interpreter and packages, except Locust: a path of links to every
    # installed package but locust, and no site-packages of its own (-S).
    shadow = tmp_path / "site"
    shadow.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith("locust"):
            (shadow / entry.name).symlink_to(entry)
    cmd = [sys.executable, "-S", "-c", "from donnadb.cli.main import main; main()"]
    done, seconds = _run("--dbname", seeded_db, "--direct", cmd=cmd, tmp_path=tmp_path,
                         env={"PYTHONPATH": f"{ROOT}{os.pathsep}{shadow}"})
    assert done.returncode == 11, done.stderr
    assert seconds < 30
    assert "pip install 'donnadb[loadtest]'" in done.stderr

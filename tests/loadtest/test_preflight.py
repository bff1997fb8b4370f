"""`donnactl loadtest run` checks what it needs before any load: it fails in seconds with
the fix instead of running the whole duration and reporting zero requests."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from donnadb.crypto.errors import KeyFileError
from donnadb.errors import PreconditionError
from donnadb.loadtest import runner, seed
from tests.loadtest.conftest import PGBOUNCER_PORT, TEST_SCALE
from tests.support import crypto_settings

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


def test_a_seed_in_clear_under_encryption_fails_with_the_fix(clear_settings, sealed_settings,
                                                             scratch_db):
    seed.seed(clear_settings, TEST_SCALE, dbname=scratch_db)
    opts = runner.RunOptions(dbname=scratch_db, pgbouncer_port=None)
    runner.preflight(opts, clear_settings)
    # Every memory read of the run would be refused: no run at all.
    with pytest.raises(PreconditionError, match="in clear but CRYPTO_ENABLED is on.*"
                       "loadtest seed"):
        runner.preflight(opts, sealed_settings)


def test_a_sealed_seed_needs_encryption_and_a_usable_key_file(clear_settings,
                                                              sealed_settings, scratch_db,
                                                              kek_file):
    seed.seed(sealed_settings, TEST_SCALE, dbname=scratch_db)
    opts = runner.RunOptions(dbname=scratch_db, pgbouncer_port=None)
    runner.preflight(opts, sealed_settings)
    with pytest.raises(PreconditionError, match="sealed but CRYPTO_ENABLED is off"):
        runner.preflight(opts, clear_settings)
    # Locust's processes would each fail to open their DAL: one line before the run.
    with pytest.raises(KeyFileError, match="cannot open the key file"):
        runner.preflight(opts, crypto_settings(clear_settings,
                                               kek_file.with_name("absent.key")))


def test_locust_processes_get_the_runs_field_encryption(clear_settings, sealed_settings):
    # They read their settings again: a flag or the caller's ./.env would be lost.
    env = runner._env(sealed_settings)
    assert env["CRYPTO_ENABLED"] == "true"
    assert env["CRYPTO_KEK_FILE"] == str(sealed_settings.crypto_kek_file)
    assert runner._env(clear_settings)["CRYPTO_ENABLED"] == "false"

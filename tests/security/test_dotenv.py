"""A ``./.env`` that someone else could have written does not steer donnactl (which
often runs as root from whatever directory the operator is in)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from donnadb.config import load_settings

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.fixture
def shared_dir(tmp_path, monkeypatch):
    """A world-writable directory (like /tmp) as the working directory."""
    tmp_path.chmod(0o1777)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _plant(directory: Path, text: str, *, mode: int = 0o600, owner: str | None = None) -> Path:
    path = directory / ".env"
    path.write_text(text)
    path.chmod(mode)
    if owner:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


@pytest.mark.parametrize("how", ["writable by others", "owned by another user", "symlink"])
def test_an_unsafe_dotenv_is_ignored(shared_dir, how):
    if how == "writable by others":
        _plant(shared_dir, "DB_NAME=hijacked\n", mode=0o666)
    elif how == "owned by another user":
        _plant(shared_dir, "DB_NAME=hijacked\n", owner="nobody")
    else:
        target = shared_dir / "elsewhere.env"
        target.write_text("DB_NAME=hijacked\n")
        target.chmod(0o600)
        (shared_dir / ".env").symlink_to(target)
    assert load_settings().db_name != "hijacked"


def test_a_safe_dotenv_is_read(shared_dir):
    _plant(shared_dir, "DB_NAME=mine\n")
    assert load_settings().db_name == "mine"


@pytest.mark.deploy
def test_donnactl_run_as_root_in_a_shared_directory_ignores_a_planted_dotenv(shared_dir,
                                                                             deployed):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG"))}
    planted = _plant(shared_dir, "DB_PORT=1\n", mode=0o666)
    done = subprocess.run([DONNACTL, "db", "check"], cwd=shared_dir, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    planted.chmod(0o600)  # now it is root's own file: it is read, and port 1 fails
    done = subprocess.run([DONNACTL, "db", "check"], cwd=shared_dir, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0, done.stdout

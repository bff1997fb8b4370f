"""A wrong flag or value: click's usage message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.mark.parametrize("args", [
    ["status", "--no-such-flag"],
    ["migrate-data", "import", "--workers", "-1"],
    ["queries", "top", "--limit", "0"],
])
def test_usage_errors_are_one_message_and_exit_2(args):
    done = subprocess.run([DONNACTL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert "Error:" in done.stderr


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    done = subprocess.run([DONNACTL, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"donnactl {version('donnadb')}"


def test_shell_completion_can_be_shown():
    done = subprocess.run([DONNACTL, "--show-completion", "bash"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert done.returncode == 0 and "complete" in done.stdout and "donnactl" in done.stdout

"""One consistent CLI: usage errors exit 3 with click's message, never a traceback; shared
options declared once; every command that prints a result has --json; help reads well."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DONNACTL = str(Path(sys.executable).with_name("donnactl"))


@pytest.mark.parametrize("args", [
    ["status", "--no-such-flag"],
    ["migrate-data", "import", "--workers", "-1"],
    ["queries", "top", "--limit", "0"],
    ["health", "--no-such-flag"],  # Nagios: UNKNOWN, never CRITICAL
    ["no-such-command"],
])
def test_usage_errors_are_one_message_and_exit_3(args):
    done = subprocess.run([DONNACTL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done
    assert "Traceback" not in done.stderr
    assert "Error:" in done.stderr


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    done = subprocess.run([DONNACTL, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"donnactl {version('donnadb')}"


def test_shell_completion_can_be_shown():
    # Typer detects the shell from the process tree: run it from bash, as a user would
    # ("; exit" keeps bash as the parent: a lone command would be exec'd in its place).
    done = subprocess.run(["bash", "-c", f"{DONNACTL} --show-completion; exit $?"],
                          capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert done.returncode == 0 and "complete" in done.stdout and "donnactl" in done.stdout


def _commands() -> list[tuple[list[str], object]]:
    import typer.main

    from donnadb.cli.main import app

    found, pending = [], [([], typer.main.get_command(app))]
    while pending:
        path, cmd = pending.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            pending.extend(([*path, name], sub) for name, sub in subs.items())
        else:
            found.append((path, cmd))
    return sorted(found, key=lambda item: item[0])


COMMANDS = _commands()
#: What these print is for a person at a prompt (shell) or already a machine format
#: (Prometheus exposition, alert rules YAML).
NO_JSON = {"shell", "metrics show", "metrics textfile", "metrics serve", "metrics rules"}


def _options(cmd) -> dict[str, object]:
    return {opt: p for p in cmd.params for opt in getattr(p, "opts", [])}


def test_the_walk_sees_every_group():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"status", "health", "metrics show", "backup prune", "loadtest smoke"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_that_prints_a_result_has_json(path):
    cmd = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    if " ".join(path) not in NO_JSON:
        assert "--json" in _options(cmd)


def test_shared_options_are_declared_once_and_read_the_same():
    from donnadb.cli import options

    declared = {}
    for name in ("JsonOpt", "DbOpt", "YesOpt", "DryRunOpt"):
        info = getattr(options, name).__metadata__[0]
        declared[info.default] = info.help  # Annotated: the first name is stored as default
    seen = 0
    for path, cmd in COMMANDS:
        for opt, param in _options(cmd).items():
            if opt in declared:
                seen += 1
                assert param.help == declared[opt], (path, opt)
    assert seen > 60


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help_shows_no_bool_for_flags_and_a_one_line_summary(path, tmp_path):
    # A subprocess, with a repository of our own: `backup`'s callback becomes the
    # repository's owner (setuid), which must not happen to this test process.
    done = subprocess.run([DONNACTL, *path, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200",
                                           "BACKUP_REPO_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout and "--help" in done.stdout
    cmd = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    summary = (cmd.help or "").strip().split("\n\n")[0]
    assert summary and "\n" not in summary, f"first paragraph breaks mid-sentence: {summary!r}"

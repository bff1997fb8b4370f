"""Executes docs/runbook.md: every ```runbook-test block runs against the test deployment.

Blocks run in order, in one bash each (``set -euo pipefail``), with the deployed
cluster, roles and passfile, but ``DB_NAME`` pointing at a migrated scratch database and
every file the commands write (backups, archives, logs, metrics) in a temporary
directory. ``exit=0,1`` on the fence lists the accepted exit codes (default 0);
``sandbox=rotation`` maps the app role to a throwaway role and passfile, so rotating it
leaves the deployment's passwords alone. Every other fenced block is checked too: each
``donnactl`` command it names must exist (`donnactl ... --help` succeeds).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import create_scratch_database, drop_database, superuser_psql

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
HEADING = re.compile(r"^#{2,3} (.+)$", re.M)


def blocks() -> list[tuple[str, dict[str, str], str]]:
    """(section heading, fence options, body) of every fenced block, in order."""
    text = RUNBOOK.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        heads = HEADING.findall(text, 0, match.start())
        options = dict(item.split("=", 1) for item in info[1:] if "=" in item)
        found.append((heads[-1] if heads else "", {"lang": info[0] if info else "", **options},
                      match.group(2)))
    return found


TESTED = [(i, head, opts, body) for i, (head, opts, body) in enumerate(blocks())
          if opts["lang"] == "runbook-test"]
MANUAL = [(i, head, body) for i, (head, opts, body) in enumerate(blocks())
          if opts["lang"] in ("console", "bash", "sh", "shell")]


@pytest.fixture(scope="module")
def deployment(settings, tmp_path_factory):
    """Environment of the runbook blocks: a migrated scratch database and private dirs."""
    from donnadb.migrate import apply_migrations

    tmp = tmp_path_factory.mktemp("runbook")
    name = create_scratch_database(settings, prefix="donna_runbook")
    apply_migrations(settings=settings, dbname=name)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "DB_NAME": name, "OPS_LOG_FILE": str(tmp / "donnactl.jsonl"),
           "BACKUP_REPO_DIR": str(tmp / "backups"), "LOG_ARCHIVE_DIR": str(tmp / "archive"),
           "METRICS_TEXTFILE": str(tmp / "donnadb.prom"), "BACKUP_S3_BUCKET": "",
           "BACKUP_JOBS": "1",
           "COLUMNS": "120"}
    try:
        yield env, tmp, name
    finally:
        drop_database(name)


@pytest.fixture
def rotation_sandbox(deployment, settings):
    """A throwaway LOGIN role standing in for the app role, with its own passfile."""
    env, tmp, dbname = deployment
    role = f"donna_rb_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    superuser_psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    superuser_psql(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
    passfile = tmp / f"pgpass-{role}"
    passfile.write_text(settings.db_passfile.read_text() + f"*:*:*:{role}:{password}\n")
    passfile.chmod(0o600)
    yield {"DB_ROLE_APP": role, "DB_PASSFILE": str(passfile),
           "PGBOUNCER_AUTH_FILE": str(tmp / "no-userlist.txt")}
    superuser_psql(f'REVOKE CONNECT ON DATABASE "{dbname}" FROM {role}')
    superuser_psql(f"DROP ROLE {role}")


def test_runbook_has_tested_blocks_for_every_procedure():
    heads = {head for _, head, _, _ in TESTED}
    for procedure in ("Daily look", "Rotating role passwords", "Taking and restoring a backup",
                      "Partitions and retention", "A runaway query", "Disk full"):
        assert any(h.startswith(procedure) for h in heads), procedure


@pytest.mark.parametrize(("index", "head", "options", "body"), TESTED,
                         ids=[f"{i}-{h[:30]}" for i, h, _, _ in TESTED])
def test_runbook_block(index, head, options, body, deployment, request):
    env, tmp, _ = deployment
    if options.get("sandbox") == "rotation":
        env = {**env, **request.getfixturevalue("rotation_sandbox")}
    accepted = {int(c) for c in options.get("exit", "0").split(",")}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + body], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in accepted, (
        f"block {index} under '{head}' exited {done.returncode}:\n{body}\n"
        f"--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}")


def _donnactl_paths(body: str) -> list[list[str]]:
    """The command path (words before the first option or argument) of each donnactl line."""
    import typer.main

    from donnadb.cli.main import app

    group = typer.main.get_command(app)
    paths = []
    for line in body.splitlines():
        line = line.strip().removeprefix("$ ")
        if not line.startswith("donnactl "):
            continue
        words, node = [], group
        for word in shlex.split(line, comments=True)[1:]:
            sub = getattr(node, "commands", {}).get(word)
            if sub is None:
                break
            words.append(word)
            node = sub
        paths.append((line, words, node))
    return paths


@pytest.mark.parametrize(("index", "head", "body"), MANUAL,
                         ids=[f"{i}-{h[:30]}" for i, h, _ in MANUAL])
def test_manual_blocks_name_real_commands(index, head, body):
    for line, words, node in _donnactl_paths(body):
        assert words, f"block {index} ({head}): unknown command in {line!r}"
        assert not hasattr(node, "commands"), f"block {index}: {line!r} names only a group"

"""Log rotation: the policy parses, and a forced rotation keeps each log's owner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from donnadb.provision import logs

pytestmark = pytest.mark.deploy


def test_a_forced_rotation_keeps_every_log_with_its_writer(deployed, tmp_path):
    assert Path(logs.CONFIG).read_text() == logs.config_text()
    logs_now = [p for p in Path(logs.LOG_DIR).iterdir()
                if p.suffix in (".log", ".jsonl") and p.stat().st_size]
    assert logs_now, "nothing has logged yet"
    owners = {p: (p.stat().st_uid, p.stat().st_mode & 0o777) for p in logs_now}
    done = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"),
                           logs.CONFIG], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for path, (uid, mode) in owners.items():
        assert Path(f"{path}.1").exists(), path
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (uid, mode), path
        assert st.st_size == 0, path  # truncated in place, the writer's file kept

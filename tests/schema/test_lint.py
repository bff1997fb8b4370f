"""CI lints every migration with squawk, using the checked-in schema/.squawk.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SQUAWK = Path(sys.executable).parent / "squawk"
CONFIG = REPO / "schema" / ".squawk.toml"


def _squawk(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SQUAWK), f"--config={CONFIG}", *map(str, paths)],
                          capture_output=True, text=True, cwd=REPO, check=False)


def test_migrations_pass_squawk():
    migrations = sorted((REPO / "schema" / "migrations").glob("*.sql"))
    assert migrations
    done = _squawk(*migrations)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Found 0 issues in {len(migrations)} files" in done.stdout or (
        len(migrations) == 1 and "Found 0 issues in 1 file" in done.stdout)


def test_squawk_still_catches_a_blocking_migration(tmp_path):
    # The config must not switch squawk off: a plain CREATE INDEX on an existing table
    # in a later migration is exactly what it exists to catch.
    bad = tmp_path / "0099_blocking_index.sql"
    bad.write_text("CREATE INDEX idx_users_name ON users(name);\n")
    done = _squawk(bad)
    assert done.returncode != 0
    assert "require-concurrent-index-creation" in done.stdout

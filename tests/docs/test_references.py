"""Code, tests, docs and benchmark output say what the system is, not which piece of past
work made it: no numbered references to sessions, issues or work periods."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NUMBERED = re.compile(r"\b(?:session|issue|sprint|iteration)s?[- ]?#?\d+\b"
                      r"|\b(?:session|issue)s? \d+\s*(?:-|–|and|to)\s*\d+\b"
                      r"|(?<![\w&{])#\d{1,4}\b", re.I)
#: Where "#<digits>" is data, not a reference (test data for message ids).
DATA = {"tests/legacy/test_conflicts.py"}


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines()
            if p.endswith((".py", ".md", ".txt", ".toml", ".j2", ".sql", ".sh", ".cfg"))
            or p == "Makefile"]


def test_no_numbered_reference_to_past_work():
    hits = []
    for path in _tracked():
        rel = str(path.relative_to(ROOT))
        if rel.startswith(("docs/plan/", "requirements/")) or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in NUMBERED.finditer(line):
                if rel in DATA and m.group().startswith("#"):
                    continue
                hits.append(f"{rel}:{n}: {m.group()}")
    assert hits == []


def test_the_catch_works():
    # Built from parts so that this file does not hold what it forbids.
    for word, number in (("figures of session", " 3"), ("session", "-4 code"),
                         ("issue", " #" "12"), ("see", " #" "7"), ("sessions", " 1-2")):
        text = word + number
        assert NUMBERED.search(text), text
    for text in ("&#160;", "#292929", "a session 's", "chat_sessions"):
        assert not NUMBERED.search(text), text

"""Rendering shared by every command: rich for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def emit_json(payload: Any) -> None:
    """Write ``payload`` as one JSON document on stdout (no rich markup)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str, sort_keys=True) + "\n")


def emit(payload: Any, line: str, as_json: bool) -> None:
    """``payload`` as JSON for a script, or ``line`` as it is for a person."""
    if as_json:
        emit_json(payload)
    else:
        console.print(line, highlight=False)

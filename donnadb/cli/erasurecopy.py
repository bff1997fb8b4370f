"""The erasures ledger's copy to S3 after a command that changed or uploaded it.

`users forget` and `backup create` are done when this runs: a copy that fails is
reported, not raised (their own result stands), and the next push makes it good.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.markup import escape

from donnadb.backup import ledgercopy
from donnadb.cli.output import console
from donnadb.config import Settings
from donnadb.errors import DonnaError

log = logging.getLogger("donnadb.cli")


def ledger_copy(settings: Settings, dbname: str) -> dict[str, Any] | None:
    """Push ``dbname``'s ledger to S3 when S3 is configured: the push's summary, or
    ``{"error": ...}``; None without S3."""
    if not settings.s3_enabled:
        return None
    try:
        return ledgercopy.push(settings, dbname).to_dict()
    except DonnaError as exc:
        log.warning("the erasures ledger of %s was not copied to S3: %s", dbname, exc)
        return {"database": dbname, "error": str(exc)}


def print_ledger_copy(done: dict[str, Any] | None) -> None:
    if done is None:
        return
    if "error" in done:
        console.print(f"[yellow]the erasures ledger of {done['database']} was not copied to "
                      f"S3 ({escape(done['error'])}); the next `donnactl backup create` "
                      "copies it, or run `donnactl backup push-erasures`[/]", highlight=False)
    elif done["pushed"]:
        console.print(f"erasures ledger: {done['pushed']} new entries copied to "
                      f"{done['where']}", highlight=False)

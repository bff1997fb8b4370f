"""The per-entity move from the legacy files to PostgreSQL as this host sees it: each
entity's phase (its settings), the reconcile backlog (the queue file) and dual-write's
copy figures (MIGRATION_MIRROR_STATS_DIR), for `donnactl status`, `health` and `metrics`.

Read from this host's settings and files, never from the database, so it answers while
PostgreSQL is down, when the backlog grows. Nothing here raises: a file that cannot be
read is reported as an ``error`` beside the figures it hides; a missing queue or data
directory (a host with every entity in one store) is an empty backlog.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from donnadb.config import Settings
from donnadb.dal import mirrorstats
from donnadb.dal.factory import entity_phases, reconcile_queue_path
from donnadb.dal.pending import ReconcileQueue
from donnadb.dal.phases import ENTITIES, check_phases
from donnadb.errors import ConfigError


def collect(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """``{"phases", "primary", "problem", "backlog", "mirror"}`` of this host.

    ``phases``: entity -> file | dual | postgresql (empty when the settings name none);
    ``problem``: why the DAL would refuse these phases, else None.
    """
    phases, problem = _phases(settings)
    return {"phases": phases, "primary": settings.migration_primary_store,
            "problem": problem, "backlog": backlog(settings, now or datetime.now(UTC)),
            "mirror": mirror(settings)}


def _phases(settings: Settings) -> tuple[dict[str, str], str | None]:
    try:
        phases = entity_phases(settings)
    except ConfigError as exc:
        return {}, str(exc)
    try:
        check_phases(phases, settings.migration_primary_store)
    except ConfigError as exc:
        return phases, str(exc)
    return phases, None


def backlog(settings: Settings, now: datetime) -> dict[str, Any]:
    """Entries waiting in the reconcile queue per entity, and the age of each entity's
    oldest (``oldest_seconds``: None when none waits); ``error`` when it cannot be read."""
    path = reconcile_queue_path(settings)
    try:
        waiting = ReconcileQueue(path).backlog()
    except OSError as exc:
        return {"queue": str(path), "error": f"cannot read {path}: {exc.strerror or exc}",
                "entities": None, "total": None, "oldest_seconds": None}
    entities = {}
    for entity in ENTITIES:
        found = waiting.get(entity, {"entries": 0, "oldest": None})
        oldest = found["oldest"]
        entities[entity] = {
            "entries": found["entries"],
            "oldest_seconds": None if oldest is None
            else round(max(0.0, (now - oldest).total_seconds()), 1)}
    ages = [e["oldest_seconds"] for e in entities.values() if e["oldest_seconds"] is not None]
    return {"queue": str(path), "error": None, "entities": entities,
            "total": sum(e["entries"] for e in entities.values()),
            "oldest_seconds": max(ages, default=None)}


def mirror(settings: Settings) -> dict[str, Any] | None:
    """Dual-write's copy figures per entity, added up over the application's processes
    (mirrorstats.read_dir); None when MIGRATION_MIRROR_STATS_DIR is not set."""
    folder = settings.migration_mirror_stats_dir
    if folder is None:
        return None
    try:
        return {"dir": str(folder), "error": None, "entities": mirrorstats.read_dir(folder)}
    except OSError as exc:
        return {"dir": str(folder), "error": f"cannot read {folder}: {exc.strerror or exc}",
                "entities": None}


def in_dual(report: dict[str, Any]) -> bool:
    """Whether some entity is in dual-write (a backlog can grow)."""
    return "dual" in report["phases"].values()

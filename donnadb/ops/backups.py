"""The age of the last successful backup, read from the local backup repository.

`donnadb.backup` owns the repository and its manifests; this module only calls its
public listing (``list_backups``) so monitoring keeps working, and says "unknown",
on hosts where no backup was ever taken or the repository cannot be read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from donnadb.config import Settings, get_settings

log = logging.getLogger(__name__)


def _repository() -> Path:
    return get_settings().backup_repo_dir


def good_backups(repo: Path | None) -> list[Any]:
    """The good (complete, not failed by verify) backups in ``repo``, reading every
    manifest once; [] when there is no repository or it cannot be read (logged).
    ``status`` lists once and hands the list to :func:`latest` and :func:`drills`."""
    if repo is None:
        return []
    try:
        from donnadb.backup.storage_local import list_backups

        return [b for b in list_backups(repo) if b.good]
    except (ImportError, OSError) as exc:
        log.warning("cannot list backups in %s: %s", repo, exc)
        return []


def latest(*, now: datetime | None = None, repo: Path | None = None,
           good: list[Any] | None = None) -> dict[str, Any]:
    """``{"status": "ok"|"unknown", "finished_at", "age_hours", "backup_id", "repository"}``
    of the newest of ``good`` (default: :func:`good_backups` of ``repo``).
    """
    now = now or datetime.now(UTC)
    repo = repo or _repository()
    good = good_backups(repo) if good is None else good
    if not good:
        return {"status": "unknown", "finished_at": None, "age_hours": None,
                "backup_id": None, "repository": str(repo) if repo else None}
    newest = max(good, key=lambda b: b.manifest.finished)
    finished = _aware(newest.manifest.finished)
    return {
        "status": "ok",
        "finished_at": finished,
        "age_hours": round((now - finished).total_seconds() / 3600, 2),
        "backup_id": newest.backup_id,
        "repository": str(repo),
    }


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def drills(*, now: datetime | None = None, repo: Path | None = None,
           good: list[Any] | None = None) -> dict[str, Any]:
    """The last restore drill of each kind and repository (``backup drill``), read from
    the repository's drill-state.json: ``{"kinds": {key: {..., "kind", "repo",
    "age_seconds", "last_success_ts"}}, "oldest_backup_age_hours"}``, keyed ``logical``
    and ``physical-repo<N>``, and the age of the oldest of ``good`` (default:
    :func:`good_backups` of ``repo``), so a host whose backups are younger than the
    drill interval is not yet expected to have drilled."""
    now = now or datetime.now(UTC)
    repo = repo or _repository()
    view: dict[str, Any] = {"kinds": {}, "oldest_backup_age_hours": None}
    if repo is None:
        return view
    try:
        from donnadb.backup.drill import read_state
    except ImportError as exc:
        log.warning("cannot read the drill state in %s: %s", repo, exc)
        return view
    good = good_backups(repo) if good is None else good
    if good:
        oldest = _aware(min(b.manifest.finished for b in good))
        view["oldest_backup_age_hours"] = round((now - oldest).total_seconds() / 3600, 2)
    for key, last in read_state(repo).items():
        success = last.get("last_success_at")
        when = _aware(datetime.fromisoformat(success)) if isinstance(success, str) else None
        view["kinds"][key] = {
            **last,
            "failed": not last.get("ok", False),
            "last_success_ts": when.timestamp() if when else None,
            "age_seconds": round((now - when).total_seconds(), 1) if when else None,
        }
    return view


def pgbackrest_repos(settings: Settings) -> tuple[int, ...]:
    """The pgBackRest repositories configured on this host (none without pgBackRest):
    the ones the weekly physical drill goes through."""
    if not settings.pgbackrest_enabled:
        return ()
    from donnadb.backup import pitr

    return pitr.engine_from_settings(settings).repos


def drill_name(last: dict[str, Any]) -> str:
    """How people read one entry of :func:`drills`: ``logical``, ``physical repo2``."""
    return f"{last['kind']} repo{last['repo']}" if last.get("repo") else last["kind"]

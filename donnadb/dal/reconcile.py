"""Replay what dual-write could not write to PostgreSQL (``donnactl migrate-data reconcile``).

Each queued entity is copied again from the files, the source of truth, so a replay is
idempotent and running reconcile twice, or after a crash, is always safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from donnadb.config import Settings, get_settings
from donnadb.dal.dualwrite import DualWriteDataAccess
from donnadb.errors import DatabaseError, DonnaError, UsageError

log = logging.getLogger(__name__)

#: The queue entries of each entity. Users and memory share theirs: a write to either
#: queues the memory file, which is copied whole.
ENTITY_KINDS = {"users": "user", "memory": "user", "chats": "chat", "messages": "message",
                "logs": "log"}


@dataclass
class ReconcileResult:
    """What a run did: entities copied, entities still failing (kept in the queue)."""

    replayed: int = 0
    failed: int = 0
    entries: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "replayed": self.replayed, "failed": self.failed,
                "errors": self.errors}


def reconcile(dal: DualWriteDataAccess | None = None, *,
              settings: Settings | None = None, entity: str | None = None
              ) -> ReconcileResult:
    """Replay the queue of ``dal`` (built from ``settings`` when not given); only the
    entries of ``entity`` (:data:`ENTITY_KINDS`) when given, keeping the others queued.

    Entities that still fail stay queued; a connection failure stops the run and keeps
    everything not yet replayed.

    :raises UsageError: another reconcile is running, ``dal`` is not a dual-write DAL,
        or ``entity`` is unknown.
    :raises ConfigError: the settings' phases per entity cannot stay consistent.
    """
    if entity is not None and entity not in ENTITY_KINDS:
        raise UsageError(f"unknown entity {entity!r}; use one of {', '.join(ENTITY_KINDS)}")
    own = dal is None
    if dal is None:
        dal = _configured(settings)
    if not isinstance(dal, DualWriteDataAccess):
        raise UsageError("reconcile needs the dual-write data access (DATA_STORAGE_TYPE=dual)")
    try:
        return _run(dal, None if entity is None else ENTITY_KINDS[entity])
    finally:
        if own:
            dal.close()


def _configured(settings: Settings | None) -> DualWriteDataAccess:
    """The store the application copies with: with a store per entity, its own (a
    user's copy then carries memory only where memory is copied), else dual-write
    whatever DATA_STORAGE_TYPE says (a queue may outlive a switch back to files)."""
    from donnadb.dal.factory import create_dual_write, create_mixed, entity_phases

    s = settings or get_settings()
    phases = entity_phases(s)
    if len(set(phases.values())) > 1:
        return create_mixed(s, phases)
    return create_dual_write(s)


def _run(dal: DualWriteDataAccess, kind: str | None) -> ReconcileResult:
    result = ReconcileResult()
    with dal.queue.claim() as claimed:
        entries = [e for e in claimed if kind is None or e.get("kind") == kind]
        _keep_unchosen(dal, [e for e in claimed if kind is not None and e.get("kind") != kind])
        result.entries = len(entries)
        groups = _group(entries)
        keep: list[dict[str, Any]] = []
        stopped: str | None = None
        for key, group in groups:
            if stopped is not None:
                keep.extend(group)
                continue
            try:
                _replay(dal, key, group)
                result.replayed += 1
            except DatabaseError as exc:
                stopped = str(exc)
                keep.extend(group)
                result.errors.append(f"{key[0]} {key[1]}: {exc}")
            except DonnaError as exc:
                keep.extend(group)
                result.errors.append(f"{key[0]} {key[1]}: {exc}")
                log.warning("reconcile: %s %s still fails: %s", key[0], key[1], exc)
        result.failed = len(groups) - result.replayed
        if keep:
            dal.queue.append(_strip(keep), op="reconcile",
                             error=stopped or "; ".join(result.errors)[-500:])
    log.info("reconcile: %d queued entries, %d entities replayed, %d still failing",
             result.entries, result.replayed, result.failed)
    return result


def _keep_unchosen(dal: DualWriteDataAccess, entries: list[dict[str, Any]]) -> None:
    """Queue again, as they were, the entries of the entities not reconciled this run
    (the claimed batch is deleted when the run ends)."""
    by_cause: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        by_cause.setdefault((str(e.get("op", "")), str(e.get("error", ""))), []).append(e)
    for (op, error), group in by_cause.items():
        dal.queue.append(_strip(group), op=op, error=error)


def _group(entries: list[dict[str, Any]]) -> list[tuple[tuple[str, str], list[dict]]]:
    """One group per entity, in first-queued order (a chat before its messages)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        kind = e.get("kind")
        if kind == "user":
            key = ("user", e.get("clerk_id"))
        elif kind in ("chat", "message"):
            key = (kind, e.get("chat_id"))
        elif kind == "log":
            key = ("log", e.get("source"))
        else:
            log.warning("reconcile: ignoring entry of unknown kind %r", kind)
            continue
        if not isinstance(key[1], str):
            log.warning("reconcile: ignoring entry without an id: %r", e)
            continue
        groups.setdefault(key, []).append(e)
    return list(groups.items())


def _replay(dal: DualWriteDataAccess, key: tuple[str, str], group: list[dict]) -> None:
    kind, name = key
    # The entity's file lock, as a live dual-write holds it: a copy of an older state
    # cannot land after a newer one.
    if kind == "user":
        with dal.user_lock(name):
            dal.sync_user(name)
    elif kind == "chat":
        with dal.chat_lock(name):
            dal.sync_chat(name)
    elif kind == "log":
        dal.sync_log(name)  # a written log line never changes: no lock needed
    else:
        wanted = {e.get("message_id") for e in group}
        with dal.chat_lock(name):
            messages = [m for m in dal.files.get_all_messages(name) if m["id"] in wanted]
            if messages:
                dal.sync_messages(name, messages)


def _strip(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = {"v", "op", "queued_at", "error"}
    return [{k: v for k, v in e.items() if k not in drop} for e in entries]

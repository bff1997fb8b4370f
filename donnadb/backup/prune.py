"""``backup prune``: apply the retention policy to the local repository and to S3.

Each place is pruned on its own history (a backup kept in S3 may be gone locally),
with the same policy, and never by bucket lifecycle rules: what goes is decided
here, shown by ``--dry-run``, and never the only good backup. A local backup that a
restore or verify is reading (its shared read lock, storage_local.reading) is skipped
and reported, never waited for.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from donnadb.backup import retention, storage_local
from donnadb.backup.storage_s3 import S3Store
from donnadb.config import Settings

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    dry_run: bool
    local: retention.Plan
    s3: retention.Plan | None = None
    partials_removed: list[str] = field(default_factory=list)
    #: Local backups the plan would delete but a restore or verify is reading: kept.
    in_use: list[str] = field(default_factory=list)
    uploads_aborted: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "local": self.local.to_dict(),
            "s3": self.s3.to_dict() if self.s3 else None,
            "partials_removed": self.partials_removed,
            "in_use": self.in_use,
            "uploads_aborted": self.uploads_aborted,
        }


def policy_of(settings: Settings) -> retention.Policy:
    return retention.Policy(settings.backup_keep_last, settings.backup_keep_daily,
                            settings.backup_keep_weekly, settings.backup_keep_monthly)


def prune(settings: Settings, *, dry_run: bool = False) -> PruneReport:
    """Plan (and unless ``dry_run``, carry out) retention locally and in S3.

    :raises BackupError: S3 cannot be listed or deleted from.
    """
    policy = policy_of(settings)
    local = storage_local.list_backups(settings.backup_repo_dir)
    local_plan = retention.plan_retention(
        [retention.Candidate(b.backup_id, b.manifest.finished, b.good)
         for b in local if b.manifest is not None], policy)
    # A directory with an unreadable manifest is not a backup; keep it for a person to see.
    report = PruneReport(dry_run, local_plan)
    by_id = {b.backup_id: b for b in local}
    # A dry run writes nothing, so it need not wait for a running backup's write lock.
    writing = nullcontext() if dry_run else storage_local.repo_lock(settings.backup_repo_dir)
    with writing:
        for backup_id in local_plan.delete:
            with storage_local.claim_for_delete(by_id[backup_id]) as free:
                if not free:
                    log.warning("not deleting backup %s: a restore or verify is reading it",
                                backup_id)
                    report.in_use.append(backup_id)
                elif not dry_run:
                    storage_local.delete(by_id[backup_id])
    if not dry_run:
        report.partials_removed = storage_local.remove_stale_partials(settings.backup_repo_dir)
    if settings.s3_enabled:
        store = S3Store(settings)
        remote = store.list_backups()
        # An S3 backup without a manifest has no time of its own: time it by its id.
        report.s3 = retention.plan_retention(
            [retention.Candidate(b.backup_id, b.manifest.finished if b.manifest
                                 else _id_time(b.backup_id), b.good) for b in remote],
            policy)
        if not dry_run:
            for backup_id in report.s3.delete:
                store.delete_backup(backup_id)
            report.uploads_aborted = store.abort_unfinished(older_than_hours=24)
    return report


def _id_time(backup_id: str) -> datetime:
    stamp = backup_id.split("-", 1)[0]
    # Current ids carry microseconds (22 characters); earlier ones stop at the second.
    fmt = "%Y%m%dT%H%M%S%fZ" if len(stamp) == 22 else "%Y%m%dT%H%M%SZ"
    try:
        return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)  # unknown: treat as new, so it is kept

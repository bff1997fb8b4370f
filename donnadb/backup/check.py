"""``backup check``: is there a good backup recent enough, and is anything left over?

Fails (exit 8) when the newest good backup, locally or (when configured) in S3,
is older than BACKUP_MAX_AGE_HOURS or missing, and, with pgBackRest, when its check
fails or a repository's newest physical backup is older or missing. Unfinished directories and
multipart uploads are reported as warnings; ``backup prune`` clears them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from donnadb.backup import catalog, ledgercopy, storage_local
from donnadb.backup.storage_s3 import S3Store
from donnadb.config import Settings
from donnadb.errors import DonnaError


@dataclass
class CheckReport:
    ok: bool
    max_age_hours: float
    newest_local: str | None = None
    newest_local_age_hours: float | None = None
    newest_s3: str | None = None
    newest_s3_age_hours: float | None = None
    partials: list[str] = field(default_factory=list)
    unfinished_uploads: list[dict] = field(default_factory=list)
    engine: dict | None = None  # pgBackRest's own check, when configured
    #: Erasures of DB_NAME not yet copied to S3 (None: no S3, or not checked).
    erasures_not_copied: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _newest_good(rows: list[catalog.Row]) -> catalog.Row | None:
    good = [r for r in rows if r.good and r.finished_at is not None]
    # By the finish time itself, not the rounded age: two backups a second apart differ.
    # finished_at is ISO 8601 in UTC, so it sorts as text; the id breaks exact ties.
    return max(good, key=lambda r: (r.finished_at, r.backup_id)) if good else None


def _physical_problems(repos: dict[str, dict], limit: float) -> list[str]:
    """Each pgBackRest repository needs a backup newer than the limit."""
    problems = []
    for repo, seen in sorted(repos.items()):
        age = seen["newest_backup_age_hours"]
        if age is None:
            problems.append(f"no physical backup in pgBackRest repo{repo}; run "
                            f"`donnactl backup physical --repo {repo}`")
        elif age > limit:
            problems.append(f"newest physical backup in repo{repo} {seen['newest_backup']} is "
                            f"{age:.1f} h old (limit {limit:g} h); is the backup timer running?")
    return problems


def check_backups(settings: Settings, *, now: datetime | None = None,
                  engine: dict | None = None) -> CheckReport:
    """Check freshness and leftovers; never raises for a stale backup (see ``ok``)."""
    now = now or datetime.now(UTC)
    limit = settings.backup_max_age_hours
    report = CheckReport(ok=True, max_age_hours=limit, engine=engine)
    places = [("local", catalog.local_rows(settings, now))]
    store = S3Store(settings) if settings.s3_enabled else None
    if store:
        places.append(("s3", catalog.remote_rows(store, now)))
        report.unfinished_uploads = store.unfinished_uploads()
    for where, rows in places:
        newest = _newest_good(rows)
        setattr(report, f"newest_{where}", newest.backup_id if newest else None)
        setattr(report, f"newest_{where}_age_hours", newest.age_hours if newest else None)
        if newest is None:
            report.problems.append(f"no good {where} backup; run `donnactl backup create`")
        elif newest.age_hours > limit:
            report.problems.append(
                f"newest good {where} backup {newest.backup_id} is {newest.age_hours:.1f} h "
                f"old (limit {limit:g} h); is the backup timer running?")
    if store:
        _check_ledger_copy(settings, store, report)
    report.partials = [p.name for p in storage_local.partials(settings.backup_repo_dir)]
    if report.partials:
        report.warnings.append(f"{len(report.partials)} unfinished backup directories "
                               "(killed backups?); `donnactl backup prune` removes them")
    if report.unfinished_uploads:
        report.warnings.append(f"{len(report.unfinished_uploads)} unfinished S3 multipart "
                               "uploads; `donnactl backup prune` aborts those older than 24 h")
    if engine is not None and not engine.get("ok"):
        report.problems.append(f"pgBackRest check failed: {engine.get('error')}")
    elif engine is not None:
        report.problems += _physical_problems(engine["repos"], limit)
    report.ok = not report.problems
    return report


def _check_ledger_copy(settings: Settings, store: S3Store, report: CheckReport) -> None:
    """Erasures missing from the bucket are a problem: a restore after losing the host
    would bring those users back. A database that cannot be read is a warning (the
    backups themselves were checked)."""
    try:
        missing = ledgercopy.not_copied(settings, settings.db_name, store=store)
    except DonnaError as exc:
        report.warnings.append(f"the erasures ledger's copy in S3 was not checked: {exc}")
        return
    report.erasures_not_copied = missing
    if missing:
        report.problems.append(
            f"{missing} erasures of {settings.db_name} are not copied to S3 (a restore after "
            "losing the host would bring those users back); run `donnactl backup "
            "push-erasures`")

"""Every backup we know of, local and in S3, as rows people and scripts can read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from donnadb.backup import storage_local
from donnadb.backup.storage_s3 import S3Store
from donnadb.config import Settings


@dataclass
class Row:
    backup_id: str
    where: str  # "local" or "s3"
    good: bool
    finished_at: str | None
    age_hours: float | None
    size: int | None
    database: str | None
    schema_version: str | None
    verified: bool | None  # None: never verified

    def to_dict(self) -> dict:
        return asdict(self)


def _age(finished: datetime | None, now: datetime) -> float | None:
    return round((now - finished).total_seconds() / 3600, 4) if finished else None


def local_rows(settings: Settings, now: datetime | None = None) -> list[Row]:
    now = now or datetime.now(UTC)
    rows = []
    for b in storage_local.list_backups(settings.backup_repo_dir):
        m = b.manifest
        rows.append(Row(
            b.backup_id, "local", b.good, m.finished_at if m else None,
            _age(m.finished if m else None, now), m.total_size if m else None,
            m.database if m else None, m.schema_version if m else None,
            None if b.verified is None else bool(b.verified.get("ok")),
        ))
    return rows


def remote_rows(store: S3Store, now: datetime | None = None) -> list[Row]:
    now = now or datetime.now(UTC)
    rows = []
    for b in store.list_backups():
        m = b.manifest
        rows.append(Row(
            b.backup_id, "s3", b.good, m.finished_at if m else None,
            _age(m.finished if m else None, now), m.total_size if m else None,
            m.database if m else None, m.schema_version if m else None, None,
        ))
    return rows


def all_rows(settings: Settings, *, local: bool = True, remote: bool = True) -> list[Row]:
    rows = local_rows(settings) if local else []
    if remote and settings.s3_enabled:
        rows += remote_rows(S3Store(settings))
    return sorted(rows, key=lambda r: (r.backup_id, r.where))

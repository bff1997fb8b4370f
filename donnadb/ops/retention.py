"""`donnactl retention run`: expired user_memory rows and old system_logs partitions.

user_memory rows past ``expires_at`` are deleted in batches (``MIGRATION_BATCH_SIZE``)
as the application role, each batch its own short transaction so a large backlog never
holds locks for long; old logs go through :func:`donnadb.ops.partitions.maintain`
(archive, then drop). ``dry_run`` only counts.
"""

from __future__ import annotations

import logging
from typing import Any

from donnadb import db
from donnadb.config import Settings
from donnadb.ops import eventlog, partitions

log = logging.getLogger(__name__)

COUNT_EXPIRED_SQL = "SELECT count(*) FROM user_memory WHERE expires_at < now()"
DELETE_EXPIRED_SQL = """
DELETE FROM user_memory WHERE id IN (
    SELECT id FROM user_memory WHERE expires_at < now()
    ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)
"""


def run(settings: Settings, *, dbname: str | None = None, dry_run: bool = False
        ) -> dict[str, Any]:
    """Apply the retention policy (or, with ``dry_run``, count what it would remove).

    :raises DatabaseError: the database cannot be reached.
    :raises PartitionError: log partitions cannot be maintained.
    """
    batch = settings.migration_batch_size
    with db.connection("app", settings=settings, dbname=dbname, autocommit=True) as conn:
        expired = conn.execute(COUNT_EXPIRED_SQL).fetchone()[0]
        deleted = batches = 0
        while not dry_run:
            with conn.transaction():
                n = conn.execute(DELETE_EXPIRED_SQL, (batch,)).rowcount
                if n:
                    deleted += n
                    batches += 1
            if n < batch:
                break
        if deleted:
            with conn.transaction():
                eventlog.record_event(conn, "info", "expired user_memory deleted",
                                   {"rows": deleted, "batches": batches})
    logs = partitions.maintain(settings, dbname=dbname, dry_run=dry_run)
    return {"dry_run": dry_run, "user_memory": {"expired": expired, "deleted": deleted},
            "system_logs": logs}

"""WAL archiving and the physical backups, as monitoring sees them.

``pg_stat_archiver`` says whether ``archive_command`` works (any role may read it); how
far archiving is behind is the distance between the segment being written and the last
one archived. The newest physical backup of each pgBackRest repository comes from the
state the backup jobs save (pitr.save_state): monitoring cannot run pgBackRest, whose
repositories are the cluster owner's alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from donnadb.backup import pitr

ARCHIVER_SQL = """
SELECT current_setting('archive_mode') AS mode,
       archived_count, failed_count, last_archived_wal, last_failed_wal,
       extract(epoch FROM last_archived_time)::float8 AS last_archived_at,
       extract(epoch FROM last_failed_time)::float8 AS last_failed_at,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END AS current_wal
FROM pg_stat_archiver
"""
#: WAL segments per log file id at the default 16 MiB segment size.
SEGMENTS_PER_ID = 0x100


def segment_number(wal_name: str) -> int:
    """A WAL file name's position (timeline aside): log id and segment."""
    return int(wal_name[8:16], 16) * SEGMENTS_PER_ID + int(wal_name[16:24], 16)


def summary(row: dict[str, Any], state_dir: Path | None, now: float | None = None
            ) -> dict[str, Any]:
    """The archiver row graded: failing, segments waiting, lag, and each repository's
    newest physical backup from the state saved in ``state_dir`` (``physical`` is None
    without pgBackRest: archive_mode may be on for another archiver)."""
    now = now or time.time()
    on = row["mode"] in ("on", "always")
    failing = bool(row["failed_count"]) and (
        row["last_archived_at"] is None
        or (row["last_failed_at"] or 0) > row["last_archived_at"])
    pending = None
    if on and row["current_wal"]:
        # The segment being written is not due yet.
        done = segment_number(row["last_archived_wal"]) if row["last_archived_wal"] else -1
        pending = max(segment_number(row["current_wal"]) - done - 1, 0)
    lag = None
    if pending is not None:
        lag = 0.0 if pending == 0 or row["last_archived_at"] is None else \
            round(now - row["last_archived_at"], 1)
    state = pitr.load_state(state_dir) if state_dir else None
    repos = {} if state_dir else None
    for repo, seen in ((state or {}).get("repos") or {}).items():
        stop = seen.get("newest_backup_stop")
        repos[repo] = {"newest_backup": seen.get("newest_backup"),
                       "age_hours": round((now - stop) / 3600, 2) if stop else None}
    return {
        "enabled": on,
        "failing": on and failing,
        "archived_count": row["archived_count"],
        "failed_count": row["failed_count"],
        "last_failed_wal": row["last_failed_wal"],
        "pending_segments": pending,
        "lag_seconds": lag,
        "physical": repos,
        "physical_checked_at": (state or {}).get("checked_at"),
    }

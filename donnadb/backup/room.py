"""Room for a restore, checked before anything is stopped or written.

A restore that fills its disk half-way fails late, after the work; one that fills the
live server's disk can stop the server (PostgreSQL shuts down when it cannot write
WAL). Both restores estimate what they will write from the backup's own figures and
refuse, in one line, when the file system has less free space than that.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from donnadb import db
from donnadb.config import MIB, Settings
from donnadb.errors import DiskWriteError

log = logging.getLogger(__name__)

#: Kept free beyond the estimate: the WAL segments a server fetches and makes as it
#: works (four of 16 MiB).
MARGIN = 64 * MIB
#: Where the server keeps its data, and how much WAL it lets build up between
#: checkpoints (a load writes that much before segments are recycled).
SQL_SERVER_DISK = ("SELECT current_setting('data_directory'), "
                   "pg_size_bytes(current_setting('max_wal_size'))")


def require(where: Path, need: int, what: str) -> None:
    """:raises DiskWriteError: the file system of ``where`` has less than ``need`` bytes
    free (to unprivileged writers, as PostgreSQL is)."""
    free = shutil.disk_usage(where).free
    if free < need:
        raise DiskWriteError(f"{where} has {free / MIB:.0f} MiB free, {what} needs about "
                             f"{need / MIB:.0f} MiB; free space there first, or restore "
                             "where there is room; nothing was changed")


def for_logical_restore(settings: Settings, backup_id: str, database_size: int) -> None:
    """Refuse a ``backup restore`` (or a logical drill) whose copy, built beside the
    live databases, would not fit on the server's disk: the database's size when it was
    backed up, the WAL its load writes (as much as the data, up to ``max_wal_size``)
    and :data:`MARGIN`; on two file systems when ``pg_wal`` is on its own.

    :raises DiskWriteError: not enough room (nothing was created).
    :raises DatabaseError: the server cannot be asked.
    """
    if not isinstance(database_size, int) or database_size <= 0:
        return  # a manifest without the figure: pg_restore will tell
    data_dir, max_wal = db.superuser_psql(SQL_SERVER_DISK, port=settings.db_port).split("|")
    data, wal = Path(data_dir), Path(data_dir) / "pg_wal"
    wal_need = min(database_size, int(max_wal))
    what = (f"restoring backup {backup_id} ({database_size / MIB:.0f} MiB of database "
            "when it was taken, and the WAL its load writes)")
    try:
        own_wal = os.stat(wal).st_dev != os.stat(data).st_dev
    except PermissionError:  # the data directory is the cluster owner's: one disk, then
        own_wal = False
    try:
        if own_wal:
            require(data, database_size + MARGIN, what)
            require(wal, wal_need + MARGIN, what)
        else:
            require(data, database_size + wal_need + MARGIN, what)
    except PermissionError:
        log.warning("cannot see the free space under %s (not readable by this user): "
                    "restoring without checking it", data)

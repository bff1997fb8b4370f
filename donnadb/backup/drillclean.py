"""What killed restore drills leave behind, found and removed.

A drill killed half-way leaves its throwaway database ``donna_drill_<hex>`` and, for a
physical drill, its copy of the cluster ``BACKUP_DRILL_DIR/drill-<stamp>-repo<N>``
(perhaps still running on ``BACKUP_DRILL_PORT``). The next drill removes them before
it starts, and ``backup restore --cleanup`` lists and drops them on demand.

Two drills may run at once (the weekly job and an operator's): each holds the drills'
advisory lock shared while it runs, and leftovers are looked for only with the lock
held exclusively, i.e. while no drill runs, so a running drill's copy is never taken
for a leftover. The lock is PostgreSQL's, not a file's: the databases are the server's,
so every drill against it takes part, whatever its ``BACKUP_REPO_DIR``. A database
somebody is connected to (an operator looking into it) is kept all the same: dropping
it would end their session.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from donnadb import db
from donnadb.backup import bootstrap, pitr
from donnadb.config import Settings
from donnadb.errors import DatabaseError, DonnaError

log = logging.getLogger(__name__)
audit = logging.getLogger("donnadb.audit")

SCRATCH_PREFIX = "donna_drill_"
SCRATCH_RE = re.compile(r"^donna_drill_[0-9a-f]{8}$")
COPY_RE = re.compile(r"^drill-[0-9]{8}T[0-9]{6}(-repo[0-9]+)?$")
#: The drill databases and how many sessions each has.
SQL_SCRATCH_DATABASES = r"""
SET search_path = pg_catalog, pg_temp;
SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)
FROM pg_database d WHERE d.datname LIKE 'donna\_drill\_%' ORDER BY 1
"""


#: The drills' advisory lock ("donnadri"), server-wide.
LOCK_KEY = 0x646F6E6E61647269
SQL_TRY_EXCLUSIVE = f"SELECT pg_try_advisory_lock({LOCK_KEY})"
SQL_UNLOCK = f"SELECT pg_advisory_unlock({LOCK_KEY})"
#: Waits only while a cleanup holds the lock exclusively, which is brief.
SQL_SHARED = f"SELECT pg_advisory_lock_shared({LOCK_KEY})"


@dataclass
class Leftover:
    """A drill database (``kind`` "database") or copy directory ("directory")."""

    kind: str
    name: str
    removed: bool = False
    #: Why it was kept (in use, could not be stopped), None when removed or not tried.
    kept_because: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def find(settings: Settings) -> list[Leftover]:
    """Every drill database and copy directory there is; call it with the drills' lock
    held exclusively (:func:`removing`), else a running drill's copy is listed too."""
    found = []
    out = bootstrap.superuser_psql(SQL_SCRATCH_DATABASES, port=settings.db_port)
    for line in out.splitlines():
        name, sessions = line.split("|")
        if SCRATCH_RE.match(name):
            found.append(Leftover("database", name, kept_because=(
                f"{sessions} session(s) connected" if int(sessions) else None)))
    parent = settings.backup_drill_dir
    if settings.pgbackrest_enabled and parent.is_dir():
        found += [Leftover("directory", str(d)) for d in sorted(parent.iterdir())
                  if COPY_RE.match(d.name) and d.is_dir() and not d.is_symlink()]
    return found


def remove(settings: Settings, found: list[Leftover]) -> list[Leftover]:
    """Remove each of ``found`` not kept for a reason; one audit line per removal.
    Returns ``found``, each marked removed or why it was kept. Never raises."""
    for item in found:
        if item.kept_because is not None:
            continue
        try:
            if item.kind == "database" and SCRATCH_RE.match(item.name):
                bootstrap.drop_database(item.name, port=settings.db_port)
            elif item.kind == "directory" and COPY_RE.match(Path(item.name).name):
                remove_copy(pitr.engine_from_settings(settings).cluster, Path(item.name))
            else:
                continue  # never anything but the two patterns, whatever is passed in
        except DonnaError as exc:
            item.kept_because = str(exc)
            log.error("could not remove the drill leftover %s: %s", item.name, exc)
            continue
        item.removed = True
        audit.info("restore drill leftover removed",
                   extra={"audit": {"kind": item.kind, "name": item.name}})
    return found


class _LockSession:
    """A superuser psql session kept open: an advisory lock lasts as long as it, and it
    ends with its stdin, so also when the drill is killed."""

    def __init__(self, port: int | None) -> None:
        cmd = db.as_cluster_owner(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                   "-d", "postgres", *(["-p", str(port)] if port else [])])
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd="/")

    def query(self, statement: str) -> str:
        """One statement's one-line answer.

        :raises DatabaseError: psql ended (it could not connect, or the statement failed).
        """
        self._proc.stdin.write(statement + ";\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=30)
            last = (self._proc.stderr.read().strip().splitlines() or ["psql ended"])[-1]
            raise DatabaseError(f"the restore drills' lock session: {last}")
        return line.strip()

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


@contextmanager
def _lock_session(settings: Settings) -> Iterator[_LockSession]:
    lock = _LockSession(settings.db_port)
    try:
        yield lock
    finally:
        lock.close()


@contextmanager
def removing(settings: Settings) -> Iterator[list[Leftover] | None]:
    """Hold the drills' lock exclusively while no drill runs: yields what :func:`find`
    sees then, or None while a drill runs (nothing is a leftover for sure then).

    :raises DatabaseError: the lock could not be asked for.
    """
    with _lock_session(settings) as lock:
        yield find(settings) if lock.query(SQL_TRY_EXCLUSIVE) == "t" else None


def remove_named(settings: Settings, names: set[str]) -> list[Leftover] | None:
    """Remove those leftovers :func:`find` still sees whose name is in ``names`` (what
    an operator was shown and confirmed); None when a drill is running now."""
    with removing(settings) as found:
        if found is None:
            return None
        return remove(settings, [item for item in found if item.name in names])


@contextmanager
def session(settings: Settings) -> Iterator[list[Leftover] | None]:
    """A drill's run: first the leftovers of earlier drills are removed (None: another
    drill is running, so none were looked for), then the lock is held shared until the
    drill ends, so that no later drill takes this one's copies for leftovers.

    :raises DatabaseError: the lock could not be asked for.
    """
    with _lock_session(settings) as lock:
        removed = None
        if lock.query(SQL_TRY_EXCLUSIVE) == "t":
            removed = remove(settings, find(settings))
            lock.query(SQL_UNLOCK)
        lock.query(SQL_SHARED)
        yield removed


def remove_copy(cluster: pitr.Cluster, data_dir: Path) -> None:
    """Stop the server running in a drill's copy, if any, and delete the copy.

    :raises BackupError: the server would not stop (deleting files under a running
        server would only add damage).
    """
    if (data_dir / "postmaster.pid").exists() and pitr.copy_running(cluster, data_dir):
        pitr.stop_copy(cluster, data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


"""The local backup repository: one directory per finished backup.

Layout (everything 0700/0600, owned by root)::

    <repo>/.lock                  held by whoever writes (create, prune)
    <repo>/.read-<id>.lock        shared by restore/verify while they read <id>;
                                  prune deletes <id> only when it gets it exclusively
    <repo>/.restore-<db>.lock     held by the one restore building a copy of <db>
    <repo>/.partial-<id>/         a backup being written; never listed
    <repo>/<id>/manifest.json     a finished backup (the rename is the commit)
    <repo>/<id>/dump/...          pg_dump's directory-format output
    <repo>/<id>/SHA256SUMS        the dump's files for ``sha256sum -c`` (sums.py)
    <repo>/<id>/verify.json       the last verify's result, if any

A backup only becomes visible by the atomic rename of its finished
``.partial-<id>`` directory, so a killed backup never looks complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt, BackupError, BackupNotFound

PARTIAL_PREFIX = ".partial-"
#: Plaintext of an encrypted backup while pg_restore reads it (restore.py).
DECRYPTED_PREFIX = ".decrypted-"
LOCK_NAME = ".lock"
READ_LOCK_PREFIX = ".read-"
RESTORE_LOCK_PREFIX = ".restore-"
VERIFY_NAME = "verify.json"


@dataclass
class LocalBackup:
    backup_id: str
    path: Path
    manifest: mf.Manifest | None  # None when the manifest is unreadable
    verified: dict | None

    @property
    def good(self) -> bool:
        """Complete, and not failed by its last verify."""
        if self.manifest is None:
            return False
        return self.verified is None or bool(self.verified.get("ok"))


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable, unique id: UTC time to the microsecond plus a short random suffix.

    The microseconds keep two backups taken within one second in the order they were
    taken: ``latest`` and retention sort by id.
    """
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(2)}"


#: Modes of what the repository's group may list or read (backup directories; manifest
#: and verify result); never others, never the dump. Set-group-ID: what is made inside
#: belongs to the repository's group, not to the group of whoever made it.
GROUP_LISTABLE = 0o2750
GROUP_READABLE = 0o640


def ensure_repo(repo: Path) -> Path:
    """Create the repository (0750) if needed and tighten its mode.

    Its group (the deploy makes it ``donnadb``, the consumers') may list the backups and
    read their manifests and verify results, which hold no data: the metrics job runs
    as its own user. The dumps stay their owner's alone (``dump/`` is 0700).

    :raises BackupError: it cannot be created.
    """
    try:
        repo.mkdir(mode=GROUP_LISTABLE, parents=True, exist_ok=True)
        os.chmod(repo, GROUP_LISTABLE)  # noqa: S103 - group only, see GROUP_LISTABLE
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup repository {repo}: {exc.strerror} "
            "(set BACKUP_REPO_DIR or run as root)"
        ) from None
    return repo


def _repository_owner(repo: Path) -> tuple[int, int] | None:
    """(uid, gid) to give what root makes in ``repo``, or None (not root, or root's repo)."""
    if os.geteuid() != 0:
        return None
    try:
        st = repo.stat()
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def adopt(repo: Path, path: Path) -> None:
    """Give ``path`` (and what is below it) to the repository's owner.

    The deploy gives the repository to the backup jobs' user; an operator's command run
    as root must not leave root-owned backups, verify results or lock files there that
    the jobs could then not prune, verify or lock.
    """
    owner = _repository_owner(repo)
    if owner is None:
        return
    for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        os.chown(p, *owner, follow_symlinks=False)


def _open_lock(path: Path) -> int:
    """Open (create, 0600) a lock file in the repository, owned by the repository's owner."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    owner = _repository_owner(path.parent)
    if owner is not None:
        os.fchown(fd, *owner)
    return fd


@contextmanager
def repo_lock(repo: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the repository's write lock; yields False if ``wait`` is off and it is taken."""
    ensure_repo(repo)
    fd = _open_lock(repo / LOCK_NAME)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)  # closing releases the lock


def _flock(path: Path, mode: int) -> tuple[int, bool]:
    """Open ``path`` (0600, created if missing) and try ``mode``; (fd, got it)."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, mode)
        return fd, True
    except BlockingIOError:
        return fd, False


def _read_lock_path(repo: Path, backup_id: str) -> Path:
    return repo / f"{READ_LOCK_PREFIX}{backup_id}.lock"


@contextmanager
def reading(backup: LocalBackup) -> Iterator[None]:
    """Hold ``backup``'s shared read lock: prune does not delete it meanwhile.

    Waits while a prune is deleting it (seconds at most), then checks it is still there.

    :raises BackupNotFound: prune deleted it before the lock was taken.
    """
    repo = backup.path.parent
    ensure_repo(repo)
    fd, _ = _flock(_read_lock_path(repo, backup.backup_id), fcntl.LOCK_SH)
    try:
        if not (backup.path / mf.MANIFEST_NAME).is_file():
            raise BackupNotFound(f"backup {backup.backup_id} was deleted (by prune?) before "
                                 "it could be read; pick another with `donnactl backup list`")
        yield
    finally:
        os.close(fd)


@contextmanager
def claim_for_delete(backup: LocalBackup) -> Iterator[bool]:
    """Take ``backup``'s read lock exclusively without waiting; yields False when a
    restore or verify is reading it (then it must not be deleted)."""
    path = _read_lock_path(backup.path.parent, backup.backup_id)
    fd, got = _flock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield got
        if got and not backup.path.exists():
            path.unlink(missing_ok=True)  # its backup is gone: the lock file goes too
    finally:
        os.close(fd)


@contextmanager
def restore_lock(repo: Path, target_db: str) -> Iterator[bool]:
    """The lock of the one restore building a copy of ``target_db``; yields False when
    another process holds it. A killed restore's lock is released by the kernel, so
    its half-made database is recognisably stale (``backup restore --cleanup``)."""
    ensure_repo(repo)
    fd, got = _flock(repo / f"{RESTORE_LOCK_PREFIX}{target_db}.lock",
                     fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield got
    finally:
        os.close(fd)


def start_partial(repo: Path, backup_id: str) -> Path:
    """A new, empty ``.partial-<id>`` directory (never an existing one, nor a symlink).

    :raises BackupError: the name exists already.
    """
    path = repo / f"{PARTIAL_PREFIX}{backup_id}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{path} already exists (left by an interrupted run, or planted); "
                          "`donnactl backup prune` removes stale partial directories") from None
    return path


def commit_partial(partial: Path, backup_id: str) -> Path:
    """Atomically publish a finished backup: fsync the files, then rename the directory.

    The group may then read the manifest (see :func:`ensure_repo`), never the dump.
    """
    os.chmod(partial, GROUP_LISTABLE)  # noqa: S103 - group only, see GROUP_LISTABLE
    if (partial / mf.MANIFEST_NAME).exists():
        os.chmod(partial / mf.MANIFEST_NAME, GROUP_READABLE)
    for p in partial.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    adopt(partial.parent, partial)
    final = partial.parent / backup_id
    os.rename(partial, final)
    dir_fd = os.open(partial.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def partials(repo: Path) -> list[Path]:
    """Unfinished backup directories (in progress, or left by a killed backup)."""
    if not repo.is_dir():
        return []
    return sorted(p for p in repo.iterdir()
                  if p.name.startswith((PARTIAL_PREFIX, DECRYPTED_PREFIX)))


def remove_stale_partials(repo: Path) -> list[str]:
    """Delete unfinished directories when no backup holds the lock; return their names."""
    removed: list[str] = []
    with repo_lock(repo, wait=False) as got:
        if not got:
            return removed
        for p in partials(repo):
            if p.is_symlink():
                p.unlink()  # planted: remove the link, never what it points to
            else:
                shutil.rmtree(p)
            removed.append(p.name)
    return removed


def _read_verify(path: Path) -> dict | None:
    try:
        return json.loads((path / VERIFY_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def list_backups(repo: Path) -> list[LocalBackup]:
    """Finished backups, oldest first (unreadable manifests are listed as not good)."""
    if not repo.is_dir():
        return []
    found = []
    for path in sorted(repo.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            manifest = mf.load(path)
        except BackupCorrupt:
            manifest = None
        found.append(LocalBackup(path.name, path, manifest, _read_verify(path)))
    return found


def resolve(repo: Path, backup_id: str) -> LocalBackup:
    """Find ``backup_id`` ("latest" means the newest good backup).

    :raises BackupNotFound: there is no such backup.
    """
    backups = list_backups(repo)
    if backup_id == "latest":
        good = [b for b in backups if b.good]
        if not good:
            raise BackupNotFound(f"no good backup in {repo}; run `donnactl backup create`")
        return good[-1]
    for b in backups:
        if b.backup_id == backup_id:
            return b
    raise BackupNotFound(f"no backup {backup_id!r} in {repo}; see `donnactl backup list`")


def write_group_readable(repo: Path, path: Path, text: str) -> None:
    """Write ``path`` in ``repo`` atomically, 0640, the repository owner's: the files the
    metrics job reads as its own user (verify results, drill and pgBackRest state)."""
    mf.write_private(path, text)
    os.chmod(path, GROUP_READABLE)
    adopt(repo, path)


def record_verify(backup: LocalBackup, result: dict) -> None:
    write_group_readable(backup.path.parent, backup.path / VERIFY_NAME,
                         json.dumps(result, indent=2, sort_keys=True))


def delete(backup: LocalBackup) -> None:
    # Rename first so a half-deleted backup can never be mistaken for a whole one.
    doomed = backup.path.parent / f"{PARTIAL_PREFIX}deleting-{backup.backup_id}"
    os.rename(backup.path, doomed)
    shutil.rmtree(doomed)

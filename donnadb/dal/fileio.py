"""Crash-safe file primitives for the file store: flock locks, atomic JSON writes.

Locks are ``fcntl.flock`` on a per-data-file lock file (``DATA_DIR/.locks/<area>/<name>
.lock``), opened anew for every acquisition: flock belongs to the open file
description, so it excludes other threads of this process as well as other processes.
The data file itself cannot carry the lock because an atomic write replaces its inode.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from donnadb.dal.errors import LockTimeout
from donnadb.errors import DataError

DIR_MODE = 0o700
FILE_MODE = 0o600
#: Longest file name Linux file systems take (bytes, NAME_MAX), suffix included.
NAME_MAX = 255


class UnsafeNameError(DataError):
    """A name taken from data (a chat id, a user key, a legacy source) cannot be a file name."""


def check_file_name(name: object, what: str, suffix: str = "") -> str:
    """``name`` if ``name + suffix`` is one safe file name: a non-empty string with no
    ``/`` and no NUL, not ``.`` or ``..``, at most :data:`NAME_MAX` bytes in UTF-8.

    Every path the file store and the export build from data goes through this one check.

    :raises UnsafeNameError: it is not; the message names ``what`` and the value.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty" if name == "" else "it is not text"
    elif "/" in name or "\x00" in name:
        problem = "it holds '/' or NUL"
    elif name in (".", ".."):
        problem = "it is '.' or '..'"
    else:
        try:
            size = len((name + suffix).encode("utf-8"))
        except UnicodeEncodeError:
            size = NAME_MAX + 1
        if size > NAME_MAX:
            problem = f"it is longer than {NAME_MAX} bytes as a file name"
    if problem:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else \
            repr(name[:80]) + "..."
        raise UnsafeNameError(f"{what} {shown} cannot be a file name: {problem}")
    return name  # type: ignore[return-value]


def open_dir_under(root_fd: int, parts: tuple[str, ...] | list[str], *,
                   create: bool = False) -> int:
    """An fd of the folder ``root/parts...``, walked one component at a time from
    ``root_fd`` with ``O_NOFOLLOW`` (a symlink anywhere fails with ELOOP/ENOTDIR); missing
    folders are made 0700 when ``create``.

    :raises UnsafeNameError: a component is not a safe file name.
    :raises OSError: a component is a symlink, not a folder, or cannot be made.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            check_file_name(part, "folder name")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
            if create:
                os.fchmod(fd, DIR_MODE)  # mkdir's mode is filtered by the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_under(root_fd: int, parts: tuple[str, ...] | list[str]) -> int:
    """A new file ``root/parts...`` (0600, folders 0700 made as needed) open for writing:
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` below folders opened by :func:`open_dir_under`, so it is
    never an existing file nor reached through a symlink.

    :raises UnsafeNameError: a component is not a safe file name.
    :raises OSError: the file exists, or a component is a symlink.
    """
    check_file_name(parts[-1], "file name")
    folder = open_dir_under(root_fd, parts[:-1], create=True)
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, FILE_MODE, dir_fd=folder)
    finally:
        os.close(folder)
    os.fchmod(fd, FILE_MODE)
    return fd


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700; existing folders are left as they are.

    The legacy app's folders may be 0777; tightening them is reported by health_check
    rather than done here, because an old app running as another user may still need them.
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask


def acquire(lock_path: Path, timeout: float | None = None) -> int:
    """Take an exclusive flock on ``lock_path``; return the fd that holds it.

    ``timeout=None`` blocks; otherwise polls and raises :class:`LockTimeout`.
    """
    # O_NOFOLLOW: a symlink planted in a 0777 legacy folder must not make us create or
    # open a file elsewhere.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"could not lock {lock_path} within {timeout:g}s: another "
                        "transaction holds it; retry, or keep transactions short"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
    except BaseException:
        os.close(fd)
        raise


def release(fd: int) -> None:
    os.close(fd)  # closing the only fd of the open file description drops the flock


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_json(path: Path) -> Any | None:
    """The JSON document in ``path``; ``None`` when the file does not exist.

    :raises DataError: the file is empty or not valid JSON (a crash mid-write of the old
        app); it is never overwritten by this store.
    """
    raw = read_bytes(path)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); repair it or move it away "
            "(`donnactl migrate-data import` quarantines such files)"
        ) from None


def dump_json(document: Any) -> bytes:
    """Serialise for the file store; ASCII so NUL and lone surrogates survive as escapes.

    :raises DataError: ``document`` holds something JSON cannot represent.
    """
    try:
        return json.dumps(document, ensure_ascii=True, allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise DataError(f"value cannot be stored as JSON: {exc}") from None


def write_atomic(path: Path, payload: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``payload``: temp file in the same folder, fsync, rename,
    fsync of the folder. Readers see the old or the new file, never a torn one; the new
    file has ``mode`` (0600 unless told) whatever the old one had.

    :raises OSError: the write failed (a full disk...): ``path`` is as it was, no temp
        file is left, and the error names ``path``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        name_path(exc, path)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, payload: bytes, mode: int = FILE_MODE) -> None:
    """Create ``path`` holding ``payload`` (fsync'd); an existing file is never replaced.

    :raises FileExistsError: ``path`` exists (left alone).
    :raises OSError: the folder is missing, or the write failed (a full disk): then no
        file is left (an empty one would pass for a made one), and the error names
        ``path``.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        os.unlink(path)
        name_path(exc, path)
        raise


def name_path(exc: BaseException, path: Path) -> None:
    """Name ``path`` in an OSError of a failed write(), which names no file."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def sync_filesystem(fd: int) -> None:
    """Flush everything written to the file system holding ``fd`` (``syncfs(2)``): one
    call for a tree of tens of thousands of new files, where an fsync per file and per
    folder would cost more than writing them.

    :raises OSError: the kernel reports a write that did not reach the disk (EIO,
        ENOSPC) since the file system was last synced.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

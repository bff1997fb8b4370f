"""Per-entity figures of dual-write's copies to PostgreSQL, for ``health_check()`` and the
metrics: how long each copy took and how many writes were queued for reconcile.

Counts and sums run from the DAL's start (per process, like the cache's hit counters);
the p95 is over each entity's last :data:`WINDOW` copies, so it follows the present
load rather than the whole life of the process.

With MIGRATION_MIRROR_STATS_DIR set, each process also writes its figures to
``<dir>/<pid>.json`` (atomically, at most once per :data:`FLUSH_SECONDS`, from a timer
thread, never from a write) and `donnactl metrics` adds the files up (:func:`read_dir`).
Not prometheus_client's multiprocess mode, though it is made for this: an application
host installs the DAL alone, without prometheus_client; and that mode is switched on for
a whole process by PROMETHEUS_MULTIPROC_DIR in its environment before the import, so it
would also change the host application's own metrics, and could not follow our
settings file. Like that mode, a file outlives its process: its totals stay part of the
counters (a new process with the same pid starts its file again, a counter reset).

Unlike that mode, the files of processes gone do not pile up (a worker recycled every
few thousand requests would leave thousands): each process, at its first write, folds
the files of the folder's dead pids into one, :data:`FOLDED` (:func:`fold_dead`), and
removes them. The sum a reader sees never changes by a fold, even one killed half-way:
``folded.json`` lists each file it holds with the SHA-256 of its content, and the
reader counts a process file only when it is not listed with that content. The folder
is one host's: a pid is alive or dead on this host only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from donnadb.dal.phases import ENTITIES

log = logging.getLogger(__name__)

#: The entity each mirrored write belongs to (the ``op`` of dual-write's ``_mirror``).
OP_ENTITY = {
    "create_user": "users", "update_user": "users",
    "set_user_memory": "memory", "delete_user_memory": "memory",
    "create_chat_session": "chats", "update_chat_session": "chats",
    "add_message": "messages",
    "write_log": "logs",
}
#: Copies per entity the p95 is computed over.
WINDOW = 1000
#: Upper bounds (seconds) of the copy-time histogram's buckets (+Inf is implied): a copy
#: is one or a few statements through PgBouncer, a few milliseconds when well.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: A process's stats file is rewritten at most this often, this long after a change.
FLUSH_SECONDS = 1.0
#: The stats files' format; a reader skips other versions.
FORMAT = 1
#: The figures of processes gone, added up, and the files they came from.
FOLDED = "folded.json"
#: Taken while folding, so that two processes starting at once fold a file once.
FOLD_LOCK = ".fold.lock"


class _Entity:
    def __init__(self) -> None:
        self.copies = 0
        self.seconds = 0.0
        self.failures = 0
        self.recent: deque[float] = deque(maxlen=WINDOW)
        #: Copies per bucket of BUCKETS, the last one over every bound (not cumulative).
        self.buckets = [0] * (len(BUCKETS) + 1)


class MirrorStats:
    """Thread-safe counters per entity; ``copied(op, seconds)``, ``queued(ops)``.
    ``stats_dir``: also write them there for `donnactl metrics` (module docstring)."""

    def __init__(self, stats_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._entities = {entity: _Entity() for entity in ENTITIES}
        self.stats_dir = stats_dir
        self._timer: threading.Timer | None = None
        self._warned = False
        self._folded = False

    def copied(self, op: str, seconds: float) -> None:
        """A copy of ``op``'s write to PostgreSQL ran for ``seconds`` (it may have failed).
        An op without an entity is not counted: figures never fail a write."""
        with self._lock:
            e = self._entity(op)
            if e is None:
                return
            e.copies += 1
            e.seconds += seconds
            e.recent.append(seconds)
            e.buckets[next((i for i, bound in enumerate(BUCKETS) if seconds <= bound),
                           len(BUCKETS))] += 1
        self._changed()

    def queued(self, ops: list[str]) -> None:
        """These writes (one op each) were queued for reconcile: PostgreSQL missed them."""
        with self._lock:
            for op in ops:
                e = self._entity(op)
                if e is not None:
                    e.failures += 1
        self._changed()

    def _entity(self, op: str) -> _Entity | None:
        entity = OP_ENTITY.get(op)
        return None if entity is None else self._entities[entity]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{entity: {"copies", "seconds_sum", "seconds_p95", "failures"}}`` for every
        entity (zeros, and a p95 of ``None``, where nothing was copied)."""
        with self._lock:
            return {name: {"copies": e.copies, "seconds_sum": round(e.seconds, 6),
                           "seconds_p95": p95(e.recent), "failures": e.failures}
                    for name, e in self._entities.items()}


    # ------------------------------------------------------------------ the stats file
    def _changed(self) -> None:
        """Have the file rewritten within FLUSH_SECONDS (one timer at a time; a timer
        of the parent is not alive in a forked child, which starts its own)."""
        if self.stats_dir is None:
            return
        with self._lock:
            if self._timer is not None and self._timer.is_alive():
                return
            self._timer = threading.Timer(FLUSH_SECONDS, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Write this process's figures to ``<stats_dir>/<pid>.json`` now. A failure is
        logged (once) and dropped: figures never fail the application."""
        if self.stats_dir is None:
            return
        with self._lock:
            document = {"v": FORMAT, "pid": os.getpid(), "buckets": list(BUCKETS),
                        "entities": {name: {"copies": e.copies, "seconds_sum": e.seconds,
                                            "failures": e.failures, "buckets": list(e.buckets)}
                                     for name, e in self._entities.items()}}
        try:
            _write(self.stats_dir / f"{os.getpid()}.json",
                   json.dumps(document).encode("ascii"))
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the dual-write figures to %s (metrics miss this "
                            "process): %s", self.stats_dir, exc)
                self._warned = True
            return
        if not self._folded:
            # Once per process, from the timer thread (never from a write): the files of
            # processes gone since the last fold become one.
            self._folded = True
            try:
                fold_dead(self.stats_dir)
            except (OSError, ValueError) as exc:
                log.info("dual-write figures of processes gone left unfolded in %s: %s",
                         self.stats_dir, exc)

    def close(self) -> None:
        """Write the last figures (the DAL's close)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()


def _write(path: Path, payload: bytes) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new file). 0640: the
    metrics job reads it through the folder's group; no fsync, figures may be lost in a
    crash. The folder is made (0750) when missing."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_dir(stats_dir: Path) -> dict[str, dict[str, Any]]:
    """Every process's figures added up, those folded into :data:`FOLDED` included:
    ``{entity: {"copies", "seconds_sum", "failures", "buckets"}}`` (buckets cumulative,
    one per BUCKETS bound then +Inf), for every entity. A missing folder is no figures;
    an unreadable file (being replaced, another format) is skipped.

    :raises OSError: the folder cannot be listed (permissions).
    """
    total = {name: {"copies": 0, "seconds_sum": 0.0, "failures": 0,
                    "buckets": [0] * (len(BUCKETS) + 1)} for name in ENTITIES}
    # The process files first, then the folded ones: a fold that ran in between listed
    # what it took with the content read here, so nothing is counted twice or missed.
    files = _process_files(stats_dir)
    folded = _read_folded(stats_dir)
    parts = [f for name, (digest, f) in files.items() if folded.files.get(name) != digest]
    for figures in [*parts, folded.figures]:
        for entity, (copies, seconds, failures, buckets) in figures.items():
            t = total[entity]
            t["copies"] += copies
            t["seconds_sum"] += seconds
            t["failures"] += failures
            t["buckets"] = [a + b for a, b in zip(t["buckets"], buckets, strict=True)]
    for t in total.values():
        running = 0
        for i, n in enumerate(t["buckets"]):
            running += n
            t["buckets"][i] = running
    return total


#: One document's figures: entity -> (copies, seconds, failures, buckets not cumulative).
Figures = dict[str, tuple[int, float, int, list[int]]]


def _figures(raw: bytes) -> Figures:
    """The figures of a stats document.

    :raises ValueError, KeyError, TypeError, AttributeError: not one of this format.
    """
    document = json.loads(raw)
    if document.get("v") != FORMAT or document.get("buckets") != list(BUCKETS):
        raise ValueError("another format")
    # Read the whole file before adding any of it: a bad file counts for nothing.
    figures = {entity: (int(f["copies"]), float(f["seconds_sum"]), int(f["failures"]),
                        [int(n) for n in f["buckets"]])
               for entity, f in document["entities"].items() if entity in ENTITIES}
    if any(len(f[3]) != len(BUCKETS) + 1 for f in figures.values()):
        raise ValueError("a bucket count is missing")
    return figures


def _process_files(stats_dir: Path) -> dict[str, tuple[str, Figures]]:
    """``<pid>.json`` -> (SHA-256 of its content, its figures); a file that is gone or
    unreadable is left out (with a warning when it is there but bad)."""
    try:
        names = sorted(os.listdir(stats_dir))
    except FileNotFoundError:
        names = []
    out = {}
    for name in names:
        if name.startswith(".") or not name.endswith(".json") or name == FOLDED:
            continue
        try:
            raw = (stats_dir / name).read_bytes()
            out[name] = (hashlib.sha256(raw).hexdigest(), _figures(raw))
        except FileNotFoundError:
            continue  # folded and removed since the listing: counted in FOLDED
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("skipping the dual-write figures in %s: %s", stats_dir / name, exc)
    return out


class _Folded(NamedTuple):
    figures: Figures
    #: Each process file added into ``figures``: its name and content's SHA-256.
    files: dict[str, str]
    #: The file is there but does not read: a fold must not write over it.
    unreadable: bool = False


def _read_folded(stats_dir: Path) -> _Folded:
    """:data:`FOLDED`'s figures (none when there is no such file, or it does not read:
    a reader skips it, with a warning, as any bad file, and marks it ``unreadable``)."""
    try:
        raw = (stats_dir / FOLDED).read_bytes()
    except FileNotFoundError:
        return _Folded({}, {})
    try:
        files = json.loads(raw)["files"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("a file's digest is not text")
        return _Folded(_figures(raw), files)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("skipping the dual-write figures in %s: %s", stats_dir / FOLDED, exc)
        return _Folded({}, {}, unreadable=True)


def fold_dead(stats_dir: Path) -> int:
    """Add the files of this folder's processes that are gone into :data:`FOLDED`, then
    remove them; return how many. One fold at a time (a lock file). Killed at any
    point, the sum :func:`read_dir` gives is unchanged, and the next fold finishes.

    :raises OSError: the folder cannot be written (another user's): nothing changed.
    :raises ValueError: :data:`FOLDED` is unreadable (it is left for an operator).
    """
    lock_fd = os.open(stats_dir / FOLD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        folded = _read_folded(stats_dir)
        if folded.unreadable:
            raise ValueError(f"{stats_dir / FOLDED} is unreadable; move it aside")
        files = _process_files(stats_dir)
        # A listed file that is gone, or rewritten by a new process with its pid, is
        # no longer one to skip.
        kept = {n: d for n, d in folded.files.items() if files.get(n, ("",))[0] == d}
        taken = {n: f for n, f in files.items()
                 if n not in kept and not _alive(n.removesuffix(".json"))}
        listed = {**kept, **{n: digest for n, (digest, _) in taken.items()}}
        if listed != folded.files:
            _write(stats_dir / FOLDED, _folded_document(folded.figures, taken, listed))
        for name, digest in listed.items():  # the reader skips them already
            _remove_if(stats_dir / name, digest)
        return len(taken)
    finally:
        os.close(lock_fd)


def _folded_document(figures: Figures, taken: dict[str, tuple[str, Figures]],
                     listed: dict[str, str]) -> bytes:
    """:data:`FOLDED`'s new content: ``figures`` plus ``taken``'s, listing ``listed``."""
    sums = {entity: list(f) for entity, f in figures.items()}
    for _, add in taken.values():
        for entity, (copies, seconds, failures, buckets) in add.items():
            c, s, fl, b = sums.get(entity) or [0, 0.0, 0, [0] * (len(BUCKETS) + 1)]
            sums[entity] = [c + copies, s + seconds, fl + failures,
                            [x + y for x, y in zip(b, buckets, strict=True)]]
    document = {"v": FORMAT, "buckets": list(BUCKETS), "files": listed,
                "entities": {e: {"copies": c, "seconds_sum": s, "failures": fl,
                                 "buckets": b} for e, (c, s, fl, b) in sums.items()}}
    return json.dumps(document).encode("ascii")


def _remove_if(path: Path, digest: str) -> None:
    """Remove ``path`` if it still holds the content of ``digest`` (not a new process's
    file under a reused pid)."""
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _alive(pid: str) -> bool:
    """Whether process ``pid`` runs on this host (a name that is no pid counts as alive:
    it is not ours to fold)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def p95(values: deque[float] | list[float]) -> float | None:
    """Nearest-rank 95th percentile, ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 6)

"""The manifest: what a backup contains and how to prove it is intact.

One JSON document per backup (``manifest.json`` beside the ``dump/`` directory)
with the backup id, start/end time, server and schema versions, database size,
per-table row counts, the sha256 and size of every file, and the tool versions.
A backup without a manifest is not a backup.

``extra`` carries what restore drills compare (:func:`drill_facts`): per-partition
row counts and a content checksum per table, taken in the dump's snapshot. They live
there, not in fields of their own, so a donnadb that predates them still reads the
manifest, and a manifest that predates them still verifies (the signature covers
``extra``); such a manifest is drilled on row counts alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from donnadb.backup.dbfacts import CHECKSUM_ALGORITHMS, TableFacts
from donnadb.backup.errors import BackupCorrupt
from donnadb.dal.fileio import write_atomic

MANIFEST_NAME = "manifest.json"
#: The backup's files in ``sha256sum`` format (donnadb/backup/sums.py).
SUMS_NAME = "SHA256SUMS"
#: Files beside the dump that are not part of the backup's content.
META_NAMES = frozenset({MANIFEST_NAME, SUMS_NAME, "verify.json"})
#: 2: the manifest carries a signature (donnadb/backup/signing.py).
FORMAT_VERSION = 2
CHUNK = 1024 * 1024
#: The one backup id format (storage_local.new_backup_id): UTC time to the microsecond
#: (to the second in ids made before microseconds were added) and a random suffix. Ids
#: become directory names and S3 keys, so nothing else passes.
BACKUP_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}([0-9]{6})?Z-[0-9a-f]{4}$")
#: The one directory of a backup's files: pg_dump's directory output.
DUMP_DIR = "dump"
#: The one file layout: that output, flat, under ``dump/`` (``.enc`` when encrypted).
#: No other directory, no "..", no absolute path, nothing hidden.
FILE_PATH_RE = re.compile(rf"^{DUMP_DIR}/[A-Za-z0-9][A-Za-z0-9._-]{{0,254}}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: An age X25519 public key (agecrypt.RECIPIENT_RE).
AGE_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")


@dataclass
class FileEntry:
    path: str  # relative to the backup directory, "/" separated
    size: int
    sha256: str


@dataclass
class Manifest:
    backup_id: str
    database: str
    started_at: str
    finished_at: str
    server_version: str
    schema_version: str | None
    database_size: int
    row_counts: dict[str, int]
    files: list[FileEntry]
    tools: dict[str, str]
    compress_level: int
    jobs: int
    format_version: int = FORMAT_VERSION
    #: {algorithm, key_id} (crypto.py) or {"algorithm": "age", recipients: [age1...]}.
    encryption: dict[str, object] | None = None
    extra: dict[str, object] = field(default_factory=dict)
    signature: dict[str, str] | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def partition_counts(self) -> dict[str, int] | None:
        """Rows per leaf partition at snapshot time; None in manifests older than drills."""
        return _str_map(self.extra.get("partition_counts"), int)

    @property
    def checksum_algorithm(self) -> str | None:
        """How :attr:`checksums` were made (dbfacts.CHECKSUM_ALGORITHMS); None when
        this version does not know the method or the manifest predates drills."""
        algorithm = self.extra.get("checksum_algorithm")
        return algorithm if algorithm in CHECKSUM_ALGORITHMS else None

    @property
    def checksums(self) -> dict[str, str] | None:
        """Content checksum per table at snapshot time (:attr:`checksum_algorithm`);
        None in manifests older than drills, or made with a method this version does
        not know."""
        if self.checksum_algorithm is None:
            return None
        return _str_map(self.extra.get("checksums"), str)

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = "manifest") -> Manifest:
        """Parse a manifest.

        :raises BackupCorrupt: the text is not a manifest this version understands.
        """
        try:
            data = json.loads(text)
            files = [FileEntry(**f) for f in data.pop("files")]
            manifest = cls(files=files, **data)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupCorrupt(f"{where} is not a valid backup manifest ({exc})") from None
        if not isinstance(manifest.format_version, int):
            raise BackupCorrupt(f"{where} is not a valid backup manifest (format_version)")
        if manifest.format_version > FORMAT_VERSION:
            raise BackupCorrupt(
                f"{where} has format {manifest.format_version}; upgrade donnadb to read it"
            )
        problem = manifest.layout_problem()
        if problem:
            raise BackupCorrupt(f"{where} is refused: {problem}")
        return manifest

    def layout_problem(self) -> str | None:
        """Why this manifest's id or file list cannot be a backup of ours, or None.

        Checked before any path in it is used: a manifest from S3 is hostile input.
        """
        if not isinstance(self.backup_id, str) or not BACKUP_ID_RE.match(self.backup_id):
            return (f"backup id {self.backup_id!r} is not of the form "
                    "YYYYMMDDTHHMMSS[ffffff]Z-xxxx")
        seen = set()
        for entry in self.files:
            if not isinstance(entry.path, str) or not FILE_PATH_RE.match(entry.path):
                return f"file path {entry.path!r} is not dump/NAME (letters, digits, . _ -)"
            if entry.path in seen:
                return f"file path {entry.path!r} is listed twice"
            seen.add(entry.path)
            if (not isinstance(entry.size, int) or isinstance(entry.size, bool)
                    or entry.size < 0):
                return f"file {entry.path!r} has size {entry.size!r}"
            if not isinstance(entry.sha256, str) or not _SHA256_RE.match(entry.sha256):
                return f"file {entry.path!r} has no valid sha256"
        if self.encryption is not None and not _encryption_ok(self.encryption):
            return "its encryption field is malformed"
        return None


def _encryption_ok(encryption: object) -> bool:
    """A symmetric key's {algorithm, key_id}, or age's {algorithm: age, recipients}."""
    if not isinstance(encryption, dict):
        return False
    if encryption.get("algorithm") == "age":
        recipients = encryption.get("recipients")
        return (isinstance(recipients, list) and bool(recipients)
                and all(isinstance(r, str) and AGE_RECIPIENT_RE.match(r) for r in recipients))
    return all(isinstance(encryption.get(k), str) for k in ("algorithm", "key_id"))


def _str_map(value: object, kind: type) -> dict | None:
    """``value`` when it is a {str: kind} mapping (a manifest from S3 is hostile input),
    else None."""
    if not isinstance(value, dict):
        return None
    if all(isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool)
           for k, v in value.items()):
        return value
    return None


def drill_facts(facts: TableFacts, seconds: float) -> dict[str, object]:
    """The manifest's ``extra`` for a snapshot's :class:`~donnadb.backup.dbfacts.TableFacts`."""
    return {"partition_counts": facts.partition_counts, "checksums": facts.checksums,
            "checksum_algorithm": facts.checksum_algorithm, "facts_seconds": seconds}


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path, *, sync: bool = False) -> tuple[str, int]:
    """(hex sha256, size) of ``path``, read in 1 MiB chunks; with ``sync``, its data are
    also flushed to disk (fsync) before it is closed."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest(), size


def hash_tree(root: Path, *, workers: int = 1, sync: bool = False) -> list[FileEntry]:
    """A FileEntry for every regular file under ``root`` (except the manifest), in path
    order; with ``sync``, every file is also fsynced.

    ``workers`` files at a time, largest first: hashlib and fsync release the GIL, so a
    dump of a few large tables is read and flushed on every core instead of one.
    """
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel not in META_NAMES and path.is_file():
            found[rel] = path
    order = sorted(found, key=lambda rel: -found[rel].stat().st_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        sums = dict(zip(order, pool.map(lambda rel: sha256_file(found[rel], sync=sync),
                                        order), strict=True))
    return [FileEntry(path=rel, size=sums[rel][1], sha256=sums[rel][0])
            for rel in sorted(found)]


def check_files(root: Path, manifest: Manifest) -> list[str]:
    """Re-hash every file listed in ``manifest``; return one problem line per bad file.

    Extra files are problems too: something wrote into a finished backup.
    """
    problems = []
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        digest, size = sha256_file(path)
        if size != entry.size:
            problems.append(f"{entry.path}: size {size} != {entry.size}")
        elif digest != entry.sha256:
            problems.append(f"{entry.path}: sha256 mismatch")
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in listed and rel not in META_NAMES:
            problems.append(f"{rel}: not in the manifest")
    return problems


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file, fsync, rename) with mode 0600.

    :raises OSError: the write failed (a full disk): ``path`` is as it was, no temp file
        is left.
    """
    write_atomic(path, text.encode("utf-8"))


def load(backup_dir: Path) -> Manifest:
    """Read ``backup_dir/manifest.json``.

    :raises BackupCorrupt: the manifest is missing or unreadable.
    """
    path = backup_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupCorrupt(f"{path} is missing: the backup is incomplete") from None
    return Manifest.from_json(text, where=str(path))

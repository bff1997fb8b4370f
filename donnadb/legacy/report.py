"""What a pass over the legacy files met: quarantined files, notes, unsafe permissions.

The originals are never moved, copied or chmod-ed: the quarantine is a report naming
each file (or ``file:line``) and why it was not imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from donnadb.dal.fileio import write_atomic

#: At most this many world-writable paths are listed one by one (all are counted).
WORLD_WRITABLE_LISTED = 200


@dataclass
class Report:
    """Collected while reading; the CLI renders it, :meth:`write` saves it as JSON."""

    data_dir: str = ""
    quarantined: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    world_writable: list[str] = field(default_factory=list)
    world_writable_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def quarantine(self, path: str, reason: str, detail: str = "") -> None:
        """``path`` (relative to DATA_DIR, ``file:line`` for a log line) was not imported."""
        self.quarantined.append({"path": path, "reason": reason, "detail": detail[:300]})

    def note(self, path: str, kind: str, detail: str = "") -> None:
        """Something was normalised or resolved (imported anyway): kept for the audit."""
        self.notes.append({"path": path, "kind": kind, "detail": detail[:300]})
        self.counts[f"note:{kind}"] = self.counts.get(f"note:{kind}", 0) + 1

    def permissions(self, path: str) -> None:
        self.world_writable_count += 1
        if len(self.world_writable) < WORLD_WRITABLE_LISTED:
            self.world_writable.append(path)

    def add(self, counter: str, n: int = 1) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + n

    def merge(self, other: Report) -> None:
        """Add what ``other`` (a worker's pass over some files) met, after what this met."""
        self.quarantined.extend(other.quarantined)
        self.notes.extend(other.notes)
        for path in other.world_writable:
            self.permissions(path)
        self.world_writable_count += other.world_writable_count - len(other.world_writable)
        for counter, n in other.counts.items():
            self.add(counter, n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "quarantined": sorted(self.quarantined, key=lambda q: q["path"]),
            "notes": self.notes,
            "world_writable": {"count": self.world_writable_count,
                               "paths": self.world_writable},
            "counts": dict(sorted(self.counts.items())),
        }

    def write(self, report_dir: Path, name: str, extra: dict[str, Any] | None = None) -> Path:
        """Write ``<report_dir>/<name>-<UTC time>.json`` (dir 0700, file 0600); return it."""
        payload = self.as_dict()
        if extra:
            payload.update(extra)
        return write_private_json(
            report_dir / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.json",
            payload,
        )


def write_private_json(path: Path, payload: Any) -> Path:
    """Write JSON readable by its owner only (the report names users' files).

    :raises OSError: the folder cannot be made or the write failed (nothing is left).
    """
    text = json.dumps(payload, indent=2, default=str, sort_keys=True) + "\n"
    return _write_private(path, text.encode("utf-8"))


def write_private_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write one JSON document a line, readable by its owner only (like
    :func:`write_private_json`)."""
    text = "".join(json.dumps(row, default=str, sort_keys=True) + "\n" for row in rows)
    return _write_private(path, text.encode("utf-8"))


def _write_private(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, payload)  # 0600; a full disk leaves no partial report
    return path

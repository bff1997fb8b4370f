"""The erasures ledger's copy in S3: a restore after losing the host still erases again
whoever was forgotten since the backup.

A database's ledger (``erasures``: a user's id and the time, nothing personal;
donnadb/ops/users.py) lives with the database, so a host lost with its disk takes the
ledger since the last backup with it. Each entry is therefore copied to the backups'
bucket as one object, ``<BACKUP_S3_PREFIX>erasures/<database>/<user id>.json``, beside a
``pushed.json`` saying when the ledger was last copied:

- ``users forget`` copies after its commit, ``backup create`` after its upload, and
  ``backup push-erasures`` on demand; each uploads the entries the bucket lacks (one
  listing, one PUT per missing entry), so the next one makes good a copy that failed.
- A restore reads the copies of the databases whose ledgers it looks for, beside their
  live ledgers (donnadb/backup/erasures.py).
- Each entry carries an HMAC under BACKUP_SIGNING_KEY_FILE, as manifests do: whoever can
  write the bucket could otherwise have any user erased by the next restore. An entry
  that fails it is not applied, and the restore names it.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from donnadb.backup import signing
from donnadb.backup.errors import BackupError
from donnadb.backup.storage_s3 import S3Store
from donnadb.config import Settings
from donnadb.ops import users

FOLDER = "erasures"
PUSHED = "pushed.json"
#: Domain separation from manifests signed with the same key.
_CONTEXT = b"donnadb-erasure-ledger-v1\0"


@dataclass
class Pushed:
    """What a push did: for ``--json``, the audit line and the command's summary."""

    database: str
    where: str
    ledger: int  # entries in the live ledger
    pushed: int  # uploaded now (the others were there)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Copy:
    """One database's ledger as read back from S3."""

    where: str
    found: bool  # a push ever reached this folder
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: Objects not applied: not valid JSON, another database's or user's, or not signed
    #: with a key of BACKUP_SIGNING_KEY_FILE.
    refused: list[str] = field(default_factory=list)


def _folder(store: S3Store, dbname: str) -> str:
    return f"{store.prefix}{FOLDER}/{dbname}/"


def _where(store: S3Store, dbname: str) -> str:
    return f"s3://{store.bucket}/{_folder(store, dbname)}"


def _body(dbname: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"database": dbname, "id": entry["id"],
            "erased_at": entry["erased_at"].astimezone(UTC).isoformat()}


def push(settings: Settings, dbname: str, *, store: S3Store | None = None) -> Pushed:
    """Upload the entries of ``dbname``'s ledger that the bucket lacks, then ``pushed.json``.

    :raises ConfigError: S3 or the signing key file is not configured or unreadable.
    :raises DatabaseError: the database cannot be reached.
    :raises BackupError: S3 refused or failed (what was uploaded stays: entries are
        immutable, the next push sends the rest).
    """
    store = store or S3Store(settings)
    key = signing.load_keys(settings)[0]
    ledger, missing = _missing(settings, dbname, store)
    for entry in missing:
        body = _body(dbname, entry)
        body["signature"] = signing.record_signature(body, key, _CONTEXT)
        store.put_small(f"{_folder(store, dbname)}{entry['id']}.json",
                        json.dumps(body, sort_keys=True).encode("ascii"))
    store.put_small(f"{_folder(store, dbname)}{PUSHED}", json.dumps(
        {"database": dbname, "entries": len(ledger),
         "at": datetime.now(UTC).isoformat()}).encode("ascii"))
    return Pushed(dbname, _where(store, dbname), len(ledger), len(missing))


def not_copied(settings: Settings, dbname: str, *, store: S3Store | None = None) -> int:
    """How many entries of ``dbname``'s ledger the bucket lacks (``backup check``).

    :raises DatabaseError: the database cannot be reached.
    :raises BackupError: S3 cannot be listed.
    """
    return len(_missing(settings, dbname, store or S3Store(settings))[1])


def _missing(settings: Settings, dbname: str, store: S3Store,
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``dbname``'s ledger, and its entries without an object in the bucket."""
    # As the backup role: the backup jobs (`backup create`, `check`) hold no other.
    ledger = users.read_ledger(settings, dbname, role="backup") or []
    try:
        present = {k.rsplit("/", 1)[-1] for k in _listed(store, dbname)}
    except Exception as exc:
        raise BackupError(f"cannot list the erasures ledger's copy {_where(store, dbname)}: "
                          f"{exc}") from None
    return ledger, [e for e in ledger if f"{e['id']}.json" not in present]


def pull(settings: Settings, dbname: str, *, store: S3Store | None = None) -> Copy:
    """``dbname``'s ledger as copied to S3: its authentic entries, and the objects refused.

    :raises ConfigError: S3 or the signing key file is not configured or unreadable.
    :raises BackupError: S3 cannot be listed or read.
    """
    store = store or S3Store(settings)
    keys = signing.load_keys(settings)
    copy = Copy(_where(store, dbname), found=False)
    try:
        listed = _listed(store, dbname)
        names = [k for k in listed if not k.endswith(f"/{PUSHED}")]
        with ThreadPoolExecutor(max(1, settings.backup_s3_concurrency)) as pool:
            bodies = list(pool.map(lambda k: store.client.get_object(
                Bucket=store.bucket, Key=k)["Body"].read(), names))
    except Exception as exc:
        raise BackupError(f"cannot read the erasures ledger's copy {copy.where}: {exc}") \
            from None
    copy.found = bool(listed)
    for name, body in zip(names, bodies, strict=True):
        entry = _authentic(body, name, dbname, keys)
        if entry is None:
            copy.refused.append(f"s3://{store.bucket}/{name}")
        else:
            copy.entries.append(entry)
    copy.entries.sort(key=lambda e: (e["erased_at"], e["id"]))
    return copy


def _listed(store: S3Store, dbname: str) -> list[str]:
    paginator = store.client.get_paginator("list_objects_v2")
    return [o["Key"] for page in paginator.paginate(Bucket=store.bucket,
                                                    Prefix=_folder(store, dbname))
            for o in page.get("Contents", [])]


def _authentic(raw: bytes, name: str, dbname: str, keys) -> dict[str, Any] | None:
    """The ledger entry ``raw`` holds, or None unless it is one, for ``dbname``, named for
    its user, and signed with one of ``keys``."""
    try:
        body = json.loads(raw)
        signature = body.pop("signature")
        user_id = str(uuid.UUID(body["id"]))
        erased_at = datetime.fromisoformat(body["erased_at"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if (set(body) != {"database", "id", "erased_at"} or body["database"] != dbname
            or not name.endswith(f"/{user_id}.json") or erased_at.tzinfo is None
            or not isinstance(signature, dict)):
        return None
    key = signing.signer(signature, keys)
    if key is None or not signing.mac_holds(signature, body, key, _CONTEXT):
        return None
    return {"id": user_id, "erased_at": erased_at}

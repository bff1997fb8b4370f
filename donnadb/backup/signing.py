"""Manifest authentication: an HMAC-SHA256 under a key that only the backup hosts hold.

Whoever can write the bucket (the S3 credential, a leaked access key) can upload any
object, so a manifest read from S3 decides nothing until its MAC checks out: the file
list, the hashes and the ``encryption`` field are all covered. The key lives in
BACKUP_SIGNING_KEY_FILE (root, 0600; the deploy generates it), never in S3 or the
manifest. Same file format as the encryption key file (donnadb/backup/crypto.py): one
64-hex-character key per line, the FIRST signs new manifests, every line verifies, so
rotation is "add the new key on top, keep the old ones until their backups are gone".
Keep a copy of the file with the encryption key: restoring on a new host needs both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict

from donnadb.backup import crypto
from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt
from donnadb.config import Settings
from donnadb.errors import ConfigError

ALGORITHM = "HMAC-SHA256"
#: Domain separation: a key used elsewhere (by mistake) never yields a valid MAC here.
_CONTEXT = b"donnadb-backup-manifest-v1\0"


def load_keys(settings: Settings) -> list[crypto.Key]:
    """The signing keys, the current (first) one first.

    :raises ConfigError: no key file is configured, or it is missing, open to others
        or malformed (the message names the file and the fix).
    """
    path = settings.backup_signing_key_file
    if path is None:
        raise ConfigError("BACKUP_SIGNING_KEY_FILE is not set; backups are signed so that "
                          "S3 cannot forge them: run `make deploy` or `donnactl backup "
                          "keygen --signing FILE` and set it")
    if not path.exists():
        raise ConfigError(f"backup signing key file {path} is missing; restore it from your "
                          f"key escrow, or create one with `donnactl backup keygen --signing "
                          f"{path}` (new backups only)")
    return crypto.load_keys(path)


def _body(manifest: mf.Manifest) -> dict:
    body = asdict(manifest)
    body.pop("signature", None)
    return body


def record_mac(body: dict, key: crypto.Key, context: bytes) -> str:
    """The MAC of ``body`` (a JSON object, canonical form) under ``key``; ``context``
    separates the kinds of record signed with the same key."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key.secret, context + canonical.encode("ascii"),
                    hashlib.sha256).hexdigest()


def record_signature(body: dict, key: crypto.Key, context: bytes) -> dict:
    """``body``'s signature under ``key``, as a record carries it."""
    return {"algorithm": ALGORITHM, "key_id": key.key_id,
            "mac": record_mac(body, key, context)}


def signer(signature: dict, keys: list[crypto.Key]) -> crypto.Key | None:
    """The key of ``keys`` that ``signature`` names, or None (another key, or another
    algorithm than ours)."""
    if signature.get("algorithm") != ALGORITHM:
        return None
    return next((k for k in keys if k.key_id == signature.get("key_id")), None)


def mac_holds(signature: dict, body: dict, key: crypto.Key, context: bytes) -> bool:
    """Whether ``signature``'s MAC is ``body``'s under ``key`` (compared in constant time)."""
    return hmac.compare_digest(str(signature.get("mac", "")), record_mac(body, key, context))


def sign(manifest: mf.Manifest, keys: list[crypto.Key]) -> None:
    """Set ``manifest.signature`` with the current key."""
    manifest.signature = record_signature(_body(manifest), keys[0], _CONTEXT)


def check(manifest: mf.Manifest, keys: list[crypto.Key], *, where: str) -> None:
    """Accept ``manifest`` only with a valid MAC under one of ``keys``.

    :raises BackupCorrupt: unsigned, signed with an unknown key, or altered.
    """
    signature = manifest.signature
    if not signature:
        raise BackupCorrupt(f"{where} is not signed; refusing it (a manifest from S3 must "
                            f"carry a signature made with BACKUP_SIGNING_KEY_FILE)")
    key = signer(signature, keys)
    if key is None:
        raise BackupCorrupt(f"{where} is signed with key id {signature.get('key_id')!r}, "
                            f"not a key of BACKUP_SIGNING_KEY_FILE; refusing it (add the "
                            f"old key to the file if it is yours)")
    if not mac_holds(signature, _body(manifest), key, _CONTEXT):
        raise BackupCorrupt(f"{where} fails authentication: it was altered after signing; "
                            f"refusing it")


def check_if_signed(settings: Settings, manifest: mf.Manifest, *, where: str) -> None:
    """For manifests in the local (root-only) repository: a signature there must hold.

    Unsigned local manifests are accepted (written by this host); S3 ones never are.

    :raises BackupCorrupt: signed, but the signature fails.
    :raises ConfigError: signed, and the key file cannot be read.
    """
    if manifest.signature:
        check(manifest, load_keys(settings), where=where)

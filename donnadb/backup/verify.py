"""``backup verify``: re-hash every file, check SHA256SUMS agrees with the manifest, and
optionally prove the backup restores.

Checksums alone do not prove a backup restores: ``--restore`` loads it into a
throwaway database, compares schema version and row counts with the manifest,
records how long that took, and drops the database again.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

from donnadb.backup import agecrypt, bootstrap, restore, signing, storage_local, sums
from donnadb.backup import manifest as mf
from donnadb.config import Settings
from donnadb.errors import DonnaError


@dataclass
class VerifyResult:
    backup_id: str
    ok: bool
    files_checked: int
    bytes_checked: int
    problems: list[str] = field(default_factory=list)
    restored: bool = False
    restore_seconds: float | None = None
    verified_at: str = field(default_factory=mf.now_utc)

    def to_dict(self) -> dict:
        return asdict(self)


def verify_backup(
    settings: Settings,
    backup: storage_local.LocalBackup,
    *,
    with_restore: bool = False,
    allow_unencrypted: bool = False,
) -> VerifyResult:
    """Verify ``backup``; the result is also recorded in its ``verify.json``.

    A failed verify marks the backup not good (retention and ``latest`` skip it).
    Never raises for a damaged backup: the result says so.

    :raises ConfigError, BackupError: ``with_restore``, an age backup, and no identity or
        not one of its recipients (nothing is recorded).
    """
    if backup.manifest is None:
        result = VerifyResult(backup.backup_id, False, 0, 0, ["manifest missing or unreadable"])
        storage_local.record_verify(backup, result.to_dict())
        return result
    encryption = backup.manifest.encryption or {}
    if with_restore and encryption.get("algorithm") == agecrypt.ALGORITHM:
        # No private key here (the normal case on a database host) or another one says
        # nothing about the backup: one error, and the backup is not marked failed.
        restore.decryption(settings, backup.manifest)
    # Prune skips a backup while its read lock is held (shared: restores may read too).
    with storage_local.reading(backup):
        result = _check(settings, backup, with_restore=with_restore,
                        allow_unencrypted=allow_unencrypted)
        storage_local.record_verify(backup, result.to_dict())
    return result


def _check(settings: Settings, backup: storage_local.LocalBackup, *, with_restore: bool,
           allow_unencrypted: bool) -> VerifyResult:
    """Re-hash, check the signature and (``with_restore``) restore into a throwaway."""
    problems = mf.check_files(backup.path, backup.manifest)
    problems += sums.check(backup.path, backup.manifest)
    try:
        signing.check_if_signed(settings, backup.manifest, where="manifest")
    except DonnaError as exc:
        problems.insert(0, str(exc))
    result = VerifyResult(backup.backup_id, not problems, len(backup.manifest.files),
                          backup.manifest.total_size, problems)
    if result.ok and with_restore:
        scratch = f"donna_verify_{secrets.token_hex(4)}"
        try:
            # A throwaway copy, dropped below: nobody reads the erased users in it.
            restored = restore.restore_backup(settings, backup, scratch,
                                              allow_unencrypted=allow_unencrypted,
                                              apply_erasures=False)
            result.restored = True
            result.restore_seconds = restored.seconds
        except DonnaError as exc:
            result.ok = False
            result.problems.append(f"restore: {exc}")
        finally:
            bootstrap.drop_database(scratch, port=settings.db_port)
    return result

"""Backup errors: each is a :class:`DonnaError` with the family's exit code
(the codes and their meanings are declared in :mod:`donnadb.errors`)."""

from __future__ import annotations

from donnadb.errors import BackupStale, DataError, DonnaError, NotFound, UsageError

__all__ = ["BackupCorrupt", "BackupError", "BackupNotFound", "BackupStale", "RestoreRefused"]


class BackupError(DonnaError):
    """A backup, upload or restore step failed (exit code 1)."""


class BackupNotFound(NotFound):
    """No backup with that id (or no backup at all) in the repository (exit code 12)."""


class BackupCorrupt(DataError):
    """A backup's files do not match its manifest, or the manifest is unreadable (6)."""


class RestoreRefused(UsageError):
    """The restore target holds data and --force was not given (exit code 3)."""

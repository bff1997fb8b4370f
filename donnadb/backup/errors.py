"""Backup errors: each is a :class:`DonnaError` with the family's exit codes
(:data:`donnadb.errors.EXIT_CODES` says what each code means)."""

from __future__ import annotations

from donnadb.errors import DataError, DonnaError, NotFound, UsageError


class BackupError(DonnaError):
    """A backup, upload or restore step failed (exit code 1)."""


class BackupNotFound(NotFound):
    """No backup with that id (or no backup at all) in the repository (exit code 12)."""


class BackupCorrupt(DataError):
    """A backup's files do not match its manifest, or the manifest is unreadable (6)."""


class RestoreRefused(UsageError):
    """The restore target holds data and --force was not given (exit code 3)."""


class BackupStale(DonnaError):
    """``backup check`` found no good backup recent enough (exit code 8)."""

    exit_code = 8


class DrillFailed(BackupError):
    """``backup drill``: a restored copy differs from its backup, or did not restore
    (exit code 1); the message names the table or the step."""

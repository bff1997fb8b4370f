"""Errors of field encryption (all are :class:`DonnaError`, with the family's codes)."""

from __future__ import annotations

from donnadb.errors import ConfigError, DataError


class KeyFileError(ConfigError):
    """CRYPTO_KEK_FILE is missing, readable by others, malformed, or lacks a key a
    stored data key needs (exit code 3)."""


class DecryptError(DataError):
    """A sealed value or a wrapped data key does not open: altered, moved to another
    row or field, or its user's data key was erased (exit code 6). The message names
    the row and field, never a value."""

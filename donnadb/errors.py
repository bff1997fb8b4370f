"""One exception family for the package, each with a fixed exit code.

``donnactl`` maps any :class:`DonnaError` to one line on stderr and its exit code;
the traceback goes to the log only.
"""

from __future__ import annotations

import psycopg


class DonnaError(Exception):
    """Base of every error donnadb raises on purpose."""

    exit_code = 1


class ConfigError(DonnaError):
    """A setting is missing or invalid."""

    exit_code = 3


class UsageError(DonnaError):
    """A command was called with arguments that cannot work together."""

    exit_code = 3


class DatabaseError(DonnaError, psycopg.OperationalError):
    """The database cannot be reached or refused us (wraps psycopg's error)."""

    exit_code = 4


class CredentialsError(DonnaError):
    """No usable password for a role (passfile missing, unreadable or lacking the role)."""

    exit_code = 4


class MigrationError(DonnaError):
    """The schema migrations cannot be applied as asked."""

    exit_code = 5


class DataError(DonnaError):
    """Input data is invalid (legacy files, backups, manifests)."""

    exit_code = 6

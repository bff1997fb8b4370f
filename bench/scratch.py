"""Throwaway databases for the benchmarks, bootstrapped like the deployed one.

They are made through the postgres superuser over the local socket, as a restore
makes its target (donnadb.backup.bootstrap), and named ``<prefix>_<random>`` so that
runs beside each other (or beside the tests) never meet.
"""

from __future__ import annotations

import uuid

from donnadb.backup import bootstrap
from donnadb.config import Settings


def create_scratch_database(settings: Settings, prefix: str = "donna_bench") -> str:
    """Create an empty database with the deploy's bootstrap (no migrations); its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    bootstrap.create_database(settings, name)
    return name


def drop_database(name: str) -> None:
    """Drop ``name`` (disconnecting its sessions) if it exists."""
    bootstrap.drop_database(name)

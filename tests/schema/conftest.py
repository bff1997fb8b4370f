"""A migrated scratch database shared by the read-only schema tests of one module."""

from __future__ import annotations

import pytest

from donnadb import db
from donnadb.config import load_settings
from donnadb.migrate import apply_migrations
from tests.support import create_scratch_database, drop_database


@pytest.fixture(scope="module")
def migrated_db():
    """Name of a bootstrapped, fully migrated database; dropped after the module."""
    s = load_settings()
    name = create_scratch_database(s)
    try:
        apply_migrations(settings=s, dbname=name)
        yield name
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def catalog(migrated_db):
    """A migrator connection to :func:`migrated_db` (reads catalogs only)."""
    conn = db.connect("migrator", settings=load_settings(), dbname=migrated_db, autocommit=True)
    yield conn
    conn.close()

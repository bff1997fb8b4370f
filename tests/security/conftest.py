"""The backup tests' fixtures (a seeded source database, a private repository, a
restore target), for the attacks that go through a backup and restore."""

from tests.backup.conftest import bs, source_db, target_name  # noqa: F401

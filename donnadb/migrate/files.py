"""Discovering migration files on disk and fingerprinting them.

A migration is ``schema/migrations/NNNN_name.sql``: a four-digit version, an underscore,
a lower-case name. Its checksum is the SHA-256 of the file's bytes, so any edit (even
whitespace) to an applied file is detected.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from donnadb.errors import MigrationError

#: ``0001_initial_schema.sql`` -> version ``0001``, name ``initial_schema``.
FILENAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
#: First line of a migration run statement by statement, outside a transaction.
NO_TRANSACTION = "-- donnadb: no-transaction"


@dataclass(frozen=True)
class MigrationFile:
    """One forward-only migration as found on disk."""

    version: str
    name: str
    path: Path
    checksum: str

    def read_sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def transactional(self) -> bool:
        """False for a file whose first line is :data:`NO_TRANSACTION` (for statements
        PostgreSQL refuses inside a transaction, as ``CREATE INDEX CONCURRENTLY``)."""
        return self.read_sql().split("\n", 1)[0].strip() != NO_TRANSACTION

    def statements(self) -> list[str]:
        """The statements of a file run outside a transaction, one by one: each ends with
        a semicolon at the end of a line (no function bodies in such a file)."""
        out: list[list[str]] = [[]]
        for line in self.read_sql().splitlines():
            out[-1].append(line)
            if line.rstrip().endswith(";"):
                out.append([])
        if _has_sql(out[-1]):
            raise MigrationError(f"migration {self.path.name}: its last statement does not "
                                 "end with ';' at the end of a line: add it")
        return ["\n".join(lines) for lines in out if _has_sql(lines)]


def _has_sql(lines: list[str]) -> bool:
    return any(ln.strip() and not ln.strip().startswith("--") for ln in lines)


def checksum_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def discover(schema_dir: Path) -> list[MigrationFile]:
    """Every migration in ``schema_dir``, ordered by version.

    Files not ending in ``.sql`` are ignored; a ``.sql`` file whose name does not follow
    ``NNNN_name.sql`` is an error rather than being silently skipped.

    :raises MigrationError: the directory is missing, a name is malformed, a file is
        empty, or two files share a version.
    """
    if not schema_dir.is_dir():
        raise MigrationError(
            f"migration directory {schema_dir} does not exist; set SCHEMA_DIR to schema/migrations"
        )
    found: dict[str, MigrationFile] = {}
    for path in sorted(schema_dir.glob("*.sql")):
        match = FILENAME_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"migration file {path.name} is misnamed; rename it to NNNN_lower_case_name.sql"
            )
        data = path.read_bytes()
        if not data.strip():
            raise MigrationError(f"migration file {path.name} is empty; write its SQL or delete it")
        version = match["version"]
        if version in found:
            raise MigrationError(
                f"migrations {found[version].path.name} and {path.name} share version {version};"
                " renumber the newer one"
            )
        found[version] = MigrationFile(
            version=version,
            name=match["name"],
            path=path,
            checksum=checksum_bytes(data),
        )
    return [found[v] for v in sorted(found)]

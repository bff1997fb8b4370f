"""One table of exit codes: donnadb.errors.EXIT_CODES, the same in the README and the
runbook, and one meaning per code: each code is introduced by the classes listed here
and no other."""

from __future__ import annotations

import importlib
import pkgutil
from collections import defaultdict
from pathlib import Path

import pytest

import donnadb
from donnadb import errors

ROOT = Path(__file__).resolve().parents[1]
#: Modules that monkey-patch the interpreter on import (gevent): never imported here.
PATCHING = {"donnadb.loadtest.locustfile", "donnadb.loadtest.smoke"}
#: Codes no exception carries: success, `health` CRITICAL, a "no" at a prompt.
NOT_RAISED = {0, 2, 130}
#: The classes that introduce each code (their subclasses inherit it). Two classes
#: share a code only when they mean the same thing to the operator.
INTRODUCED_BY = {
    1: {"DonnaError"},
    3: {"ConfigError", "UsageError"},
    4: {"DatabaseError", "CredentialsError"},
    5: {"MigrationError"},
    6: {"DataError"},
    7: {"RotationError"},
    8: {"BackupStale"},
    9: {"SloViolation"},
    10: {"LocustFailed"},
    11: {"PreconditionError"},
    12: {"NotFound"},
    13: {"PartitionError"},
    14: {"UpdateRefused"},
    15: {"UpdateFailed"},
}


@pytest.mark.parametrize("doc", ["README.md", "docs/runbook.md"])
def test_each_copy_of_the_table_is_the_generated_one(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert text.count(errors.TABLE_BEGIN) == 1, f"{doc}: one exit-code table, between markers"
    start = text.index(errors.TABLE_BEGIN)
    end = text.index(errors.TABLE_END) + len(errors.TABLE_END)
    assert text[start:end] == errors.exit_code_table(), (
        f"{doc} differs from donnadb.errors.exit_code_table(); paste its output in")


def _every_error_class() -> list[type]:
    for info in pkgutil.walk_packages(donnadb.__path__, "donnadb."):
        if info.name not in PATCHING:
            importlib.import_module(info.name)
    found, pending = [], [errors.DonnaError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("donnadb"):
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_code_has_one_meaning_and_every_row_is_used():
    introduced = defaultdict(set)
    for cls in _every_error_class():
        assert cls.exit_code in errors.EXIT_CODES, f"{cls}: exit code not in the table"
        parent_codes = {base.exit_code for base in cls.__bases__
                        if issubclass(base, errors.DonnaError)}
        if cls.exit_code not in parent_codes:
            introduced[cls.exit_code].add(cls.__name__)
    assert dict(introduced) == INTRODUCED_BY
    assert set(errors.EXIT_CODES) == set(INTRODUCED_BY) | NOT_RAISED


def test_the_codes_that_used_to_mean_two_things_are_apart():
    from donnadb.backup.errors import BackupStale
    from donnadb.loadtest.runner import LocustFailed

    assert errors.DatabaseError.exit_code != errors.PreconditionError.exit_code
    assert BackupStale.exit_code != LocustFailed.exit_code
    assert errors.NotFound.exit_code != errors.DataError.exit_code
    assert errors.EXIT_CODES[2].startswith("`health` only")

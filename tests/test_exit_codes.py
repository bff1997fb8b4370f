"""One table of exit codes: generated from donnadb.errors, the same in the README and the
runbook, one meaning per code, and no class elsewhere choosing a code of its own."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import donnadb
from donnadb import errors

ROOT = Path(__file__).resolve().parents[1]
#: Modules that monkey-patch the interpreter on import (gevent): never imported here.
PATCHING = {"donnadb.loadtest.locustfile", "donnadb.loadtest.smoke"}


def _between_markers(text: str) -> str:
    start = text.index(errors.TABLE_BEGIN)
    end = text.index(errors.TABLE_END) + len(errors.TABLE_END)
    return text[start:end]


@pytest.mark.parametrize("doc", ["README.md", "docs/runbook.md"])
def test_each_copy_of_the_table_is_the_generated_one(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert text.count(errors.TABLE_BEGIN) == 1, f"{doc}: one exit-code table, between markers"
    assert _between_markers(text) == errors.exit_code_table(), (
        f"{doc} differs from donnadb.errors.exit_code_table(); paste its output in")


def _every_error_class() -> list[type]:
    for info in pkgutil.walk_packages(donnadb.__path__, "donnadb."):
        if info.name not in PATCHING:
            importlib.import_module(info.name)
    found, pending = [], [errors.DonnaError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("donnadb"):  # not a test's own class
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_only_donnadb_errors_chooses_exit_codes():
    classes = _every_error_class()
    assert len(classes) > len(errors.exit_codes())  # the walk found the other modules' too
    own = [f"{c.__module__}.{c.__qualname__}" for c in classes
           if "exit_code" in vars(c) and c.__module__ != "donnadb.errors"]
    assert own == [], "declare the code in donnadb.errors and subclass it"
    table = errors.exit_codes()
    for cls in classes:
        assert cls.exit_code in table, cls


def test_no_code_means_two_things():
    table = errors.exit_codes()
    # The codes an operator reads about in the issue tracker stay apart.
    assert errors.DatabaseError.exit_code != errors.PreconditionError.exit_code
    assert errors.BackupStale.exit_code != errors.LocustFailed.exit_code
    assert errors.NotFound.exit_code != errors.DataError.exit_code
    assert table[2].startswith("`health` only")
    assert errors.UsageError.exit_code == errors.ConfigError.exit_code == 3


def test_a_second_meaning_for_a_code_is_refused():
    class Clash(errors.DonnaError):
        exit_code = errors.BackupStale.exit_code
        exit_meaning = "something else"

    try:
        with pytest.raises(AssertionError, match="two meanings"):
            errors.exit_codes()
    finally:
        Clash.exit_meaning = errors.BackupStale.exit_meaning  # keep later tables whole

"""pg_hba.conf: no trust; scram-sha-256 everywhere but the postgres superuser's peer lines;
TCP only as hostssl."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

HBA = Path("/etc/postgresql/15/main/pg_hba.conf")


def _entries(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_no_trust_and_scram_everywhere_but_postgres_peer(deployed):
    entries = _entries(HBA.read_text())
    assert entries
    assert not [e for e in entries if "trust" in e]
    for entry in entries:
        method = entry[-1]
        if method == "reject":
            assert entry[0] == "hostssl" and entry[3] == "all", entry
        elif method != "scram-sha-256":
            assert entry[0] == "local" and entry[2] == "postgres" and method == "peer", entry
    assert ["local", "all", "postgres", "peer"] in entries
    # Every TCP line is hostssl: a plain-text connection matches none.
    assert {e[0] for e in entries} == {"local", "hostssl"}


def test_live_rules_are_the_file_and_parse_cleanly(deployed):
    # pg_hba_file_rules shows what the server would load; a reload left it in force.
    rows = superuser_psql(
        "SELECT type, user_name::text, auth_method, coalesce(error, '') "
        "FROM pg_hba_file_rules ORDER BY line_number"
    ).splitlines()
    assert rows
    for row in rows:
        kind, users, method, error = row.split("|")
        assert error == ""
        assert method in ("scram-sha-256", "reject") or (
            kind == "local" and users == "{postgres}" and method == "peer")


def test_password_encryption_is_scram(deployed):
    assert superuser_psql("SHOW password_encryption") == "scram-sha-256"

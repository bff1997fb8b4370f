"""Personal data in physical backups: a throwaway cluster archiving to pgBackRest holds a
donnadb database whose users are written through the DAL with field encryption on.

Every file of the repository (backup files and archived WAL, stored uncompressed so the
bytes are searched as written) lacks each personal value, while a message text (not
encrypted) is found: the control that proves the search reads what the server wrote.
A point-in-time restore to a moment before `users forget` gets the erasure again: in
place at once, and for a copy beside the cluster the command to run is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from donnadb.backup import erasures, pitr
from donnadb.dal import PostgresDataAccess
from donnadb.migrate import apply_migrations
from donnadb.ops import users
from tests.backup.pgbackrest_cluster import drill_cluster, sh
from tests.security.test_field_encryption import Person
from tests.support import render_database_sql, superuser_psql

PORT, COPY_PORT = 5476, 5477
DONNACTL = str(Path(sys.executable).with_name("donnactl"))


def _roles_from(port: int) -> str:
    """The deployed cluster's roles with their password verifiers (never in argv)."""
    return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dumpall", "--roles-only",
                           "-p", str(port)], capture_output=True, text=True, check=True,
                          cwd="/").stdout


@pytest.fixture
def sealed_cluster(settings, sealed_settings):
    """(engine, work dir, settings aimed at it with encryption on, database name)."""
    with drill_cluster(PORT) as (eng, work):
        # Uncompressed: the search below reads the repository's bytes as the server wrote
        # them (zstd would hide a plaintext from a byte search, not from a thief).
        eng.config.write_text(eng.config.read_text().replace("compress-type=zst",
                                                             "compress-type=none"))
        preload = superuser_psql("SHOW shared_preload_libraries", port=settings.db_port)
        (eng.cluster.conf_dir / "conf.d" / "preload.conf").write_text(
            f"shared_preload_libraries = '{preload}'\n")
        sh("pg_ctlcluster", "15", eng.cluster.name, "restart")
        # CREATE ROLE postgres fails (it exists); every other statement must not.
        subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p",
                        str(PORT), "-d", "postgres"], input=_roles_from(settings.db_port),
                       capture_output=True, text=True, check=True, cwd="/")
        dbname = f"donna_phys_{uuid.uuid4().hex[:6]}"
        superuser_psql(f'CREATE DATABASE "{dbname}"', port=PORT)
        superuser_psql(render_database_sql(settings), dbname=dbname, port=PORT)
        aimed = sealed_settings.model_copy(update={"db_port": PORT, "pgbouncer_port": None,
                                                   "db_name": dbname})
        apply_migrations(settings=aimed, dbname=dbname)
        pitr.stanza_create(eng)
        yield eng, work, aimed, dbname


def _archived(eng: pitr.Engine) -> None:
    """Switch WAL and wait until the segment is in the repository."""
    superuser_psql("SELECT pg_switch_wal()", port=PORT)
    assert pitr.check(eng)["ok"]


def _files_holding(root: Path, needle: str) -> list[str]:
    data = needle.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*"))
            if p.is_file() and data in p.read_bytes()]


def test_a_pgbackrest_repository_holds_no_personal_plaintext(sealed_cluster):
    eng, work, aimed, dbname = sealed_cluster
    with PostgresDataAccess(aimed, dbname=dbname) as dal:
        alice = Person(dal, "alice")  # in the backup's data files
        pitr.physical_backup(eng, "full")
        bob = Person(dal, "bob")  # only in the archived WAL
        dal.update_user(bob.id, {"name": bob.name + "x"})
        assert bob.name + "x" == dal.get_user_by_id(bob.id)["name"]
    _archived(eng)
    repo = work / "repo"
    backups, wal = repo / "backup", repo / "archive"
    assert any(backups.rglob("*")) and any(wal.rglob("*"))

    for person in (alice, bob):
        for value in [*person.personal, bob.name + "x"]:
            assert _files_holding(repo, value) == [], f"{value} in clear in the repository"
    # The controls: message text is stored in clear, and the same search finds it in
    # the backup's data files (Alice's) and in the archived WAL (Bob's).
    assert _files_holding(backups, alice.said)
    assert _files_holding(wal, bob.said)
    assert not _files_holding(backups, bob.said)


def _pitr_env(eng: pitr.Engine, aimed, dbname: str, work: Path) -> dict[str, str]:
    return dict(os.environ, PGBACKREST_ENABLED="true", PGBACKREST_CONFIG=str(eng.config),
                PGBACKREST_INCLUDE_PATH=str(eng.include), PGBACKREST_STANZA=eng.stanza,
                PG_CLUSTER=eng.cluster.name, DB_PORT=str(PORT), DB_NAME=dbname,
                OPS_LOG_FILE=str(work / "ops.jsonl"), COLUMNS="250")


def test_pitr_to_before_an_erasure_erases_again_in_place_and_says_so_for_a_copy(
        sealed_cluster, sealed_settings):
    eng, work, aimed, dbname = sealed_cluster
    with PostgresDataAccess(aimed, dbname=dbname) as dal:
        alice, bob = Person(dal, "alice"), Person(dal, "bob")
    pitr.physical_backup(eng, "full")
    time.sleep(1.1)
    noted = datetime.fromisoformat(superuser_psql("SELECT now()", port=PORT))
    time.sleep(1.1)
    users.forget_user(aimed, alice.id, dbname=dbname)
    _archived(eng)
    left = f"SELECT count(*) FROM users WHERE id = '{alice.id}' AND wrapped_key IS NOT NULL"

    # A copy beside the cluster: left as restored (she is in it), and the command given.
    result, reapplied = erasures.restore_cluster(aimed, eng, pitr.Target.at_time(noted),
                                                 data_dir=work / "copy", port=COPY_PORT)
    assert superuser_psql(left, dbname=dbname, port=COPY_PORT) == "1"
    assert reapplied.ledger_from == [dbname] and reapplied.erased_again == []
    assert f"donnactl keys reapply-erasures --ledger-db {dbname} --dbname" in reapplied.note
    pitr.stop_copy(eng.cluster, work / "copy")

    # In place: the ledger read before the cluster stopped erases her again.
    done = subprocess.run([DONNACTL, "backup", "pitr", "--to", noted.isoformat(),
                           "--in-place", "--force", "--yes", "--json"],
                          env=_pitr_env(eng, aimed, dbname, work), capture_output=True,
                          text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["in_place"] and doc["erasures"] == {
        "ledger_from": [dbname], "ledger_entries": 1, "erased_again": 1, "note": None,
        "warnings": []}
    assert superuser_psql(left, dbname=dbname, port=PORT) == "0"
    assert superuser_psql(f"SELECT count(*) FROM users WHERE id = '{alice.id}'",
                          dbname=dbname, port=PORT) == "0"
    with PostgresDataAccess(aimed, dbname=dbname) as dal:
        assert dal.get_user_by_id(alice.id) is None
        assert bob.readable(dal)
    assert '"erasures applied again to restored data"' in (work / "ops.jsonl").read_text()

"""backup -> restore -> compare, against the real PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from donnadb.backup import restore, snapshot, storage_local
from donnadb.backup.errors import BackupCorrupt, RestoreRefused
from donnadb.errors import DiskWriteError, UsageError
from tests.backup.conftest import table_checksums
from tests.support import render_database_sql, small_disk, superuser_psql

#: The small-disk server's port.
ROOM_PORT = 5457


def test_round_trip_every_row_identical(settings, bs, source_db, target_name):
    backup = snapshot.create_backup(bs, dbname=source_db)
    result = restore.restore_backup(bs, backup, target_name)

    before, after = table_checksums(source_db), table_checksums(target_name)
    assert "public.messages" in before and "partman.part_config" in before
    assert after == before
    assert result.ok and result.row_counts["public.messages"] == 400
    assert result.schema_version == backup.manifest.schema_version is not None
    # Grants re-applied: the application role can read and write the restored tables.
    assert superuser_psql(
        f"SELECT has_table_privilege('{settings.db_role_app}', 'public.messages', 'INSERT')",
        dbname=target_name,
    ) == "t"
    owner = superuser_psql("SELECT tableowner FROM pg_tables WHERE tablename = 'messages'",
                           dbname=target_name)
    assert owner == settings.db_role_owner
    # PgBouncer's lookup (superuser-owned, made by the bootstrap, not by pg_restore) is
    # there, so the restored database is reachable through PgBouncer like the source.
    lookup = "SELECT p.proowner::regrole FROM pg_proc p WHERE p.oid = " \
             "to_regprocedure('pgbouncer.user_lookup(text)')"
    assert superuser_psql(lookup, dbname=target_name) == "postgres"


def test_refuses_non_empty_target_without_force(settings, bs, source_db, target_name):
    backup = snapshot.create_backup(bs, dbname=source_db)
    restore.restore_backup(bs, backup, target_name)
    superuser_psql("DELETE FROM user_memory", dbname=target_name)
    before = table_checksums(target_name)

    with pytest.raises(RestoreRefused, match="--force"):
        restore.restore_backup(bs, backup, target_name)
    assert table_checksums(target_name) == before  # untouched

    restore.restore_backup(bs, backup, target_name, force=True)
    assert table_checksums(target_name) == table_checksums(source_db)


def test_corrupted_file_fails_verify_before_touching_target(settings, bs, source_db,
                                                            target_name):
    backup = snapshot.create_backup(bs, dbname=source_db)
    victim = max((f for f in backup.manifest.files), key=lambda f: f.size)
    path = backup.path / victim.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(BackupCorrupt, match="sha256 mismatch"):
        restore.restore_backup(bs, backup, target_name)
    assert superuser_psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target_name}'") \
        == "0"


def test_live_database_needs_force(settings, bs, source_db):
    backup = snapshot.create_backup(bs, dbname=source_db)
    with pytest.raises(RestoreRefused, match="live database"):
        restore.restore_backup(bs, backup, settings.db_name)
    assert storage_local.resolve(bs.backup_repo_dir, "latest").backup_id == backup.backup_id


@pytest.mark.parametrize("name", ["host=elsewhere dbname=x", "a;b", "", "x" * 64])
def test_target_names_must_be_plain(settings, bs, name):
    backup = storage_local.LocalBackup("x", bs.backup_repo_dir, None, None)
    with pytest.raises(UsageError, match="plain database name"):
        restore.restore_backup(bs, backup, name)


@pytest.mark.parametrize("what, sql, kept", [
    ("view", "CREATE VIEW public.kept AS SELECT 1 AS one", "SELECT count(*) FROM public.kept"),
    ("function", "CREATE FUNCTION public.kept() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     "SELECT public.kept()"),
    ("sequence", "CREATE SEQUENCE public.kept", "SELECT count(*) FROM public.kept"),
])
def test_a_target_holding_anything_of_its_own_is_not_empty(settings, bs, source_db,
                                                           target_name, what, sql, kept):
    backup = snapshot.create_backup(bs, dbname=source_db)
    superuser_psql(f'CREATE DATABASE "{target_name}"')
    superuser_psql(render_database_sql(settings), dbname=target_name)
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n{sql}", dbname=target_name)
    with pytest.raises(RestoreRefused, match="not empty"):
        restore.restore_backup(bs, backup, target_name)
    assert superuser_psql(kept, dbname=target_name) == "1", f"the {what} was lost"


@pytest.mark.parametrize("name", ["postgres", "template1", "template0"])
def test_postgresql_s_own_databases_are_never_replaced(bs, source_db, name):
    backup = snapshot.create_backup(bs, dbname=source_db)
    with pytest.raises(RestoreRefused, match="never replaces it"):
        restore.restore_backup(bs, backup, name, force=True)
    assert superuser_psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"


@pytest.fixture
def small_server():
    """A throwaway cluster on ``ROOM_PORT`` with its data directory on a tmpfs of its
    own; yields that file system's mount point."""
    parent = Path(tempfile.mkdtemp(prefix="donna-room-", dir="/var/tmp"))  # noqa: S108
    parent.chmod(0o755)  # the postgres user walks through it
    name = f"room{uuid.uuid4().hex[:6]}"
    try:
        with small_disk(parent, "256m") as disk:
            disk.chmod(0o755)
            subprocess.run(["pg_createcluster", "15", name, "-p", str(ROOM_PORT), "-d",
                            str(disk / "data"), "--start"], check=True, capture_output=True)
            try:
                yield disk
            finally:
                subprocess.run(["pg_dropcluster", "--stop", "15", name], check=False,
                               capture_output=True)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_restore_without_room_on_the_server_s_disk_is_refused_before_anything(
        bs, source_db, target_name, small_server):
    backup = snapshot.create_backup(bs, dbname=source_db)
    # Room for the server to go on, not for the copy: the database, the WAL its load
    # writes and a margin.
    used = shutil.disk_usage(small_server).used
    subprocess.run(["mount", "-o", f"remount,size={used + 48 * 2**20}", str(small_server)],
                   check=True)
    aimed = bs.model_copy(update={"db_port": ROOM_PORT})
    with pytest.raises(DiskWriteError) as refused:
        restore.restore_backup(aimed, backup, target_name)
    message = str(refused.value)
    assert message.startswith(f"{small_server}/data has "), message
    assert f"restoring backup {backup.backup_id}" in message
    assert message.endswith("nothing was changed"), message
    assert superuser_psql("SELECT count(*) FROM pg_database WHERE datname LIKE "
                          f"'{target_name}%'", port=ROOM_PORT) == "0"

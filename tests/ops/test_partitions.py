"""Partition maintenance and retention against a migrated scratch database."""

import csv
import gzip
import io
import json
from datetime import UTC, datetime, timedelta

from donnadb.ops import partitions, retention
from tests.support import full_disk, one_line_error, superuser_psql

INSERT_LOG = ("INSERT INTO system_logs (level, message, created_at) "
              "SELECT 'info', 'old ' || g, %s::timestamptz + g * interval '1 minute' "
              "FROM generate_series(1, %s) g")


def _month_start(months_back: int) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def test_status_shows_coverage(settings, ops_db):
    result = partitions.status(settings, dbname=ops_db)
    assert result["present"] and result["current_covered"]
    assert result["ahead"] >= 1 and result["has_default"]


def test_maintain_archives_then_drops_old_partitions(settings, ops_db, connect_as, tmp_path,
                                                     cli):
    """With a one-month retention the partition of three months ago is archived (every
    row, gzip'd CSV) and dropped; newer ones stay; the run is recorded in system_logs."""
    old_month = _month_start(3)
    with connect_as("app", dbname=ops_db) as conn:
        conn.execute(INSERT_LOG, (old_month, 25))
        conn.execute(INSERT_LOG, (_month_start(0), 3))
    name = f"system_logs_p{old_month:%Y_%m}"
    env = {"LOG_RETENTION_MONTHS": "1", "LOG_ARCHIVE_DIR": str(tmp_path / "archive")}

    dry = cli("partitions", "maintain", "--dry-run", "--json", "--dbname", ops_db, env=env)
    assert dry.returncode == 0, dry.stderr
    assert name in [p["partition"] for p in json.loads(dry.stdout)["would_archive"]]
    assert superuser_psql(f"SELECT to_regclass('{name}') IS NOT NULL", ops_db) == "t"

    refused = cli("partitions", "maintain", "--dbname", ops_db, env=env, input="n\n")
    assert refused.returncode == 130 and name in refused.stdout, refused.stdout
    assert superuser_psql(f"SELECT to_regclass('{name}') IS NOT NULL", ops_db) == "t"

    done = cli("partitions", "maintain", "--yes", "--json", "--dbname", ops_db, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    archived = {a["partition"]: a for a in result["archived"]}
    assert archived[name]["rows"] == 25 and result["dropped"] >= 1
    assert superuser_psql(f"SELECT to_regclass('{name}') IS NULL", ops_db) == "t"
    archive = tmp_path / "archive" / f"{name}.csv.gz"
    assert archive.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(archive.read_bytes()).decode())))
    assert len(rows) == 25 and rows[0]["message"] == "old 1"
    assert superuser_psql("SELECT count(*) FROM system_logs WHERE message LIKE 'old %'",
                          ops_db) == "3"
    recorded = superuser_psql("SELECT count(*) FROM system_logs "
                              "WHERE message = 'partitions maintained'", ops_db)
    assert recorded == "1"


def test_a_full_archive_disk_drops_nothing_and_leaves_no_partial_archive(scratch_db,
                                                                        connect_as, tmp_path,
                                                                        cli):
    ops_db = scratch_db  # its own: the module's ops_db has its old partitions dropped
    old_month = _month_start(3)
    with connect_as("app", dbname=ops_db) as conn:
        conn.execute(INSERT_LOG, (old_month, 25))
    name = f"system_logs_p{old_month:%Y_%m}"
    with full_disk(tmp_path, {"archive/.keep": ""}) as disk:
        archive = disk / "archive"
        done = cli("partitions", "maintain", "--yes", "--dbname", ops_db,
                   env={"LOG_RETENTION_MONTHS": "1", "LOG_ARCHIVE_DIR": str(archive)})
        one_line_error(done, 1, f"cannot write {archive}/system_logs_p",
                       ".csv.gz: No space left", "free space")
        assert [p.name for p in archive.iterdir()] == [".keep"]
    assert superuser_psql(f"SELECT count(*) FROM {name}", ops_db) == "25"


def test_maintain_premakes_and_fills_gaps(settings, ops_db):
    gap = f"system_logs_p{_month_start(-2):%Y_%m}"
    superuser_psql(f"DROP TABLE {gap}", ops_db)
    further = f"system_logs_p{_month_start(-6):%Y_%m}"
    result = partitions.maintain(settings.model_copy(update={"partition_premake": 6}),
                                 dbname=ops_db)
    assert gap in result["created"] and further in result["created"]
    assert partitions.status(settings, dbname=ops_db)["ahead"] >= 6


def test_maintain_refuses_a_table_not_managed_by_partman(settings, ops_db):
    superuser_psql("UPDATE partman.part_config SET parent_table = 'public.elsewhere'", ops_db)
    try:
        try:
            partitions.maintain(settings, dbname=ops_db)
        except partitions.PartitionError as exc:
            assert "donnactl migrate apply" in str(exc)
        else:
            raise AssertionError("maintain ran without a partman configuration")
    finally:
        superuser_psql("UPDATE partman.part_config SET parent_table = 'public.system_logs'",
                       ops_db)


def test_retention_deletes_expired_memory_in_batches(settings, ops_db, connect_as, tmp_path):
    with connect_as("app", dbname=ops_db) as conn:
        uid = conn.execute("INSERT INTO users (clerk_id) VALUES ('ret') RETURNING id").fetchone()[0]
        past = datetime.now(UTC) - timedelta(days=1)
        conn.execute("INSERT INTO user_memory (user_id, memory_type, key, value, expires_at) "
                     "SELECT %s, 'context', 'k' || g, '1', %s FROM generate_series(1, 7) g",
                     (uid, past))
        conn.execute("INSERT INTO user_memory (user_id, memory_type, key, value, expires_at) "
                     "VALUES (%s, 'context', 'keep', '1', now() + interval '1 day'), "
                     "(%s, 'profile', 'forever', '1', NULL)", (uid, uid))
    s = settings.model_copy(update={"migration_batch_size": 3, "log_archive_dir": tmp_path})
    dry = retention.run(s, dbname=ops_db, dry_run=True)
    assert dry["user_memory"] == {"expired": 7, "deleted": 0}
    done = retention.run(s, dbname=ops_db)
    assert done["user_memory"] == {"expired": 7, "deleted": 7}
    left = superuser_psql("SELECT string_agg(key, ',' ORDER BY key) FROM user_memory", ops_db)
    assert left == "forever,keep"


def test_retention_asks_before_deleting(cli, ops_db):
    done = cli("retention", "run", "--dbname", ops_db, input="n\n")
    assert done.returncode == 130 and "aborted" in done.stderr.lower()


def test_rows_in_the_default_partition_are_a_warning(settings, ops_db, connect_as):
    from donnadb.ops import health, status

    with connect_as("app", dbname=ops_db) as conn:
        conn.execute("INSERT INTO system_logs (level, message, created_at) "
                     "VALUES ('info', 'from the future', '2100-01-01')")
    report = status.collect(settings, dbname=ops_db)
    assert report["partitions"]["default_rows"] == 1
    check = {c.name: c for c in health.evaluate(report, settings)}["partition_default"]
    assert check.severity == 1 and check.value == 1

"""Fixtures for the backup tests: a seeded source database and a private repository."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest

from donnadb.backup import crypto
from donnadb.backup.storage_s3 import S3_MIN_PART
from tests import s3tls
from tests.support import drop_database_and_copies, moto_server, superuser_psql

# Every table of the plan gets rows, including two partitions of system_logs and
# values that only survive a faithful round trip (NULLs, JSON, unicode, inet).
SEED_SQL = """
INSERT INTO users (clerk_id, email, name, profile, last_active_at)
SELECT 'clerk_' || g, 'u' || g || '@example.org', 'Zoë ' || g,
       jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)),
       CASE WHEN g % 3 = 0 THEN NULL ELSE now() - g * interval '1 hour' END
FROM generate_series(1, 40) g;
INSERT INTO chat_sessions (chat_id, user_id, title)
SELECT 'chat_' || clerk_id, id, 'Title “' || name || '”' FROM users;
INSERT INTO messages (chat_session_id, role, content, sequence_number, token_count)
SELECT cs.id, (ARRAY['user', 'assistant', 'system'])[1 + g % 3],
       repeat('hello ', g) || cs.chat_id, g, g * 7
FROM chat_sessions cs, generate_series(0, 9) g;
INSERT INTO user_memory (user_id, memory_type, key, value)
SELECT id, 'preferences', 'k' || g, to_jsonb(g) FROM users, generate_series(1, 3) g;
INSERT INTO system_logs (level, message, ip_address, created_at)
SELECT 'info', 'log ' || g, '10.0.0.1'::inet, now() - (g % 40) * interval '1 day'
FROM generate_series(1, 200) g;
"""

#: One md5 per table over every row (sorted text form) -- the "every row" comparison.
CHECKSUM_SQL = """
SELECT format('SELECT %L || '' '' || coalesce(md5(string_agg(t::text, ''|'' '
              'ORDER BY t::text)), ''-'') FROM %I.%I t',
              n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname IN ('public', 'partman')
ORDER BY 1 \\gexec
"""


def table_checksums(dbname: str) -> dict[str, str]:
    out = superuser_psql(CHECKSUM_SQL, dbname=dbname)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


@pytest.fixture
def bs(settings, tmp_path):
    """The deployment's settings with a private backup repository and signing key."""
    signing_key = tmp_path / "signing.key"
    crypto.generate_key_file(signing_key)
    return settings.model_copy(update={"backup_repo_dir": tmp_path / "repo", "backup_jobs": 2,
                                       "backup_signing_key_file": signing_key})


@pytest.fixture
def source_db(settings, scratch_db):
    """A migrated scratch database with rows in every table."""
    superuser_psql(f"SET ROLE {settings.db_role_owner};\n{SEED_SQL}", dbname=scratch_db)
    return scratch_db


@pytest.fixture
def target_name():
    """A database name for a restore; dropped after the test whatever happened."""
    name = f"donna_test_restore_{uuid.uuid4().hex[:8]}"
    yield name
    drop_database_and_copies(name)


BUCKET = "donna-backups-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bs(bs, s3_endpoint, request):
    prefix = f"t-{request.node.name[:40]}/"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return bs.model_copy(update={
        "backup_s3_bucket": BUCKET, "backup_s3_prefix": prefix,
        "backup_s3_endpoint_url": s3_endpoint, "backup_s3_region": "us-east-1",
        "backup_s3_min_part_size": S3_MIN_PART,
    })


TLS_BUCKET = "donna-pgbackrest-test"


@pytest.fixture(scope="module")
def tls_s3():
    """moto's S3 over TLS (tests/s3tls.py), for pgBackRest: (endpoint, boto3 client)."""
    # Not pytest's tmp_path (/tmp/pytest-of-root is 0700): pgBackRest (postgres) reads
    # the CA file.
    work = Path(tempfile.mkdtemp(prefix="donna-s3tls-", dir="/var/tmp"))  # noqa: S108
    work.chmod(0o755)
    server = s3tls.Server(work)
    endpoint = server.start()
    endpoint.ca_file.chmod(0o644)
    client = boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1",
                          verify=str(endpoint.ca_file), aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # noqa: S106 (moto's any key)
    client.create_bucket(Bucket=TLS_BUCKET)
    yield endpoint, client
    server.stop()
    shutil.rmtree(work, ignore_errors=True)

"""Support inspection and GDPR erasure against a migrated scratch database."""

import json
import uuid

import pytest

from donnadb.ops import users
from tests.support import superuser_psql


@pytest.fixture
def alice(ops_db, connect_as):
    """A user with two chats (3 messages), memory, and a log line naming her."""
    with connect_as("app", dbname=ops_db) as conn:
        uid = conn.execute("INSERT INTO users (clerk_id, email) VALUES (gen_random_uuid(), "
                           "'alice@example.org') RETURNING id").fetchone()[0]
        for chat, n in (("a1", 2), ("a2", 1)):
            sid = conn.execute("INSERT INTO chat_sessions (chat_id, user_id) VALUES "
                               "(%s || gen_random_uuid(), %s) RETURNING id",
                               (chat, uid)).fetchone()[0]
            conn.execute("INSERT INTO messages (chat_session_id, role, content, sequence_number) "
                         "SELECT %s, 'user', 'secret words', g FROM generate_series(1, %s) g",
                         (sid, n))
        conn.execute("INSERT INTO user_memory (user_id, memory_type, key, value) VALUES "
                     "(%s, 'profile', 'city', '\"Paris\"')", (uid,))
        conn.execute("INSERT INTO system_logs (level, message, context) VALUES "
                     "('info', 'login', jsonb_build_object('user_id', %s::text))", (uid,))
    return str(uid)


def test_inspect_user_shows_counts_and_keys_not_contents(cli, ops_db, alice):
    done = cli("users", "inspect", alice, "--json", "--dbname", ops_db)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["sessions"] == 2 and doc["messages"] == 3
    assert [(m["memory_type"], m["key"]) for m in doc["memory_keys"]] == [("profile", "city")]
    assert "secret words" not in done.stdout and "Paris" not in done.stdout
    screen = cli("users", "inspect", alice, "--dbname", ops_db)
    assert "2 sessions, 3 messages, 1 memory keys" in screen.stdout


@pytest.fixture
def sealed_bea(sealed_settings, ops_db):
    """A user written by the DAL with field encryption on: e-mail and name sealed."""
    from donnadb.dal import PostgresDataAccess

    clerk_id = f"bea-{uuid.uuid4().hex[:8]}"  # the module's database is shared
    with PostgresDataAccess(sealed_settings, dbname=ops_db, min_size=1) as dal:
        dal.create_user({"clerk_id": clerk_id, "email": "bea@example.org",
                         "name": "Bea Sealed"})
    return clerk_id


def test_inspect_opens_sealed_fields_with_the_key_file(cli, ops_db, sealed_bea, kek_file):
    with_key = {"CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": str(kek_file)}
    done = cli("users", "inspect", sealed_bea, "--json", "--dbname", ops_db, env=with_key)
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)["user"]
    assert (user["email"], user["name"], user["sealed"]) == ("bea@example.org",
                                                            "Bea Sealed", [])
    screen = cli("users", "inspect", sealed_bea, "--dbname", ops_db, env=with_key)
    assert "email=bea@example.org name=Bea Sealed " in screen.stdout, screen.stdout


def test_inspect_says_sealed_fields_are_sealed_without_the_key_file(cli, ops_db, sealed_bea,
                                                                    tmp_path):
    no_key = {"CRYPTO_ENABLED": "false", "CRYPTO_KEK_FILE": ""}
    done = cli("users", "inspect", sealed_bea, "--json", "--dbname", ops_db, env=no_key)
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)["user"]
    assert (user["email"], user["name"], user["sealed"]) == (None, None, ["email", "name"])
    assert "CRYPTO_KEK_FILE" in user["sealed_reason"]
    screen = cli("users", "inspect", sealed_bea, "--dbname", ops_db, env=no_key).stdout
    assert "email=(sealed) name=(sealed) " in screen and "email=None" not in screen
    assert "email and name sealed: no key file" in screen

    # Another deployment's key file does not open them: sealed, and the reason says why.
    from donnadb.crypto import keyfile

    other = tmp_path / "other.key"
    keyfile.generate(other)
    done = cli("users", "inspect", sealed_bea, "--json", "--dbname", ops_db,
               env={"CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": str(other)})
    user = json.loads(done.stdout)["user"]
    assert user["sealed"] == ["email", "name"] and "bea@" not in done.stdout
    assert "does not hold" in user["sealed_reason"]


def test_inspect_chat(settings, ops_db, alice):
    chat = superuser_psql(f"SELECT chat_id FROM chat_sessions WHERE user_id = '{alice}' "
                          "AND chat_id LIKE 'a1%'", ops_db)
    doc = users.inspect_chat(settings, chat, dbname=ops_db)
    assert str(doc["chat"]["user_id"]) == alice
    assert doc["by_role"][0]["messages"] == 2 and len(doc["recent_messages"]) == 2


def test_unknown_ids_exit_12(cli, ops_db):
    done = cli("users", "inspect", "nobody", "--dbname", ops_db)
    assert done.returncode == 12 and "no user with id or clerk_id 'nobody'" in done.stderr
    assert cli("chats", "inspect", "nochat", "--dbname", ops_db).returncode == 12


def test_forget_needs_confirmation(cli, ops_db, alice):
    done = cli("users", "forget", alice, "--dbname", ops_db, input="n\n")
    assert done.returncode == 130
    assert superuser_psql(f"SELECT count(*) FROM users WHERE id = '{alice}'", ops_db) == "1"


def test_forget_dry_run_says_what_it_would_erase(cli, ops_db, alice):
    done = cli("users", "forget", alice, "--dry-run", "--json", "--dbname", ops_db)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"dry_run": True, "user_id": alice, "sessions": 2,
                                       "messages": 3, "memory_keys": 1}
    assert superuser_psql(f"SELECT count(*) FROM users WHERE id = '{alice}'", ops_db) == "1"


def test_forget_erases_everything_and_records_it(cli, ops_db, alice):
    sessions = superuser_psql("SELECT string_agg(quote_literal(id), ',') FROM chat_sessions "
                              f"WHERE user_id = '{alice}'", ops_db)
    done = cli("users", "forget", alice, "--yes", "--json", "--dbname", ops_db)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"user_id": alice, "sessions": 2, "messages": 3,
                                       "memory": 1, "logs": 1, "data_key": 0,
                                       "erasures_copy": None}  # no S3 here
    left = superuser_psql(
        f"SELECT (SELECT count(*) FROM users WHERE id = '{alice}') + "
        f"(SELECT count(*) FROM chat_sessions WHERE id IN ({sessions})) + "
        f"(SELECT count(*) FROM messages WHERE chat_session_id IN ({sessions})) + "
        f"(SELECT count(*) FROM user_memory WHERE user_id = '{alice}') + "
        f"(SELECT count(*) FROM system_logs WHERE context->>'user_id' = '{alice}' "
        "AND message = 'login')", ops_db)
    assert left == "0"
    record = json.loads(superuser_psql(
        "SELECT row_to_json(l) FROM (SELECT level, context, trace_id FROM system_logs "
        f"WHERE message = 'user erased (GDPR)' AND context->>'user_id' = '{alice}') l", ops_db))
    assert record["level"] == "notice" and record["context"]["messages"] == 3
    assert record["trace_id"]
    assert "alice@example.org" not in json.dumps(record)


def test_forget_is_one_transaction(settings, ops_db, alice):
    """If the erasure record cannot be written, nothing is deleted."""
    superuser_psql("REVOKE INSERT ON system_logs FROM donna_app", ops_db)
    try:
        with pytest.raises(Exception, match="permission denied"):
            users.forget_user(settings, alice, dbname=ops_db)
    finally:
        superuser_psql("GRANT INSERT ON system_logs TO donna_app", ops_db)
    assert superuser_psql(f"SELECT count(*) FROM chat_sessions WHERE user_id = '{alice}'",
                          ops_db) == "2"


def test_reapply_erasures_refuses_a_ledger_db_without_a_ledger(cli, ops_db):
    done = cli("keys", "reapply-erasures", "--ledger-db", "postgres", "--dbname", ops_db)
    assert done.returncode == 12
    assert "database postgres has no erasures ledger; --ledger-db names the database the " \
           "restore replaced" in " ".join(done.stderr.split())

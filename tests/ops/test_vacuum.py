import json

from tests.support import superuser_psql


def test_report_lists_tables_and_wraparound_age(cli):
    done = cli("vacuum", "report", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {"users", "messages"} <= {t["table"] for t in doc["tables"]}
    assert doc["database"]["xid_age"] > 0 and doc["database"]["freeze_max_age"] > 0


def _audit(cli) -> list[dict]:
    return [json.loads(line)["context"] for line in cli.log_file.read_text().splitlines()
            if '"command finished"' in line]


def test_dry_run_lists_the_statements_and_vacuums_nothing(cli, ops_db):
    done = cli("vacuum", "run", "messages", "chat_sessions", "--dry-run", "--json",
               "--dbname", ops_db)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["dry_run"] is True and doc["vacuumed"] == []
    assert doc["tables"] == ["messages", "chat_sessions"]
    assert doc["statements"] == ['VACUUM (ANALYZE) "public"."messages"',
                                 'VACUUM (ANALYZE) "public"."chat_sessions"']
    # No question either: stdin is empty, so a prompt would abort with 130.
    shown = cli("vacuum", "run", "users", "--no-analyze", "--dry-run", "--dbname", ops_db)
    assert shown.returncode == 0, shown.stderr
    assert 'VACUUM "public"."users";' in shown.stdout and "dry run" in shown.stdout
    assert superuser_psql("SELECT count(*) FROM pg_stat_user_tables "
                          "WHERE last_vacuum IS NOT NULL", ops_db) == "0"
    assert [(a["command"], a["params"]["dry_run"], a["exit_code"]) for a in _audit(cli)] == [
        ("vacuum run", True, 0), ("vacuum run", True, 0)]


def test_run_vacuums_as_the_owner(cli, ops_db):
    done = cli("vacuum", "run", "users", "user_memory", "--yes", "--dbname", ops_db)
    assert done.returncode == 0, done.stderr
    vacuumed = superuser_psql("SELECT string_agg(relname, ',' ORDER BY relname) "
                              "FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL", ops_db)
    assert vacuumed == "user_memory,users"


def test_run_rejects_unknown_tables_and_asks_first(cli, ops_db):
    done = cli("vacuum", "run", "nope", "--yes", "--dbname", ops_db)
    assert done.returncode == 3 and "not a table in public: nope" in done.stderr
    assert cli("vacuum", "run", "--dbname", ops_db, input="n\n").returncode == 130

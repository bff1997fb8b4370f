import json

from tests.support import superuser_psql


def test_report_lists_tables_and_wraparound_age(cli):
    done = cli("vacuum", "report", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {"users", "messages"} <= {t["table"] for t in doc["tables"]}
    assert doc["database"]["xid_age"] > 0 and doc["database"]["freeze_max_age"] > 0


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

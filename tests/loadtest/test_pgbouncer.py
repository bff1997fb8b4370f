"""PgBouncer as the deploy leaves it: running, SCRAM via auth_query, nothing leaked.

The deploy's idempotence (a second run changes nothing, PgBouncer included) is checked
by tests/provision/test_deploy.py, which runs the whole deploy.py.
"""

from __future__ import annotations

import pwd
import stat
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg.rows import dict_row

from donnadb import db
from donnadb.errors import ConfigError
from donnadb.provision import bootstrap
from donnadb.provision import pgbouncer as pgb
from tests.loadtest.conftest import PGBOUNCER_PORT
from tests.support import superuser_psql

INI = Path(pgb.INI)
AUTH_FILE = Path(pgb.AUTH_FILE)


def _via_bouncer(settings, kind: str, dbname: str | None = None) -> psycopg.Connection:
    s = settings.model_copy(update={"pgbouncer_port": PGBOUNCER_PORT})
    info = db.conninfo(kind, settings=s, dbname=dbname, via_pgbouncer=True, connect_timeout=5)
    return psycopg.connect(info, autocommit=True, prepare_threshold=None)


def test_pgbouncer_runs_as_postgres_with_transaction_pooling():
    pid = int(Path(pgb.PIDFILE).read_text().strip())
    assert Path(f"/proc/{pid}").exists()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "pgbouncer"
    assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("postgres").pw_uid
    ini = INI.read_text()
    assert "pool_mode = transaction" in ini
    assert "auth_type = scram-sha-256" in ini
    assert f"listen_port = {PGBOUNCER_PORT}" in ini and "listen_addr = 127.0.0.1" in ini


def test_pgbouncer_may_open_a_file_for_every_client_it_accepts(deployed):
    from donnadb.provision.settings import load_deploy_settings
    from tests.provision.deployrun import load_group_data

    data = load_group_data()
    cfg = pgb.load_pgbouncer_settings(data, load_deploy_settings(data))
    pid = int(Path(pgb.PIDFILE).read_text().strip())
    [line] = [ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
              if ln.startswith("Max open files")]
    soft = line.split()[3]
    assert soft == "unlimited" or int(soft) >= cfg.nofile, line


def test_auth_file_is_private_and_holds_no_application_role(settings):
    st = AUTH_FILE.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == pwd.getpwnam("postgres").pw_uid
    users = [line.split('"')[1] for line in AUTH_FILE.read_text().splitlines() if line]
    assert users[0] == pgb.DEFAULTS["pgbouncer_auth_user"]
    assert settings.db_role_app not in users and settings.db_role_migrator not in users
    # The stats user's line is its SCRAM verifier, never a password.
    for line in AUTH_FILE.read_text().splitlines()[1:]:
        assert '"SCRAM-SHA-256$' in line
    assert stat.S_IMODE(INI.stat().st_mode) & 0o007 == 0  # no secrets, still not public


def test_app_role_logs_in_through_pgbouncer_with_scram(settings):
    with _via_bouncer(settings, "app") as conn:
        user, db_name = conn.execute("SELECT current_user, current_database()").fetchone()
    assert (user, db_name) == (settings.db_role_app, settings.db_name)


def test_readonly_reads_pool_statistics(settings):
    with _via_bouncer(settings, "app") as app:
        app.execute("SELECT 1")
        with _via_bouncer(settings, "readonly", dbname="pgbouncer") as conn:
            conn.cursor_factory = psycopg.ClientCursor
            conn.row_factory = dict_row
            pools = conn.execute("SHOW POOLS").fetchall()
    [app_pool] = [p for p in pools
                  if (p["database"], p["user"]) == (settings.db_name, settings.db_role_app)]
    assert app_pool["pool_mode"] == "transaction"
    assert app_pool["cl_active"] >= 1  # the connection held open above
    [console] = [p for p in pools if p["database"] == "pgbouncer"]
    assert console["pool_mode"] == "statement"


def test_roles_outside_the_lookup_list_are_refused(settings, connect_as):
    # The migrator has a password (it logs in directly), but pgbouncer.user_lookup does
    # not hand out its verifier: migrations go direct, never through the pool.
    connect_as("migrator").close()
    lookup = "SELECT phash IS NOT NULL FROM pgbouncer.user_lookup('{}')"
    assert superuser_psql(lookup.format(settings.db_role_app), settings.db_name) == "t"
    assert superuser_psql(lookup.format(settings.db_role_migrator), settings.db_name) == "f"
    # PgBouncer 1.18 answers a SCRAM login its auth_query does not know with this
    # error (a known role with a wrong password gets "SASL authentication failed").
    with pytest.raises(psycopg.OperationalError, match=r"port 6432 failed: FATAL: +bouncer "
                                                       r"config error"):
        _via_bouncer(settings, "migrator").close()


def test_settings_are_validated():
    base = SimpleNamespace(roles={"app": 0, "readonly": 0}, role=lambda k: f"donna_{k}",
                           pg_port=5432, db_name="donna", db_host="127.0.0.1")
    cfg = pgb.load_pgbouncer_settings({}, base)
    assert cfg.port == 6432 and cfg.lookup_roles == ("donna_app", "donna_readonly")
    assert cfg.nofile > cfg.max_client_conn
    ini = pgb.render_ini(cfg)
    assert "donna = host=127.0.0.1 port=5432 dbname=donna" in ini
    assert "* = host=127.0.0.1 port=5432" in ini
    # TLS both ways: required of clients, PostgreSQL's certificate verified.
    assert "client_tls_sslmode = require" in ini and "server_tls_sslmode = verify-full" in ini
    for bad in ({"pgbouncer_port": 5432}, {"pgbouncer_auth_user": "Bad-Name"},
                {"pgbouncer_lookup_kinds": ("nobody",)}, {"pgbouncer_default_pool_size": 0}):
        with pytest.raises(ConfigError):
            pgb.load_pgbouncer_settings(bad, base)


def test_lookup_sql_marker_follows_its_content():
    _, m1 = bootstrap.auth_sql("donna_pgbouncer", ["donna_app"])
    _, m2 = bootstrap.auth_sql("donna_pgbouncer", ["donna_app", "donna_readonly"])
    assert m1 != m2 and m1.startswith(bootstrap.LOOKUP_MARKER_PREFIX)

"""The application database and its bootstrap (extensions, grants, default privileges).

The bootstrap SQL (templates/database.sql.j2) runs only when the live check
(templates/database_check.sql.j2) finds a difference. The check includes a marker the
bootstrap leaves as the database's comment, the SHA-256 of the rendered SQL, so a
changed template or changed role names also re-apply it.
"""

from __future__ import annotations

import hashlib
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files

from donnadb.provision import bootstrap
from donnadb.provision.facts import PgDatabaseOwner, PgQueryRows
from donnadb.provision.psql import psql, quote_ident, quote_literal, run_sql
from donnadb.provision.settings import DeploySettings

MARKER_PREFIX = "donnadb bootstrap sha256:"


def role_values(settings: DeploySettings) -> dict[str, str]:
    return {kind: settings.role(kind) for kind in settings.roles}


def lookup_values(settings: DeploySettings) -> dict:
    """PgBouncer's lookup variables (auth_user, lookup_roles, marker ...) for group_data."""
    return bootstrap.lookup_values(
        settings.pgbouncer_auth_user,
        [settings.role(k) for k in settings.pgbouncer_lookup_kinds],
        settings.pgbouncer_auth_user_connlimit)


def bootstrap_sql(settings: DeploySettings) -> tuple[str, str]:
    """(the SQL file the deploy uploads, the marker it leaves on the database)."""
    body = bootstrap.render_database_sql(
        role_values(settings), auth_user=settings.pgbouncer_auth_user,
        lookup_kinds=settings.pgbouncer_lookup_kinds,
        auth_user_connlimit=settings.pgbouncer_auth_user_connlimit)
    marker = MARKER_PREFIX + hashlib.sha256(body.encode()).hexdigest()
    comment = (
        f"SELECT format('COMMENT ON DATABASE %I IS %L', current_database(), "
        f"{quote_literal(marker)}) \\gexec\n"
    )
    return body + "\n-- Recorded last: the deploy's check compares it.\n" + comment, marker


def check_sql(settings: DeploySettings, marker: str) -> str:
    lookup = lookup_values(settings)
    return bootstrap.render("database_check.sql.j2", marker=marker, **role_values(settings),
                            auth_user=lookup["auth_user"], lookup_marker=lookup["marker"])


@operation()
def database_present(dbname: str, owner: str, port: int):
    """Create the database (UTF-8, from template0), or give it back to ``owner``."""
    current = host.get_fact(PgDatabaseOwner, port=port, dbname=dbname)
    if current == owner:
        host.noop(f"database {dbname} exists, owned by {owner}")
    elif current:
        yield run_sql(f"ALTER DATABASE {quote_ident(dbname)} OWNER TO {quote_ident(owner)};", port)
    else:
        yield run_sql(
            f"CREATE DATABASE {quote_ident(dbname)} OWNER {quote_ident(owner)} "
            "TEMPLATE template0 ENCODING 'UTF8';",
            port,
        )


@operation()
def database_bootstrapped(sql_file: str, check: str, dbname: str, port: int):
    """Run the bootstrap SQL file when the live check reports any difference."""
    problems = host.get_fact(PgQueryRows, port=port, dbname=dbname, sql=check)
    if problems == []:
        host.noop(f"database {dbname} is bootstrapped")
        return
    # root opens the 0600 file; psql (as postgres) reads it on stdin.
    yield f"cd / && {psql(port, dbname)} -f - < {sql_file}"


#: Statements that carried a password (CREATE/ALTER ROLE ... PASSWORD '...') and that
#: pg_stat_statements kept verbatim before track_utility was turned off. A normalised
#: statement shows $1 there instead of a literal, so it never matches.
_HOLDS_A_PASSWORD = r"query ~* 'password\s+e?'''"  # noqa: S105 - a pattern
STORED_SECRETS_SQL = f"SELECT queryid FROM public.pg_stat_statements WHERE {_HOLDS_A_PASSWORD}"
# Qualified, exact argument types: nothing planted in public can stand in for it.
FORGET_SECRETS_SQL = ("SELECT count(public.pg_stat_statements_reset(userid, dbid, queryid)) "
                      f"FROM public.pg_stat_statements WHERE {_HOLDS_A_PASSWORD}")


@operation()
def stored_secrets_forgotten(dbname: str, port: int):
    """Drop every pg_stat_statements entry whose text holds a password."""
    if host.get_fact(PgQueryRows, port=port, dbname=dbname, sql=STORED_SECRETS_SQL) == []:
        host.noop("no statement with a password in pg_stat_statements")
        return
    yield run_sql(FORGET_SECRETS_SQL, port, dbname)


#: Who owns the database itself (the bootstrap gives the schemas to the owner role).
DATABASE_OWNER = "postgres"


@deploy("Database")
def converge_database(settings: DeploySettings) -> None:
    dbname, owner = settings.db_name, DATABASE_OWNER
    database_present(name=f"Create database {dbname} owned by {owner}",
                     dbname=dbname, owner=owner, port=settings.pg_port)
    sql, marker = bootstrap_sql(settings)
    sql_file = f"{settings.donnadb_lib_dir}/database-{dbname}.sql"
    files.put(name=f"Upload the bootstrap SQL of {dbname}", src=StringIO(sql), dest=sql_file,
              user="root", group="root", mode="600")
    database_bootstrapped(name=f"Bootstrap {dbname} (extensions, grants, default privileges)",
                          sql_file=sql_file, check=check_sql(settings, marker),
                          dbname=dbname, port=settings.pg_port)
    # After the bootstrap: it creates the pg_stat_statements view in the database.
    stored_secrets_forgotten(name="Forget statements with passwords (pg_stat_statements)",
                             dbname=dbname, port=settings.pg_port)

"""Superuser steps of a restore: create the target database and apply the deploy's
per-database bootstrap (extensions, grants, default privileges).

The postgres superuser is reached only by peer authentication over the local
socket (:func:`donnadb.db.superuser_psql`), exactly as the deploy does: no superuser
password exists anywhere. SQL goes to psql on stdin, never in argv.
"""

from __future__ import annotations

from psycopg import sql

from donnadb import db
from donnadb.config import Settings
from donnadb.provision import bootstrap

SQL_DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = {name}"
SQL_CREATE_DATABASE = "CREATE DATABASE {name}"
SQL_DROP_DATABASE = "DROP DATABASE IF EXISTS {name} WITH (FORCE)"


superuser_psql = db.superuser_psql


def render_database_sql(settings: Settings) -> str:
    """The deploy's database bootstrap SQL for ``settings``' role names.

    It includes PgBouncer's login lookup, so a restored database is reachable through
    PgBouncer like the deployed one (one renderer: donnadb/provision/bootstrap.py).
    """
    return bootstrap.render_for_settings(settings)


def _literal(script: sql.Composable) -> str:
    # psql receives plain text; psycopg's quoting makes identifiers/literals safe.
    return script.as_string(None)


def database_exists(name: str, *, port: int | None = None) -> bool:
    """True when database ``name`` exists (asked as the superuser)."""
    query = sql.SQL(SQL_DATABASE_EXISTS).format(name=sql.Literal(name))
    return superuser_psql(_literal(query), port=port) == "1"


def create_database(settings: Settings, name: str, *, port: int | None = None) -> None:
    """Create ``name`` (the superuser's, as the deployed one) and apply the deploy's
    bootstrap SQL, which gives its schemas to the owner role.

    :raises DatabaseError: the database exists already or psql failed.
    """
    query = sql.SQL(SQL_CREATE_DATABASE).format(name=sql.Identifier(name))
    superuser_psql(_literal(query), port=port)
    apply_bootstrap(settings, name, port=port)


def apply_bootstrap(settings: Settings, name: str, *, port: int | None = None) -> None:
    """(Re-)apply database.sql.j2 inside ``name``: idempotent, re-grants every object."""
    superuser_psql(render_database_sql(settings), dbname=name, port=port)


def drop_database(name: str, *, port: int | None = None) -> None:
    """Drop ``name`` (disconnecting its sessions) if it exists."""
    query = sql.SQL(SQL_DROP_DATABASE).format(name=sql.Identifier(name))
    superuser_psql(_literal(query), port=port)

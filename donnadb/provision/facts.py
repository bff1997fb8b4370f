"""pyinfra facts about PostgreSQL that the deploy converges from.

Facts that query the server are guarded (see :func:`psql.guarded`): on a fresh host,
or while the cluster is down, they return ``None`` ("unknown") instead of failing the
host; the operations then treat the state as "everything to do". pyinfra 3 does not
cache facts, and re-runs each operation's body when it executes, so the facts read
inside operations see what the earlier operations did.
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from donnadb.provision.psql import (
    DOWN_MARKER,
    END_MARKER,
    NODB_MARKER,
    guarded,
    quote_literal,
    run_sql,
)

_MARKERS = (DOWN_MARKER, NODB_MARKER)


def _rows(output: list[str]) -> list[list[str]] | None:
    """Rows of a guarded command's output; None unless it ran to the end."""
    lines = [line.strip() for line in output]
    if any(line in _MARKERS for line in lines) or END_MARKER not in lines:
        return None
    return [line.split("|") for line in lines if line and line != END_MARKER]


class SystemdRunning(FactBase[bool]):
    """True when systemd is PID 1 (containers and CI often run without it)."""

    def command(self) -> str:
        return "if test -d /run/systemd/system; then echo yes; else echo no; fi"

    def process(self, output):
        return output[0].strip() == "yes"

    @staticmethod
    def default():
        return False


class PidfileRunning(FactBase[bool]):
    """True when the pidfile names a live process (daemons run without systemd)."""

    def command(self, pidfile: str) -> str:
        return (f'if [ -f {pidfile} ] && kill -0 "$(cat {pidfile})" 2>/dev/null; '
                "then echo yes; else echo no; fi")

    def process(self, output):
        return output[0].strip() == "yes"

    @staticmethod
    def default():
        return False


class PgClusters(FactBase[dict]):
    """Every Debian cluster: ``{"15/main": {"port": 5432, "status": "online"}}``."""

    def requires_command(self) -> str:
        return "pg_lsclusters"

    def command(self) -> str:
        return "pg_lsclusters --no-header"

    @staticmethod
    def default():
        return {}

    def process(self, output):
        clusters = {}
        for line in output:
            bits = line.split()
            if len(bits) >= 4:
                clusters[f"{bits[0]}/{bits[1]}"] = {"port": int(bits[2]), "status": bits[3]}
        return clusters


ROLES_SQL = """
SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       r.rolinherit, r.rolreplication, r.rolbypassrls, r.rolconnlimit,
       array_to_string(ARRAY(
           SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           WHERE m.member = r.oid ORDER BY 1), ','),
       coalesce((SELECT array_to_string(s.setconfig, '&') FROM pg_db_role_setting s
                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '')
FROM pg_roles r
WHERE r.rolname = ANY (string_to_array({names}, ','))
ORDER BY 1
"""

_FLAGS = ("login", "superuser", "createdb", "createrole", "inherit", "replication", "bypassrls")


class PgRoles(FactBase):
    """The named roles: ``{name: {"login": bool, ..., "connlimit": int, "member_of": set,
    "settings": {name: value}}}`` (settings: ALTER ROLE ... SET in every database).

    Only roles that exist appear; None when the server cannot be asked.
    """

    def command(self, port, role_names) -> str:
        sql = ROLES_SQL.format(names=quote_literal(",".join(role_names)))
        return guarded(run_sql(sql, port, tuples=True), port)

    def process(self, output):
        rows = _rows(output)
        if rows is None:
            return None
        roles = {}
        for row in rows:
            flags = {key: value == "t" for key, value in zip(_FLAGS, row[1:8], strict=True)}
            roles[row[0]] = {
                **flags,
                "connlimit": int(row[8]),
                "member_of": {m for m in row[9].split(",") if m},
                "settings": dict(item.split("=", 1) for item in "|".join(row[10:]).split("&")
                                 if "=" in item),
            }
        return roles


class PgDatabaseOwner(FactBase):
    """Owner of database ``dbname``: a name, ``""`` when it does not exist, None if unknown."""

    def command(self, port, dbname) -> str:
        sql = (
            "SELECT coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database "
            f"WHERE datname = {quote_literal(dbname)}), '#none')"
        )
        return guarded(run_sql(sql, port, tuples=True), port)

    def process(self, output):
        rows = _rows(output)
        if not rows:
            return None
        owner = rows[0][0]
        return "" if owner == "#none" else owner


class PgQueryRows(FactBase):
    """Rows of a check query run as postgres in ``dbname`` (None: server down / no db).

    Check queries return one row per problem found, so an empty list means "in shape".
    """

    def command(self, port, dbname, sql) -> str:
        return guarded(run_sql(sql, port, dbname, tuples=True), port, dbname)

    def process(self, output):
        rows = _rows(output)
        return None if rows is None else ["|".join(r) for r in rows]


class PassfileRoles(FactBase[list]):
    """User names (4th field) of the passfile's lines; never reads the passwords out."""

    def command(self, path) -> str:
        return f"if [ -f {path} ]; then cut -d: -f4 {path}; fi"

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [line.strip() for line in output if line.strip() and not line.startswith("#")]


class StalePasswords(FactBase):
    """Roles whose stored SCRAM verifier does not match the passfile (helper's check mode).

    None when unknown (helper not uploaded yet, server down): treat as all stale.
    """

    def command(self, helper, passfile, port, role_names) -> str:
        run = f"python3 {helper} check --passfile {passfile} --port {int(port)} " + " ".join(
            role_names
        )
        return guarded(f"if [ -f {helper} ]; then {run}; else echo '{DOWN_MARKER}'; fi", port)

    def process(self, output):
        rows = _rows(output)
        return None if rows is None else [r[0] for r in rows]


class PendingMigrations(FactBase):
    """``donnactl migrate status --json``'s pending list; None before the code is installed.

    A failing status (e.g. an applied migration was edited) fails the fact and the host:
    the deploy must stop there rather than skip the schema.
    """

    ABSENT = "#donnadb:no-migrate-cli"

    def command(self, donnactl, schema_dir) -> str:
        return (
            f"cd / && if [ -x {donnactl} ] && [ -d {schema_dir} ]; "
            f"then SCHEMA_DIR={schema_dir} {donnactl} migrate status --json; "
            f"else echo '{self.ABSENT}'; fi"
        )

    def process(self, output):
        text = "\n".join(output).strip()
        if text == self.ABSENT:
            return None
        return list(json.loads(text).get("pending") or [])


class UsersInClear(FactBase):
    """``donnactl keys status --json``'s ``users_in_clear`` with ``kek_file``; None when it
    cannot be asked yet (code or key file not there before this run, an older donnactl,
    the database not answering): the step then seals, which changes nothing when all is
    sealed."""

    ABSENT = "#donnadb:no-key-status"

    def command(self, donnactl, env_file, kek_file) -> str:
        return (
            f"cd / && if [ -x {donnactl} ] && [ -f {kek_file} ]; "
            f"then DONNADB_HOST_ENV={env_file} CRYPTO_KEK_FILE={kek_file} "
            f"{donnactl} keys status --json 2>/dev/null || echo '{self.ABSENT}'; "
            f"else echo '{self.ABSENT}'; fi"
        )

    def process(self, output):
        text = "\n".join(output).strip()
        if self.ABSENT in text:
            return None
        count = json.loads(text).get("users_in_clear")
        return None if count is None else int(count)

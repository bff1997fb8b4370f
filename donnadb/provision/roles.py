"""Roles converged from our own fact (pg_roles / pg_auth_members), not postgres.role.

pyinfra's postgres.role always reports a change when given a password, never fixes
login/superuser/connlimit drift and pastes names unescaped; here each managed role is
compared attribute by attribute and only the differences become SQL. Passwords are
not set here (see passwords.py): this SQL never holds one.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy, operation

from donnadb.provision.facts import PgRoles
from donnadb.provision.psql import quote_ident, quote_literal, run_sql
from donnadb.provision.settings import ROLE_SETTING_NAMES, DeploySettings, RoleSpec

#: Attributes every managed role must have, beyond LOGIN and CONNECTION LIMIT.
FIXED_FLAGS = {
    "superuser": ("SUPERUSER", "NOSUPERUSER", False),
    "createdb": ("CREATEDB", "NOCREATEDB", False),
    "createrole": ("CREATEROLE", "NOCREATEROLE", False),
    "inherit": ("INHERIT", "NOINHERIT", True),
    "replication": ("REPLICATION", "NOREPLICATION", False),
    "bypassrls": ("BYPASSRLS", "NOBYPASSRLS", False),
}


def _wanted(spec: RoleSpec) -> dict[str, object]:
    want: dict[str, object] = {key: value for key, (_, _, value) in FIXED_FLAGS.items()}
    want["login"] = spec.login
    want["connlimit"] = spec.connlimit
    return want


def _attribute_sql(want: dict[str, object], keys) -> str:
    words = []
    for key in keys:
        if key == "login":
            words.append("LOGIN" if want["login"] else "NOLOGIN")
        elif key == "connlimit":
            words.append(f"CONNECTION LIMIT {int(want['connlimit'])}")
        else:
            on, off, _ = FIXED_FLAGS[key]
            words.append(on if want[key] else off)
    return " ".join(words)


def _setting_statements(name: str, want: dict[str, str], have: dict[str, str]) -> list[str]:
    """ALTER ROLE ... SET for each managed setting that differs, RESET for one left out."""
    sql = []
    for key in ROLE_SETTING_NAMES:
        if key in want and have.get(key) != want[key]:
            sql.append(f"ALTER ROLE {name} SET {key} = {quote_literal(want[key])};")
        elif key not in want and key in have:
            sql.append(f"ALTER ROLE {name} RESET {key};")
    return sql


def role_statements(specs: list[RoleSpec], current: dict | None) -> list[str]:
    """SQL turning ``current`` (the PgRoles fact; None = unknown) into ``specs``."""
    current = current or {}
    managed = {s.name for s in specs}
    sql: list[str] = []
    for spec in specs:
        want = _wanted(spec)
        have = current.get(spec.name)
        name = quote_ident(spec.name)
        if have is None:
            sql.append(f"CREATE ROLE {name} WITH {_attribute_sql(want, want)};")
            members: set[str] = set()
        else:
            drift = [key for key in want if have.get(key) != want[key]]
            if drift:
                sql.append(f"ALTER ROLE {name} WITH {_attribute_sql(want, drift)};")
            members = have["member_of"]
        for group in spec.member_of:
            if group not in members:
                sql.append(f"GRANT {quote_ident(group)} TO {name};")
        sql += _setting_statements(name, dict(spec.settings),
                                   have.get("settings", {}) if have else {})
        # Membership in another managed role is privilege escalation unless specified
        # (e.g. app in owner could drop tables). pg_* memberships are the bootstrap's.
        for group in sorted((members & managed) - set(spec.member_of)):
            sql.append(f"REVOKE {quote_ident(group)} FROM {name};")
    return sql


@operation()
def roles_converged(specs: list[RoleSpec], port: int):
    """Create missing roles, fix drifted attributes and memberships."""
    current = host.get_fact(PgRoles, port=port, role_names=[s.name for s in specs])
    statements = role_statements(specs, current)
    if statements:
        yield run_sql("\n".join(statements), port)
    else:
        host.noop("roles are as specified")


@deploy("Roles")
def converge_roles(settings: DeploySettings) -> None:
    roles = ", ".join(settings.roles[k].name for k in settings.roles)
    roles_converged(
        name=f"Converge roles ({roles})",
        specs=list(settings.roles.values()),
        port=settings.pg_port,
    )

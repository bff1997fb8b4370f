"""The per-database bootstrap SQL, rendered in ONE place for every database we create.

The deploy (its ``donna`` database), the tests (scratch databases) and restores
(donnadb/backup/bootstrap.py) all run the same SQL: templates/database.sql.j2, which
includes PgBouncer's login lookup (templates/pgbouncer_auth.sql.j2), so PgBouncer's
``*`` entry can log the application into any of them. Pure Jinja: no pyinfra here, the
runtime imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Role names the bootstrap needs, one per role kind.
ROLE_KINDS = ("owner", "migrator", "app", "readonly", "backup", "monitor")
#: PgBouncer's lookup role and the role kinds it may log in (group_data documents them).
AUTH_USER = "donna_pgbouncer"
AUTH_USER_CONNLIMIT = 10
LOOKUP_KINDS = ("app", "readonly")
LOOKUP_MARKER_PREFIX = "donnadb pgbouncer lookup sha256:"


def render(template: str, **values: Any) -> str:
    env = jinja2.Environment(  # noqa: S701 - renders SQL and ini, not HTML
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
    )
    return env.get_template(template).render(**values)


def lookup_values(auth_user: str, lookup_roles: Sequence[str],
                  connlimit: int = AUTH_USER_CONNLIMIT) -> dict[str, Any]:
    """pgbouncer_auth.sql.j2's variables, with the marker its function comment carries."""
    values = {"auth_user": auth_user, "lookup_roles": list(lookup_roles),
              "auth_user_connlimit": int(connlimit)}
    digest = hashlib.sha256(render("pgbouncer_auth.sql.j2", marker="", **values).encode())
    return {**values, "marker": LOOKUP_MARKER_PREFIX + digest.hexdigest()}


def auth_sql(auth_user: str, lookup_roles: Sequence[str],
             connlimit: int = AUTH_USER_CONNLIMIT) -> tuple[str, str]:
    """(PgBouncer's lookup SQL alone, the marker it leaves on pgbouncer.user_lookup)."""
    values = lookup_values(auth_user, lookup_roles, connlimit)
    return render("pgbouncer_auth.sql.j2", **values), values["marker"]


def render_database_sql(roles: Mapping[str, str], *, auth_user: str = AUTH_USER,
                        lookup_kinds: Sequence[str] = LOOKUP_KINDS,
                        auth_user_connlimit: int = AUTH_USER_CONNLIMIT) -> str:
    """database.sql.j2 for ``roles`` (kind -> role name), PgBouncer's lookup included.

    :raises KeyError: ``roles`` lacks a kind of :data:`ROLE_KINDS` or of ``lookup_kinds``.
    """
    names = {kind: roles[kind] for kind in ROLE_KINDS}
    lookup = lookup_values(auth_user, [roles[k] for k in lookup_kinds], auth_user_connlimit)
    return render("database.sql.j2", **names, **lookup)


def render_for_settings(settings: Any) -> str:
    """The bootstrap for a runtime :class:`donnadb.config.Settings` (tests, restores).

    The PgBouncer values are the deploy's defaults (group_data/all.py keeps them),
    unless the settings carry ``pgbouncer_auth_user`` / ``pgbouncer_lookup_kinds``.
    """
    return render_database_sql(
        {kind: settings.role(kind) for kind in ROLE_KINDS},
        auth_user=getattr(settings, "pgbouncer_auth_user", None) or AUTH_USER,
        lookup_kinds=getattr(settings, "pgbouncer_lookup_kinds", None) or LOOKUP_KINDS)

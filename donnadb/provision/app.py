"""An application host: the DAL package, its settings and the application role's
credential, and nothing of the database host's other roles.

The application reaches its database host by the name the inventory gives it (which
the server certificate carries) through PgBouncer. Its one password is the
application role's: read on the database host from that consumer's own passfile
(never the root passfile) and written to the same consumer's passfile here, 0600, so
the secret crosses only the deploy's SSH connections, never argv, a log or a file on
the machine running the deploy (:func:`hand_over_credential`).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.operations import files, server

from donnadb.errors import ConfigError
from donnadb.provision import (
    cacheserver,
    consumers,
    dualstats,
    fieldkeys,
    haproxy,
    install,
    tls,
)
from donnadb.provision.hostcopy import copied
from donnadb.provision.settings import (
    APP_GROUP,
    DB_GROUP,
    MONITOR_GROUP,
    DeploySettings,
    load_deploy_settings,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"


def roles_of(target: Host) -> tuple[bool, bool]:
    """(database host, application host) from the inventory groups of ``target``.

    :raises ConfigError: the host is in none of the groups (``monitor_servers`` too).
    """
    groups = set(target.groups)
    is_db, is_app = DB_GROUP in groups, APP_GROUP in groups
    if not (is_db or is_app or MONITOR_GROUP in groups):
        raise ConfigError(f"host {target.name} is in none of {DB_GROUP}, {APP_GROUP} and "
                          f"{MONITOR_GROUP}; list it in one of them in the inventory")
    return is_db, is_app


def database_server(settings: DeploySettings, target: Host) -> Host:
    """The database host an application host uses (``app_db_server``, else the only one).

    :raises ConfigError: it is not a database host of this inventory, or there are
        several and none is named.
    """
    db_hosts = target.inventory.get_group(DB_GROUP) if DB_GROUP in target.inventory.groups \
        else []
    if settings.app_db_server is None and db_hosts and \
            load_deploy_settings(db_hosts[0].data).ha is not None:
        # Every member holds the same credential; the router finds the leader.
        return db_hosts[0]
    if settings.app_db_server is None:
        if len(db_hosts) != 1:
            raise ConfigError(f"app host {target.name}: set app_db_server to one of "
                              f"{[h.name for h in db_hosts]} (the inventory's {DB_GROUP})")
        return db_hosts[0]
    for candidate in db_hosts:
        if candidate.name == settings.app_db_server:
            return candidate
    raise ConfigError(f"app host {target.name}: app_db_server={settings.app_db_server!r} is "
                      f"not in the inventory's {DB_GROUP}")


def app_users(settings: DeploySettings) -> dict[str, tuple[str, ...]]:
    """The consumers an application host has: those holding the application role only.

    :raises ConfigError: there is none (an application host needs one).
    """
    users = {user: kinds for user, kinds in settings.db_consumers.items()
             if kinds == ("app",)}
    if not users:
        raise ConfigError("db_consumers has no user holding the application role alone "
                          "(e.g. \"donna-app\": [\"app\"]): the application host needs one")
    return users


@deploy("Application credential")
def hand_over_credential(settings: DeploySettings, target: Host) -> None:
    """The application host's passfile, copied from its database host's.

    deploy.py calls this for EVERY host, from one line, after each host's own steps:
    pyinfra then sees one operation shared by all hosts (an operation's identity is
    where it is called from), which runs only once every host has finished what comes
    before it, so the database host's passfiles exist by then. pyinfra orders the
    operations of different hosts by position, not by host: called from the
    application host's steps alone, the copy would run before the database host had
    made the file.
    """
    is_db, is_app = roles_of(target)
    database = database_server(settings, target) if is_app and not is_db else None
    # Every host reaches the shared operation below; it copies on application hosts only.
    user = next(iter(app_users(settings))) if database is not None else ""
    db = load_deploy_settings(database.data) if database is not None else settings
    copied(name="Copy the application's credential from its database host",
           source=database, source_path=consumers.passfile_of(db, user),
           dest=consumers.passfile_of(settings, user), owner=user or "root")


def dal_users(settings: DeploySettings, target: Host) -> list[str]:
    """The consumers that run the DAL on ``target``: an application host's application
    user; on a database host, every consumer holding the application role."""
    is_db, is_app = roles_of(target)
    if is_app and not is_db:
        return list(app_users(settings))
    return [user for user, kinds in settings.db_consumers.items() if "app" in kinds]


@deploy("Application host")
def converge_app(settings: DeploySettings, database: Host) -> None:
    """The DAL's venv, the CA certificate, donnadb.env and the application's passfile."""
    db = load_deploy_settings(database.data)
    server.group(name=f"Group {consumers.GROUP} (the consumers)", group=consumers.GROUP,
                 system=True)
    users = app_users(settings)
    for user in users:
        consumers.system_user(user)
    install.install_app_code(settings)
    # The database host's CA (its settings name it), so both ends agree.
    tls.install_ca(db)
    directory = posixpath.dirname(settings.donnadb_env_file)
    consumers.settings_dir(f"Create {directory}", directory)
    consumers.settings_dir(f"Create {consumers.passfile_dir(settings)}",
                           consumers.passfile_dir(settings))
    user = next(iter(users))
    passfile = consumers.passfile_of(settings, user)
    if db.ha is None:
        db_host, port, read_port = database.name, db.pgbouncer_port, None
    else:
        db_host, port, read_port = db.ha.service_name, db.ha.write_port, db.ha.read_port
    files.template(name=f"Write {settings.donnadb_env_file} (the database host {db_host})",
                   src=str(TEMPLATES / "app.env.j2"), dest=settings.donnadb_env_file,
                   user="root", group=consumers.GROUP, mode="640", cfg=settings, db=db,
                   db_host=db_host, port=port, read_port=read_port, passfile=passfile,
                   tls=tls, dal_env={**cacheserver.client_env(settings, host, user),
                                     **fieldkeys.client_env(settings, user)},
                   stats_dir=dualstats.stats_dir(settings))
    dualstats.make_stats_dir(settings, user)
    if db.ha is not None:
        haproxy.name_this_host(db, address_of(host))
        haproxy.install_router(db, host, address_of(host))


def address_of(target: Host) -> str:
    """An application host's own address (its router listens there): ``app_address``,
    else the inventory name."""
    return str(target.data.get("app_address") or target.name)

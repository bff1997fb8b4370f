"""Who may use which role: one OS user and one passfile per consumer of the database.

The root passfile (``db_passfile``) holds every login role; only root (the deploy, an
operator's donnactl) reads it. Each consumer (the application, the ops jobs) gets a
system user of its own and ``<passfile dir>/pgpass.d/<user>``, owned by that user and
0600, holding only the roles it needs: reading the application's credential no longer
gives the migrator's. The files are cut from the root passfile on the host by the
password helper (``share`` mode), so passwords never pass through pyinfra.

The consumers share the ``donnadb`` group, which may read the non-secret settings
(``donnadb.env``, ``backup.env``) and enter the directories that hold them.
"""

from __future__ import annotations

import posixpath

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from donnadb.config import CONSUMER_PASSFILE_DIR
from donnadb.provision.settings import DeploySettings

GROUP = "donnadb"
NOLOGIN = "/usr/sbin/nologin"
#: The backup jobs run as the cluster's owner (Debian's ``postgres``: its peer login is
#: the superuser the restore drill needs); its passfile holds these roles. The user
#: itself is the package's: the deploy only adds it to :data:`GROUP`.
CLUSTER_OWNER = "postgres"
CLUSTER_OWNER_KINDS = ("backup", "migrator")


def passfile_dir(settings: DeploySettings) -> str:
    return posixpath.join(posixpath.dirname(settings.db_passfile), CONSUMER_PASSFILE_DIR)


def passfile_of(settings: DeploySettings, user: str) -> str:
    return posixpath.join(passfile_dir(settings), user)


def settings_dir(name: str, path: str) -> None:
    """A directory of settings the consumers may enter and read (not list, not write).

    Every step that creates one of the deploy's /etc directories calls this, so the
    directory's owner and mode are declared once.
    """
    files.directory(name=name, path=path, user="root", group=GROUP, mode="750")


@operation()
def passfile_shared(helper: str, passfile: str, target: str, owner: str, roles: list[str]):
    """``target`` holds exactly ``roles``' lines of ``passfile``, owned by ``owner``, 0600."""
    args = f"--passfile {passfile} --to {target} --owner {owner} " + " ".join(roles)
    # Any output (the file to rewrite, or an error: no helper yet on a fresh host) means
    # run it; the real run fails loudly if something is wrong.
    stale = host.get_fact(Command, command=f"python3 {helper} share --check {args} 2>&1 || true")
    if stale:
        yield f"python3 {helper} share {args}"
    else:
        host.noop(f"{target} holds {', '.join(roles)} only")


@operation()
def member_of(user: str, group: str):
    """``user`` (which exists already) is in ``group``; nothing else about it changes."""
    groups = host.get_fact(Command, command=f"id -nG {user}").split()
    if group in groups:
        host.noop(f"{user} is in {group}")
    else:
        yield f"usermod -a -G {group} {user}"


@deploy("Database consumers")
def create_users(settings: DeploySettings) -> None:
    """The ``donnadb`` group and one system user per consumer (no shell, no home)."""
    server.group(name=f"Group {GROUP} (the consumers)", group=GROUP, system=True)
    member_of(name=f"{CLUSTER_OWNER} reads the settings (group {GROUP})",
              user=CLUSTER_OWNER, group=GROUP)
    for user in settings.db_consumers:
        system_user(user)


def system_user(user: str) -> None:
    """A consumer's system user: its own group, in :data:`GROUP`, no shell, no home."""
    server.group(name=f"Group {user}", group=user, system=True)
    server.user(name=f"System user {user}", user=user, group=user, groups=[GROUP],
                system=True, shell=NOLOGIN, home="/nonexistent", create_home=False,
                ensure_home=False, comment="donnadb database consumer")


@deploy("Consumer passfiles")
def share_passfiles(settings: DeploySettings, helper: str) -> None:
    """Each consumer's passfile, cut from the root passfile (after it is complete)."""
    settings_dir(f"Create {passfile_dir(settings)}", passfile_dir(settings))
    owners = {**settings.db_consumers, CLUSTER_OWNER: CLUSTER_OWNER_KINDS}
    for user, kinds in owners.items():
        target = passfile_of(settings, user)
        passfile_shared(name=f"Passfile {target} ({', '.join(kinds)} only)", helper=helper,
                        passfile=settings.db_passfile, target=target, owner=user,
                        roles=[settings.role(k) for k in kinds])

"""A secret file made on one host and held by every host that runs the DAL: the cache's
password (provision/cacheserver.py), the field-encryption keys (provision/fieldkeys.py).

Its origin host makes root's copy (``<passfile dir>/<folder>/root``, 0600); every other
database and application host gets root's copy over the deploy's own connections
(:func:`donnadb.provision.hostcopy.copied`: never argv, a log or the control machine),
and each consumer that runs the DAL its own 0600 copy beside it, cut on the host by
files/filecopies.py. Changed at the origin (a new password, a new key), every copy
follows at the next deploy.
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.host import Host
from pyinfra.facts.server import Command
from pyinfra.operations import files

from donnadb.errors import ConfigError
from donnadb.provision import consumers
from donnadb.provision.hostcopy import copied
from donnadb.provision.settings import (
    APP_GROUP,
    DB_GROUP,
    DeploySettings,
    load_deploy_settings,
)

HELPER_SRC = Path(__file__).resolve().parent / "files" / "filecopies.py"
#: The file name of root's copy (donnactl's) in a secret's folder.
ROOT_COPY = "root"


def dal_hosts(target: Host) -> list[Host]:
    """The hosts whose DAL or donnactl needs the secret: database and application hosts."""
    inventory = target.inventory
    hosts = []
    for group in (DB_GROUP, APP_GROUP):
        if group in inventory.groups:
            hosts += [h for h in inventory.get_group(group) if h not in hosts]
    return hosts


def default_origin(target: Host, what: str) -> Host:
    """The first application host, else the first database host.

    :raises ConfigError: the inventory has neither.
    """
    inventory = target.inventory
    if APP_GROUP in inventory.groups and inventory.get_group(APP_GROUP):
        return inventory.get_group(APP_GROUP)[0]
    hosts = dal_hosts(target)
    if not hosts:
        raise ConfigError(f"{what} needs a host in {DB_GROUP} or {APP_GROUP}")
    return hosts[0]


def secret_path(settings: DeploySettings, folder: str, user: str = ROOT_COPY) -> str:
    """``user``'s copy (root's by default) in the secret's folder beside DB_PASSFILE."""
    return posixpath.join(posixpath.dirname(settings.db_passfile), folder, user)


def helper_path(settings: DeploySettings) -> str:
    return f"{settings.donnadb_lib_dir}/filecopies.py"


def upload_helper(settings: DeploySettings) -> None:
    files.directory(name=f"Create {settings.donnadb_lib_dir} (root only)",
                    path=settings.donnadb_lib_dir, user="root", group="root", mode="700")
    files.put(name="Upload the secret files helper", src=str(HELPER_SRC),
              dest=helper_path(settings), user="root", group="root", mode="700")


def secret_dir(settings: DeploySettings, folder: str) -> None:
    path = posixpath.dirname(secret_path(settings, folder))
    consumers.settings_dir(f"Create {path}", path)


@operation()
def helper_converged(helper: str, args: str):
    """Run ``helper args`` when its ``--check`` says something is out of date."""
    # Any output (what to change, or an error) means run it; the real run fails loudly.
    stale = host.get_fact(Command, command=f"python3 {helper} {args} --check 2>&1 || true")
    if stale:
        yield f"python3 {helper} {args}"
    else:
        host.noop("up to date")


@deploy("Shared secret")
def hand_over(settings: DeploySettings, target: Host, *, origin: Host | None, folder: str,
              what: str, users: list[str]) -> None:
    """Root's copy of ``folder``'s secret from ``origin`` (nothing to copy on the origin
    itself; ``origin`` None: the secret is off), then ``users``' copies.

    deploy.py calls it for EVERY host from one line, after every host's own steps (as
    app.hand_over_credential, for the same reason): the origin has made it by then.
    """
    source = None if origin is None or origin.name == target.name else origin
    root_copy = secret_path(settings, folder)
    if origin is not None:
        upload_helper(settings)
        secret_dir(settings, folder)
    copied(name=f"Copy {what} from {origin.name if origin else 'its origin'}", source=source,
           source_path=secret_path(load_deploy_settings(source.data), folder) if source else "",
           dest=root_copy, owner="root")
    for user in users if origin is not None else []:
        helper_converged(name=f"{what} for {user} (0600, its own)",
                         helper=helper_path(settings),
                         args=f"share --from {root_copy} --to {secret_path(settings, folder, user)}"
                              f" --owner {shlex.quote(user)}")

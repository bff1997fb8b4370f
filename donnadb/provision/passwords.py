"""Role passwords: generated on the host, kept in a 0600 passfile, applied as SCRAM.

The helper script (files/pgpasswords.py) runs on the target with its system python3:
the passwords are created there and never travel through pyinfra, its output or any
argv. The deploy asks the helper (check mode, a fact) which roles' stored verifiers
do not match the passfile and runs the apply mode only for those; an existing
passfile (hand bootstrap, `donnactl roles rotate`) is adopted as the truth.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.host import Host
from pyinfra.operations import files

from donnadb.provision import consumers
from donnadb.provision.facts import PassfileRoles, StalePasswords
from donnadb.provision.hostcopy import copied
from donnadb.provision.settings import DeploySettings

HELPER_SRC = Path(__file__).resolve().parent / "files" / "pgpasswords.py"


def helper_path(settings: DeploySettings) -> str:
    return f"{settings.donnadb_lib_dir}/pgpasswords.py"


@operation()
def passfile_has_roles(helper: str, passfile: str, role_names: list[str]):
    """Add a generated password for each role missing from the passfile."""
    present = set(host.get_fact(PassfileRoles, path=passfile))
    missing = [r for r in role_names if r not in present]
    if missing:
        yield f"python3 {helper} ensure --passfile {passfile} " + " ".join(missing)
    else:
        host.noop("every role has a password in the passfile")


@operation()
def passwords_applied(helper: str, passfile: str, port: int, role_names: list[str]):
    """Set the SCRAM verifier of each role whose stored one does not match the passfile."""
    stale = host.get_fact(
        StalePasswords, helper=helper, passfile=passfile, port=port, role_names=role_names
    )
    todo = role_names if stale is None else stale
    if todo:
        yield f"python3 {helper} apply --passfile {passfile} --port {int(port)} " + " ".join(todo)
    else:
        host.noop("stored password verifiers match the passfile")


@deploy("Role passwords")
def converge_passwords(settings: DeploySettings, *, source: Host | None = None) -> None:
    """The root passfile and the roles' verifiers; each consumer's passfile cut from it.

    With ``source`` (a cluster member that is not the leader), the root passfile is a
    copy of the leader's: the verifiers arrive by replication, the passwords must match.
    """
    helper = helper_path(settings)
    passfile = settings.db_passfile
    roles = settings.login_roles
    files.directory(name=f"Create {settings.donnadb_lib_dir} (root only)",
                    path=settings.donnadb_lib_dir, user="root", group="root", mode="700")
    files.put(name="Upload the password helper", src=str(HELPER_SRC), dest=helper,
              user="root", group="root", mode="700")
    consumers.settings_dir(f"Create {posixpath.dirname(passfile)}", posixpath.dirname(passfile))
    if source is None:
        passfile_has_roles(name="Generate missing role passwords on the host",
                           helper=helper, passfile=passfile, role_names=roles)
        files.file(name=f"Keep {passfile} root-only (0600)", path=passfile,
                   user="root", group="root", mode="600")
        passwords_applied(name="Apply role passwords (SCRAM verifiers) where they differ",
                          helper=helper, passfile=passfile, port=settings.pg_port,
                          role_names=roles)
    else:
        copied(name=f"Copy the role passwords from the leader {source.name}",
               source=source, source_path=passfile, dest=passfile, owner="root")
    consumers.share_passfiles(settings, helper)

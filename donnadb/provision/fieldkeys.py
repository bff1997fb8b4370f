"""Field encryption's key file on every host that runs the DAL (group_data
``crypto_enabled``; docs/security.md, "Field encryption"; docs/deploy.md).

The origin (the first application host, else the first database host) makes the key
file once, with the shipped code (:func:`donnadb.crypto.keyfile.generate`: a KEK and
the e-mail look-up key, 0600 root), as ``<passfile dir>/keys.d/root``; it is never
overwritten. provision/sharedfile.py hands it to every other database and application
host and to each consumer that runs the DAL (``keys.d/USER``, 0600, its own): the keys
cross the deploy's own connections only. The settings files get CRYPTO_ENABLED=true
and CRYPTO_KEK_FILE (:func:`client_env`). With group_data ``crypto_kms_key_id`` the key
file is made sealed by that KMS key (donnadb/crypto/kms.py), the host's own KMS
credentials (its instance role) opening it, and CRYPTO_KMS_* join the settings files;
a file made in clear before is sealed by `donnactl keys seal`. A new KEK (`donnactl keys
add-kek`) is added on the origin; the next deploy carries the file everywhere.

A database that already holds personal values in clear (deployed before encryption was
on) is sealed by the deploy (`donnactl keys seal-existing`, on the database host, or the
leader of a Patroni cluster): with CRYPTO_ENABLED the DAL refuses a clear value where a
sealed one belongs, so leaving them would turn the application's reads into errors.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.host import Host
from pyinfra.facts.files import File

from donnadb.crypto import kms
from donnadb.provision import ha, install, sharedfile
from donnadb.provision.facts import UsersInClear
from donnadb.provision.settings import DeploySettings

#: The key file's folder beside DB_PASSFILE (root's copy and one per consumer).
KEYS_DIR = "keys.d"
#: Run by the shipped venv's python with the path as its argument (CRYPTO_KMS_* in its
#: environment: sealed by that KMS key).
GENERATE = ("import pathlib, sys; from donnadb.crypto import keyfile, kms; "
            "keyfile.generate(pathlib.Path(sys.argv[1]), kms.seal_from_env())")


def key_origin(target: Host) -> Host:
    return sharedfile.default_origin(target, "crypto_enabled")


def is_key_origin(settings: DeploySettings, target: Host) -> bool:
    """``target`` makes the key file (by name: deploy.py's ``host`` is a proxy)."""
    return settings.crypto_enabled and key_origin(target).name == target.name


def key_file(settings: DeploySettings, user: str = sharedfile.ROOT_COPY) -> str:
    return sharedfile.secret_path(settings, KEYS_DIR, user)


def client_env(settings: DeploySettings, user: str = sharedfile.ROOT_COPY) -> dict[str, str]:
    """The CRYPTO_* lines of a host's settings file, for ``user``'s copy (none when off)."""
    if not settings.crypto_enabled:
        return {}
    return {"CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": key_file(settings, user),
            **kms_env(settings)}


def kms_env(settings: DeploySettings) -> dict[str, str]:
    """CRYPTO_KMS_* for the KMS key that seals the key file (none when there is none)."""
    if not settings.crypto_kms_key_id:
        return {}
    return {name.upper(): getattr(settings, name) for name in kms.SETTINGS
            if getattr(settings, name)}


@operation()
def key_file_made(python: str, path: str, env: dict[str, str]):
    """``path`` exists (made by the shipped code when missing, sealed by the KMS key
    ``env`` names if any; never overwritten)."""
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists")
    else:
        yield generate_command(python, path, env)


def generate_command(python: str, path: str, env: dict[str, str]) -> str:
    """The shell command that makes the key file at ``path`` (0600), with ``env``."""
    words = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    words += [python, "-c", shlex.quote(GENERATE), shlex.quote(path)]
    return "umask 077 && " + " ".join(words)


@deploy("Field-encryption keys")
def make_key_file(settings: DeploySettings) -> None:
    """The key file on the origin (after the shipped code is installed)."""
    sharedfile.secret_dir(settings, KEYS_DIR)
    key_file_made(name=f"Make {key_file(settings)} once (a KEK and the look-up key, 0600)",
                  python=f"{settings.donnadb_install_dir}/venv/bin/python",
                  path=key_file(settings), env=kms_env(settings))


@deploy("Field-encryption keys")
def hand_over_key_file(settings: DeploySettings, target: Host, users: list[str]) -> None:
    """Root's copy of the key file from the origin, and ``users``' copies (deploy.py:
    every host, from one line, after every host's own steps)."""
    origin = key_origin(target) if settings.crypto_enabled else None
    sharedfile.hand_over(settings, target, origin=origin, folder=KEYS_DIR,
                         what="The field-encryption keys", users=users)


@operation()
def personal_values_sealed(donnactl: str, env_file: str, kek_file: str):
    """No user keeps a personal value in clear (`keys seal-existing` when one does)."""
    in_clear = host.get_fact(UsersInClear, donnactl=donnactl, env_file=env_file,
                             kek_file=kek_file)
    if in_clear == 0:
        host.noop("no personal value in clear")
    else:
        yield (f"cd / && DONNADB_HOST_ENV={shlex.quote(env_file)} CRYPTO_ENABLED=true "
               f"CRYPTO_KEK_FILE={shlex.quote(kek_file)} {donnactl} keys seal-existing --json")


@deploy("Field-encryption keys")
def seal_existing(settings: DeploySettings, target: Host) -> None:
    """On a database host (a cluster's leader), after its key file has arrived: seal what
    was stored in clear before encryption was on."""
    if not settings.crypto_enabled:
        return
    if settings.ha is not None and ha.leader(target).name != target.name:
        return
    personal_values_sealed(name="Seal personal values stored in clear (keys seal-existing)",
                           donnactl=install.donnactl_path(settings),
                           env_file=settings.donnadb_env_file, kek_file=key_file(settings))

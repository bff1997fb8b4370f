"""The code the host runs: a root-owned virtualenv built from the deploying checkout.

Scheduled jobs, the schema step and ``donnactl`` on PATH run
``<donnadb_install_dir>/venv/bin/donnactl``, never a checkout: a checkout may sit in a
home directory or under /tmp, and whoever can write it decides what root runs next
night. So the deploy

1. refuses a source tree that anyone but root (or the user running the deploy) can
   write, before it builds anything from it;
2. builds a wheel of the package from a clean copy of the tree (reproducible: every
   zip entry is dated SOURCE_DATE_EPOCH, so an unchanged tree gives the same bytes and
   the upload reports no change);
3. uploads the wheel, the schema migrations and the backup entry script into the
   install directory (root-owned, 0755: the jobs' own users must read it, not write it);
4. installs the dependencies from the host's lock file (``--require-hashes``: exactly
   the pinned files) and the wheel into the virtualenv, only when their hash differs
   from the one the last install recorded, and links ``/usr/local/bin/donnactl``.

A database host gets ``requirements/host.lock`` (the ``[ops]`` extra: donnactl and
what its commands need), the migrations and the backup script; an application host
gets ``requirements/app.lock`` (the DAL alone) or the lock of its ``app_extras``, and
``host.lock`` where its settings put some entity in dual-write (its metrics job runs
donnactl: provision/appmetrics.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files

from donnadb.errors import ConfigError
from donnadb.provision import dualstats
from donnadb.provision.settings import DeploySettings

#: What goes into the wheel, and what else the host needs from the tree.
PACKAGE_SOURCES = ("donnadb", "pyproject.toml")
SHIPPED_SOURCES = (*PACKAGE_SOURCES, "schema", "backups", "requirements")
#: A database host's dependencies: the [ops] extra, every package pinned and hashed.
HOST_LOCK = "requirements/host.lock"
#: 1980-01-01, the earliest date a zip entry can carry.
SOURCE_DATE_EPOCH = "315532800"
STAMP = ".donnadb-wheel-sha256"
PATH_LINK = "/usr/local/bin/donnactl"


def venv_dir(settings: DeploySettings) -> str:
    return f"{settings.donnadb_install_dir}/venv"


def donnactl_path(settings: DeploySettings) -> str:
    return f"{venv_dir(settings)}/bin/donnactl"


def schema_dir(settings: DeploySettings) -> str:
    return f"{settings.donnadb_install_dir}/schema/migrations"


def backup_script(settings: DeploySettings) -> str:
    return f"{settings.donnadb_install_dir}/bin/donna-backup"


def _writable_by_others(st: os.stat_result, trusted: set[int]) -> bool:
    return st.st_uid not in trusted or bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def source_tree_problem(root: Path, trusted: set[int] | None = None) -> str | None:
    """Why the code under ``root`` could have been changed by someone untrusted, or None.

    Trusted owners are root and the user running the deploy. Every shipped file and
    directory must be owned by one of them and not group/world-writable; every parent
    directory up to / too, except sticky ones (/tmp), where others cannot rename or
    replace what they do not own.
    """
    trusted = trusted if trusted is not None else {0, os.geteuid()}
    root = root.resolve()
    for parent in [root, *root.parents]:
        st = parent.stat()
        if st.st_mode & stat.S_ISVTX and st.st_uid in trusted and parent != root:
            continue
        if _writable_by_others(st, trusted):
            return f"{parent} can be written by uid {st.st_uid} or its group/others"
    for name in SHIPPED_SOURCES:
        top = root / name
        if not top.exists():
            return f"{top} is missing"
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                st = os.lstat(entry)
                if stat.S_ISLNK(st.st_mode):
                    return f"{entry} is a symlink"
                if _writable_by_others(st, trusted):
                    return f"{entry} can be written by uid {st.st_uid} or its group/others"
    return None


def check_source_tree(root: Path) -> None:
    """:raises ConfigError: the tree fails :func:`source_tree_problem`."""
    problem = source_tree_problem(root)
    if problem:
        raise ConfigError(f"refusing to ship code that others could have changed: {problem}; "
                          "deploy from a checkout owned by you or root with no group/world "
                          "write (chmod -R go-w)")


@functools.cache
def build_wheel(root: Path) -> Path:
    """A wheel of ``root``'s package, built once per deploy run from a clean copy.

    A copy, so a stale ``build/`` directory in the checkout cannot put deleted modules
    back into the wheel.

    :raises ConfigError: the build failed (pip's last line in the message).
    """
    work = Path(tempfile.mkdtemp(prefix="donnadb-wheel-"))
    src = work / "src"
    for name in PACKAGE_SOURCES:
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, src / name)
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
    )
    wheels = sorted(out.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ConfigError(f"building the donnadb wheel failed: {last[0]}; "
                          f"try `{sys.executable} -m pip wheel --no-deps {root}`")
    return wheels[0]


@operation()
def wheel_installed(venv: str, wheel: str, lock: str, sha256: str):
    """Install ``lock`` and ``wheel`` into ``venv`` (created if missing) unless their
    hash is the one recorded."""
    recorded = host.get_fact(Command, command=f"cat {venv}/{STAMP} 2>/dev/null || true")
    if recorded == sha256:
        host.noop("the installed code matches the wheel and the lock file")
        return
    yield f"test -x {venv}/bin/python || /usr/bin/python3 -m venv {venv}"
    pip = f"{venv}/bin/pip install --quiet --disable-pip-version-check"
    yield f"{pip} --require-hashes -r {lock}"
    # --force-reinstall: the version number does not change between builds, so pip
    # would keep the old files.
    yield f"{pip} --no-deps --force-reinstall {wheel}"
    yield f"echo {sha256} > {venv}/{STAMP}"


def app_lock(settings: DeploySettings) -> str:
    """An application host's lock file: the DAL alone, or with its ``app_extras``."""
    return "requirements/" + "-".join(("app", *settings.app_extras)) + ".lock"


@deploy("Install the code")
def install_code(settings: DeploySettings) -> None:
    """A database host's venv, migrations and backup script under ``donnadb_install_dir``
    (root, 0755), and donnactl on PATH.

    :raises ConfigError: the source tree is writable by others, or the wheel build failed.
    """
    root = Path(settings.donnadb_checkout)
    # A host that also drives the load test or the failure drill gets Locust too (the
    # loadtest lock holds the ops packages as well).
    install_venv(settings, app_lock(settings) if settings.app_extras else HOST_LOCK)
    files.sync(name=f"Ship the schema migrations to {schema_dir(settings)}",
               src=str(root / "schema" / "migrations"), dest=schema_dir(settings),
               user="root", group="root", mode="644", dir_mode="755", delete=True)
    files.put(name=f"Ship the backup entry script to {backup_script(settings)}",
              src=str(root / "backups" / "donna-backup"), dest=backup_script(settings),
              user="root", group="root", mode="755")
    files.link(name=f"donnactl on PATH ({PATH_LINK})", path=PATH_LINK,
               target=donnactl_path(settings))


def app_host_lock(settings: DeploySettings) -> str:
    """An application host's lock file: :func:`app_lock`, or :data:`HOST_LOCK` (the
    ``[ops]`` extra: donnactl for the metrics job of its dual-write figures) where some
    entity is in dual-write and no extra brings donnactl already."""
    if not settings.app_extras and dualstats.stats_dir(settings) is not None:
        return HOST_LOCK
    return app_lock(settings)


@deploy("Install the application's code")
def install_app_code(settings: DeploySettings) -> None:
    """An application host's venv: the DAL and its settings (and ``app_extras``, or the
    ``[ops]`` extra: :func:`app_host_lock`)."""
    lock = app_host_lock(settings)
    install_venv(settings, lock)
    if settings.app_extras or lock == HOST_LOCK:
        # The extras bring donnactl (the load test's commands; the metrics job).
        files.link(name=f"donnactl on PATH ({PATH_LINK})", path=PATH_LINK,
                   target=donnactl_path(settings))


def install_venv(settings: DeploySettings, lock_name: str) -> None:
    """The wheel of the checkout and the dependencies of ``lock_name`` in the venv.

    :raises ConfigError: the source tree is writable by others, or the wheel build failed.
    """
    root = Path(settings.donnadb_checkout)
    check_source_tree(root)
    wheel = build_wheel(root)
    base = settings.donnadb_install_dir
    apt.packages(name="Install python3-venv (the code's virtualenv)",
                 packages=["python3-venv"], cache_time=settings.pg_apt_cache_time)
    for sub in ("", "/wheels", "/bin", "/schema"):
        files.directory(name=f"Create {base}{sub} (root-owned)", path=f"{base}{sub}",
                        user="root", group="root", mode="755")
    remote = f"{base}/wheels/{wheel.name}"
    files.put(name=f"Upload {wheel.name}", src=str(wheel), dest=remote,
              user="root", group="root", mode="644")
    lock = root / lock_name
    remote_lock = f"{base}/wheels/{lock.name}"
    files.put(name="Upload the dependencies' lock file", src=str(lock), dest=remote_lock,
              user="root", group="root", mode="644")
    digest = hashlib.sha256(wheel.read_bytes() + lock.read_bytes()).hexdigest()
    wheel_installed(name=f"Install the code into {venv_dir(settings)}",
                    venv=venv_dir(settings), wheel=remote, lock=remote_lock, sha256=digest)

"""Helpers the tests share: superuser SQL through the local socket, scratch databases.

Tests run as root on the deployed host. The postgres superuser is reached only by
peer authentication over the Unix socket (`runuser -u postgres -- psql`), exactly as
the deploy does, so the tests need no superuser password either.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from donnadb import config
from donnadb.config import Settings
from donnadb.provision import bootstrap


class GroupData(dict):
    """group_data/all.py as pyinfra's host.data offers it (``get`` with a default)."""

    def get(self, key, default=None):
        return super().get(key, default)


def systemd_running() -> bool:
    """True on a host whose PID 1 is systemd (a server); False in a container without it."""
    return Path("/proc/1/comm").read_text().strip() == "systemd"


#: Tests of what only one kind of host does. The suite runs on both kinds (CI: this
#: machine without systemd, then a booted Debian 12 host with it), so each runs somewhere.
with_systemd = pytest.mark.skipif(not systemd_running(), reason="systemd is not PID 1 here")
_no_systemd = pytest.mark.skipif(systemd_running(), reason="systemd is PID 1 here")


def without_systemd(test):
    """Skipped where systemd is PID 1; marked, so CI can run these alone on its machine."""
    return pytest.mark.without_systemd(_no_systemd(test))


def give_deploy_tls(version: int, cluster: str) -> None:
    """Give a throwaway cluster (made by pg_createcluster, not yet started) the deployed
    host's TLS: its certificate, signed by the deploy's CA, names 127.0.0.1 and localhost,
    so our clients reach it over TCP with verify-full as they reach the deployed cluster.
    A conf.d file: pg_createcluster decides ``ssl`` itself, whatever ``-o`` says."""
    conf = Path(f"/etc/postgresql/{version}/{cluster}/conf.d/donna-tls.conf")
    conf.write_text(f"ssl = on\nssl_cert_file = '{config.DEFAULT_TLS_SERVER_CERT_FILE}'\n"
                    f"ssl_key_file = '{config.DEFAULT_TLS_DIR / 'server.key'}'\n"
                    "ssl_min_protocol_version = 'TLSv1.2'\n")


def unit_properties(unit: str, *names: str) -> dict[str, str]:
    """``systemctl show`` properties of ``unit`` (names as systemd spells them)."""
    out = subprocess.run(["systemctl", "show", unit, "--property", ",".join(names)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def superuser_psql(sql: str, dbname: str = "postgres", *, port: int | None = None) -> str:
    """Run ``sql`` as the postgres superuser; return psql's unaligned output.

    :raises subprocess.CalledProcessError: psql failed (stderr is in the exception).
    """
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
           "-v", "ON_ERROR_STOP=1", "-d", dbname]
    if port:
        cmd += ["-p", str(port)]
    done = subprocess.run(cmd, input=sql, capture_output=True, text=True, check=True,
                          cwd="/")
    return done.stdout.strip()


def render_database_sql(settings: Settings) -> str:
    """The deploy's database bootstrap SQL (PgBouncer's lookup included) for ``settings``."""
    return bootstrap.render_for_settings(settings)


def create_scratch_database(settings: Settings, prefix: str = "donna_test") -> str:
    """Create an empty database bootstrapped like the deployed one (no migrations)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    superuser_psql(f'CREATE DATABASE "{name}"')
    superuser_psql(render_database_sql(settings), dbname=name)
    return name


def plain_settings(settings: Settings) -> Settings:
    """``settings`` with field encryption off, whatever the host's settings file says (the
    deploy turns it on by default): for tests of the storage in clear."""
    return settings.model_copy(update={"crypto_enabled": False, "crypto_kek_file": None})


def crypto_settings(settings: Settings, kek_file: Path) -> Settings:
    """``settings`` with field encryption on (CRYPTO_ENABLED), with ``kek_file``'s keys."""
    return settings.model_copy(update={"crypto_enabled": True, "crypto_kek_file": kek_file})


def drop_database(name: str) -> None:
    superuser_psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_database_and_copies(name: str) -> None:
    """``name`` and the copies restores made of it (the replaced ``NAME_before_<stamp>``,
    a half-made ``NAME_restoring_<stamp>``): a test that restored over it leaves them."""
    drop_database(name)
    for copy in superuser_psql("SELECT datname FROM pg_database WHERE "
                               f"starts_with(datname, '{name}_')").splitlines():
        drop_database(copy)


#: The server's packages a minor update moves (libpq-dev follows libpq5's version).
SERVER_PACKAGES = ("postgresql-15", "postgresql-client-15", "libpq5", "libpq-dev")


def apt_policy(package: str) -> tuple[str | None, str | None, list[str]]:
    """(installed, candidate, every version apt knows) of ``package``."""
    import re

    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                         check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout
    installed = re.search(r"Installed: (\S+)", out)
    candidate = re.search(r"Candidate: (\S+)", out)
    table = re.findall(r"^\s+(?:\*\*\* )?(\d\S*) \d+$", out, re.M)
    none = (None, "(none)")
    return (installed[1] if installed and installed[1] not in none else None,
            candidate[1] if candidate and candidate[1] not in none else None, table)


def older_server_version() -> str | None:
    """The newest postgresql-15 version apt offers below its candidate (15.18-0+deb12u1
    while bookworm-security has 15.20), or None when there is none to go back to."""
    _, candidate, table = apt_policy("postgresql-15")
    older = [v for v in table if v != candidate and subprocess.run(
        ["dpkg", "--compare-versions", v, "lt", str(candidate)]).returncode == 0]
    return older[0] if older else None


def install_server_packages(version: str) -> None:
    """Install ``version`` of every installed server package (a downgrade included),
    without restarting anything: the test decides when the server restarts."""
    wanted = [f"{p}={version}" for p in SERVER_PACKAGES if apt_policy(p)[0] not in (None,
                                                                                   version)]
    if wanted:
        subprocess.run(["apt-get", "install", "-y", "-q", "--allow-downgrades", *wanted],
                       capture_output=True, text=True, check=True, timeout=600,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                            "DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_OFFLINE": "1"})


def one_line_error(run: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one stderr line of a donnactl that failed with ``code``, holding ``needles``."""
    assert run.returncode == code, (run.stdout, run.stderr)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def wait_for(what: str, probe, timeout: float = 120.0, interval: float = 2.0):
    """Poll ``probe()`` until it returns something true (bounded); an OSError counts as
    not yet (a server still starting).

    :raises AssertionError: ``timeout`` seconds passed (names ``what`` and the last answer).
    """
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = probe()
        except OSError as exc:
            seen = exc
        else:
            if seen:
                return seen
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s: {seen}")


@contextlib.contextmanager
def small_disk(parent: Path, size: str = "64k") -> Iterator[Path]:
    """A new folder under ``parent`` holding a tmpfs of ``size``; unmounted on exit."""
    disk = parent / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill_up(disk: Path) -> None:
    """Fill ``disk`` (a :func:`small_disk`): any write to it then fails with ENOSPC."""
    with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)


@contextlib.contextmanager
def full_disk(parent: Path, files: dict[str, str] | None = None) -> Iterator[Path]:
    """A 64 KiB :func:`small_disk` holding ``files`` (name: text), then filled up."""
    with small_disk(parent) as disk:
        for name, text in (files or {}).items():
            (disk / name).parent.mkdir(exist_ok=True)
            (disk / name).write_text(text)
        fill_up(disk)
        yield disk


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1 (S3, KMS and the rest on one port), with boto3's
    credentials set for it: its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    # moto accepts any credentials; these exist only for this in-process server.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Throwaway databases for the benchmarks, bootstrapped like the deployed one, and a
throwaway hot standby of the deployed cluster (bench/dal.py --read-from replicas).

They are made through the postgres superuser over the local socket, as a restore
makes its target (donnadb.backup.bootstrap), and named ``<prefix>_<random>`` so that
runs beside each other (or beside the tests) never meet.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from report import Busy

from donnadb import db
from donnadb.backup import bootstrap
from donnadb.config import Settings
from donnadb.errors import DonnaError

#: A benchmark's scratch databases write gigabytes into the deployed cluster, and their
#: WAL stays in pgBackRest's repo1 until a later full backup lets it expire: below this
#: much free space on either file system a benchmark does not start.
MIN_FREE_BYTES = 10 * 2**30
PGBACKREST_CONF = Path("/etc/pgbackrest/pgbackrest.conf")


def create_scratch_database(settings: Settings, prefix: str = "donna_bench") -> str:
    """Create an empty database with the deploy's bootstrap (no migrations); its name.

    :raises SystemExit: too little free space for a benchmark (check_free_space).
    """
    check_free_space()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    bootstrap.create_database(settings, name)
    return name


def check_free_space(minimum: int | None = None) -> None:
    """Stop, in one line, when the cluster's data directory or pgBackRest's repo1 has
    less than ``minimum`` bytes free (default :data:`MIN_FREE_BYTES`)."""
    minimum = MIN_FREE_BYTES if minimum is None else minimum
    paths = [db.superuser_psql("SHOW data_directory")]
    if PGBACKREST_CONF.is_file():
        paths += [line.split("=", 1)[1].strip()
                  for line in PGBACKREST_CONF.read_text().splitlines()
                  if line.startswith("repo1-path=")]
    for path in paths:
        free = shutil.disk_usage(path).free
        if free < minimum:
            raise SystemExit(
                f"{path} has {free / 2**30:.1f} GiB free, under the {minimum / 2**30:.0f} "
                "GiB a benchmark needs (its scratch databases and their archived WAL): "
                "free space first (`donnactl backup physical --type full` lets the WAL "
                "older than the kept full backups expire)")


def busy_if_turned_away(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the server's "too many connections" refusal raised as report.Busy:
    others' tests share the backup role's connection limit on this machine."""
    @functools.wraps(fn)
    def run():
        try:
            return fn()
        except DonnaError as exc:
            if "too many connections" in str(exc):
                raise Busy(str(exc).rsplit("FATAL:", 1)[-1].strip()) from None
            raise
    return run


def drop_database(name: str) -> None:
    """Drop ``name`` (disconnecting its sessions) if it exists."""
    bootstrap.drop_database(name)


#: WAL segments the archiver has not taken yet (pgBackRest compresses each one).
WAL_WAITING = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
#: How long :func:`settle` waits for the archiver before it lets the next side start.
SETTLE_TIMEOUT = 180.0


def settle(timeout: float = SETTLE_TIMEOUT) -> float:
    """Let the server finish what the side before wrote, so that it does not land on the
    next side: a CHECKPOINT, then the archiver's backlog taken (after a load of a million
    rows pgBackRest compresses gigabytes of WAL: seconds of CPU on the same cores).
    Returns the seconds it took; after ``timeout`` it stops waiting and says so."""
    started = time.monotonic()
    db.superuser_psql("CHECKPOINT")
    while int(db.superuser_psql(WAL_WAITING)) > 0:
        if time.monotonic() - started > timeout:
            print(f"(the archiver still had WAL to take after {timeout:.0f} s: "
                  "the next side shares the cores with it)", flush=True)
            break
        time.sleep(0.5)
    return time.monotonic() - started


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/").stdout


def _psql(sql: str, port: int) -> str:
    return _run("runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-p", str(port),
                "-c", sql).strip()


@contextmanager
def hot_standby(settings: Settings, port: int) -> Iterator[int]:
    """A hot standby of the cluster on DB_PORT, listening on 127.0.0.1:``port``.

    Made with the Debian tools as an operator would: ``pg_createcluster`` for the
    configuration, ``pg_basebackup -R`` (over the local socket, as postgres) for the data
    (the whole deployed cluster), ``pg_ctlcluster`` to start it; ``pg_dropcluster``
    removes it. It uses the deploy's TLS certificate, which names 127.0.0.1.
    """
    name = f"bench{uuid.uuid4().hex[:6]}"
    version, primary = settings.pg_version, settings.db_port
    conf = Path(f"/etc/postgresql/{version}/{name}")
    data = Path(f"/var/lib/postgresql/{version}/{name}")
    preload = _psql("SHOW shared_preload_libraries", primary)
    # A hot standby refuses to start with less of these than its primary has.
    at_least = _psql("SELECT string_agg(format('%s = %s', name, setting), E'\\n') "
                     "FROM pg_settings WHERE name IN ('max_connections', "
                     "'max_worker_processes', 'max_wal_senders', "
                     "'max_prepared_transactions', 'max_locks_per_transaction')", primary)
    tls = settings.db_sslrootcert.parent
    try:
        _run("pg_createcluster", str(version), name, "-p", str(port))
        (conf / "conf.d" / "bench-standby.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {port}\n"
            f"shared_preload_libraries = '{preload}'\n{at_least}\nssl = on\n"
            f"ssl_cert_file = '{tls / 'server.crt'}'\nssl_key_file = '{tls / 'server.key'}'\n")
        shutil.rmtree(data)
        _run("runuser", "-u", "postgres", "--", "pg_basebackup", "-p", str(primary),
             "-D", str(data), "-R", "-X", "stream", "--checkpoint=fast")
        _run("pg_ctlcluster", str(version), name, "start")
        deadline = time.monotonic() + 60
        while _psql("SELECT pg_is_in_recovery()", port) != "t":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby {name} did not start: see its log")
            time.sleep(0.2)
        yield port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", str(version), name], capture_output=True,
                       check=False)
        shutil.rmtree(conf, ignore_errors=True)

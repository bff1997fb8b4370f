"""Run Locust headless around the scenarios and turn its output into a verdict.

``run()`` resets pg_stat_statements, snapshots PgBouncer's counters, starts
``locust --headless`` (optionally ``--processes N``, or as a master awaiting workers),
samples PgBouncer's pools while it runs, then reads the CSV, draws the PNG and applies
the SLO gate. Locust is a subprocess: importing it here would monkey-patch donnactl.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from donnadb import db
from donnadb.config import Settings
from donnadb.crypto import kms
from donnadb.dal.fileio import write_atomic
from donnadb.errors import DatabaseError, DonnaError, PreconditionError, UsageError
from donnadb.loadtest import plot, serverstats, slo
from donnadb.loadtest.names import QUERY_NAMES
from donnadb.loadtest.seed import CHAT_PREFIX, USER_PREFIX

log = logging.getLogger(__name__)

#: Where the donnadb package is imported from (a checkout or site-packages): Locust's
#: processes import it from there too.
ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "locust"
REPORT_HTML = "report.html"
#: Locust writes its reports here under ``--out`` (``.run-<random>``); they replace the
#: previous run's only once it has written them all.
STAGING_PREFIX = ".run-"
DEFAULT_MASTER_PORT = 5557
class LocustFailed(DonnaError):
    """Locust itself failed (not the SLO): bad options, crash, no statistics written."""

    exit_code = 10


#: One seeded user with a seeded chat is what the scenarios need to start.
SEEDED_SQL = """
SELECT EXISTS (SELECT 1 FROM users AS u JOIN chat_sessions AS s ON s.user_id = u.id
                WHERE u.clerk_id LIKE %(users)s AND s.chat_id LIKE %(chats)s)
"""
#: Whether the seeded users' personal fields are sealed (a seed is all one way).
SEEDED_SEALED_SQL = """
SELECT email_sealed IS NOT NULL FROM users
 WHERE clerk_id LIKE %(users)s AND (email IS NOT NULL OR email_sealed IS NOT NULL)
 LIMIT 1
"""
_SPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """Seconds in ``"90"``, ``"45s"``, ``"5m"``, ``"1h30m"``.

    :raises UsageError: anything else.
    """
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        m = _SPAN.match(text)
        if not m or not any(m.groups()):
            raise UsageError(f"bad duration {text!r}: use e.g. 90, 45s, 5m or 1h30m")
        h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if seconds < 1:
        raise UsageError(f"bad duration {text!r}: must be at least 1 second")
    return seconds


@dataclass
class RunOptions:
    users: int = 150
    spawn_rate: float = 25.0
    duration: str = "5m"
    out_dir: Path = Path("loadtest-results")
    dbname: str | None = None
    pgbouncer_port: int | None = 6432  # None/0: straight to PostgreSQL
    pool_size: int = 50  # client connections per Locust process
    warmup: float = 0.0  # seconds at full load before the measured time (not judged)
    processes: int | None = None  # locust --processes (fork N workers on this host)
    expect_workers: int | None = None  # run as a master awaiting this many workers
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = DEFAULT_MASTER_PORT
    p95_limit_ms: float = slo.P95_LIMIT_MS
    user_class: str = "ChatUser"
    extra_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """:raises UsageError: options that cannot work together."""
        if self.users < 1 or self.spawn_rate <= 0:
            raise UsageError("--users must be >= 1 and --spawn-rate > 0")
        if self.processes is not None and self.expect_workers is not None:
            raise UsageError("use --processes (one host) or --master (several), not both")
        if self.processes is not None and self.processes < 1 and self.processes != -1:
            raise UsageError("--processes must be >= 1 (or -1: one per core)")
        if self.pool_size < 1:
            raise UsageError("--pool-size must be >= 1")
        if self.warmup < 0:
            raise UsageError("--warmup must be >= 0 seconds")
        parse_duration(self.duration)


def preflight(opts: RunOptions, settings: Settings) -> None:
    """Check in seconds what a run needs, before Locust starts: Locust itself, a seeded
    database, and PgBouncer answering on its port (unless the run goes direct).

    :raises PreconditionError: Locust is not installed, or the database is not seeded
        (or not migrated, or seeded sealed/in clear against CRYPTO_ENABLED).
    :raises KeyFileError: CRYPTO_ENABLED with no usable key file.
    :raises DatabaseError: PostgreSQL or PgBouncer cannot be reached.
    """
    if importlib.util.find_spec("locust") is None:
        raise PreconditionError("Locust is not installed in this environment: "
                                "pip install 'donnadb[loadtest]'")
    dbname = opts.dbname or settings.db_name
    if opts.user_class != "SleepUser":  # the chat mixes read the seeded users and chats
        # As the role the run itself uses: an application host holds no other credential.
        with db.connection("app", settings=settings, dbname=opts.dbname) as conn:
            try:
                seeded = conn.execute(SEEDED_SQL, {"users": USER_PREFIX + "%",
                                                   "chats": CHAT_PREFIX + "%"}).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                raise PreconditionError(f"{dbname} has no schema: run `donnactl migrate apply "
                                        f"--dbname {dbname}`, then `donnactl loadtest seed`"
                                        ) from None
            row = conn.execute(SEEDED_SEALED_SQL, {"users": USER_PREFIX + "0%"}).fetchone()
        if not seeded:
            raise PreconditionError(f"{dbname} holds no seeded users: run `donnactl loadtest "
                                    f"seed --dbname {dbname}` first")
        if row is not None and row[0] != settings.crypto_enabled:
            # Every memory read would be refused (or return ciphertext): no test at all.
            raise PreconditionError(
                f"{dbname} was seeded with personal fields {'sealed' if row[0] else 'in clear'}"
                f" but CRYPTO_ENABLED is {'on' if settings.crypto_enabled else 'off'}: run "
                f"`donnactl loadtest seed --dbname {dbname}` with the run's settings")
    if settings.crypto_enabled:
        _check_key_file(settings)
    if opts.pgbouncer_port:
        via = settings.model_copy(update={"pgbouncer_port": opts.pgbouncer_port})
        try:
            db.connect("app", settings=via, dbname=opts.dbname, connect_timeout=5).close()
        except DatabaseError as exc:
            raise DatabaseError(f"PgBouncer on port {opts.pgbouncer_port} does not let the app "
                                f"role into {dbname} ({str(exc).strip().splitlines()[0]}); "
                                "start PgBouncer, or run with --direct") from None


def _check_key_file(settings: Settings) -> None:
    """:raises KeyFileError: CRYPTO_KEK_FILE unset or unusable (the DAL of every Locust
    process would refuse to start)."""
    from donnadb.dal.sealed import Sealer  # as the DAL: only with CRYPTO_ENABLED

    Sealer(settings)


def donna_args(dbname: str | None, pgbouncer_port: int | None, pool_size: int) -> list[str]:
    """The locustfile's own options (a master passes them on to its workers)."""
    return ["--donna-pgbouncer-port", str(pgbouncer_port or 0),
            "--donna-pool-size", str(pool_size),
            *(["--donna-dbname", dbname] if dbname else [])]


def locust_command(opts: RunOptions, reports: Path | None = None) -> list[str]:
    """Locust's command line, its CSV files and HTML report going to ``reports``
    (default: ``--out``)."""
    reports = reports or opts.out_dir
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "-u", str(opts.users), "-r", f"{opts.spawn_rate:g}", "-t", _run_time(opts),
           "--csv", str(reports / CSV_PREFIX), "--csv-full-history",
           "--html", str(reports / REPORT_HTML),
           # The verdict must not count the ramp-up: stats restart once all users run,
           # and again after the warm-up.
           "--reset-stats", "--only-summary", "--stop-timeout", "10",
           *donna_args(opts.dbname, opts.pgbouncer_port, opts.pool_size)]
    if opts.warmup > 0:
        cmd += ["--donna-warmup", f"{opts.warmup:g}"]
    if opts.processes is not None:
        cmd += ["--processes", str(opts.processes)]
    if opts.expect_workers is not None:
        cmd += ["--master", "--expect-workers", str(opts.expect_workers),
                "--master-bind-host", opts.master_bind_host,
                "--master-bind-port", str(opts.master_bind_port)]
    return [*cmd, *opts.extra_args, opts.user_class]


def _run_time(opts: RunOptions) -> str:
    """Locust's --run-time: the duration (ramp-up included), plus the warm-up."""
    if opts.warmup <= 0:
        return opts.duration
    return f"{parse_duration(opts.duration) + math.ceil(opts.warmup)}s"


def worker_command(master_host: str, master_port: int, processes: int | None = None,
                   user_class: str = "ChatUser") -> list[str]:
    """A worker for a master on ``master_host`` (options come from the master)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
           "--master-host", master_host, "--master-port", str(master_port)]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    return [*cmd, user_class]


def start(cmd: list[str], logf: Any, settings: Settings | None = None) -> subprocess.Popen:
    """Start a Locust command (:func:`locust_command`) writing its output to ``logf``;
    its DAL seals as ``settings`` say (see :func:`_env`)."""
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_env(settings),
                            cwd=str(ROOT))


def _env(settings: Settings | None = None) -> dict[str, str]:
    """The environment of a Locust process: the package importable and, given
    ``settings``, their field encryption.

    Locust's processes build their settings again from the environment and the env
    files (in ROOT, not the caller's directory), so a CRYPTO_ENABLED this process got
    from a flag or its own ./.env would be lost: their DAL would then write in clear
    into a sealed store, and hand back ciphertext as if it were the values.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if settings is not None:
        env["CRYPTO_ENABLED"] = "true" if settings.crypto_enabled else "false"
        env["CRYPTO_KEK_FILE"] = str(settings.crypto_kek_file or "")
        for name in kms.SETTINGS:
            env[name.upper()] = getattr(settings, name) or ""
    return env


@dataclass
class RunResult:
    verdict: slo.Verdict
    out_dir: Path
    files: dict[str, str]
    pool: dict[str, Any] | None
    statements: dict[str, Any]
    locust_exit: int
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "out_dir": str(self.out_dir),
                "files": self.files, "pool": self.pool, "statements": self.statements,
                "locust_exit": self.locust_exit, "options": self.options}


def run(opts: RunOptions, settings: Settings,
        tick: Callable[[float, float], None] | None = None) -> RunResult:
    """Run the load test and judge it. ``tick(elapsed_s, expected_s)`` reports progress.

    :raises UsageError: bad options. :raises LocustFailed: Locust wrote no statistics.
    :raises PreconditionError, DatabaseError: see :func:`preflight` (nothing started).
    """
    opts.validate()
    preflight(opts, settings)
    opts.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dbname = opts.dbname or settings.db_name
    reset_error = serverstats.reset_statements(settings, dbname)
    port = opts.pgbouncer_port or None
    before = _safe(lambda: serverstats.pgbouncer_stats(settings, port, dbname)) if port else None
    expected = parse_duration(opts.duration) + opts.warmup + 15
    log_path = opts.out_dir / "locust.log"
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=opts.out_dir))
    try:
        cmd = locust_command(opts, staging)
        sampler = serverstats.PoolSampler(settings, port, dbname) if port else None
        with log_path.open("w", encoding="utf-8") as logf:
            started = time.monotonic()
            if sampler:
                sampler.__enter__()
            try:
                proc = start(cmd, logf, settings)
                while proc.poll() is None:
                    if tick:
                        tick(time.monotonic() - started, expected)
                    time.sleep(0.5)
            finally:
                if sampler:
                    sampler.__exit__()
        _raise_if_full(opts.out_dir)  # before "no statistics": Locust's writes failed
        staged_csv = staging / f"{CSV_PREFIX}_stats.csv"
        if not staged_csv.exists() or staged_csv.stat().st_size == 0:
            tail = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:]
            raise LocustFailed(f"locust exited {proc.returncode} without statistics: "
                               f"{tail} (see {log_path})")
        for each in staging.iterdir():  # renames: no room needed, each file whole
            os.replace(each, opts.out_dir / each.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    after = _safe(lambda: serverstats.pgbouncer_stats(settings, port, dbname)) if port else None
    stats_csv = opts.out_dir / f"{CSV_PREFIX}_stats.csv"
    pool = serverstats.pool_report(before, after, sampler.samples) if sampler else None
    if pool is not None and sampler and sampler.error:
        pool["sampling_error"] = sampler.error
    statements = serverstats.statements(settings, dbname)
    if reset_error:
        statements["reset_error"] = reset_error
    verdict = slo.evaluate(
        slo.read_stats(stats_csv),
        expected_names=QUERY_NAMES if opts.user_class == "ChatUser" else (),
        p95_limit_ms=opts.p95_limit_ms,
        pool_efficiency=pool.get("efficiency") if pool else None,
    )
    files = {"stats_csv": str(stats_csv), "html": str(opts.out_dir / REPORT_HTML),
             "log": str(log_path)}
    history = opts.out_dir / f"{CSV_PREFIX}_stats_history.csv"
    if history.exists():
        png = plot.plot(history, opts.out_dir / "latency.png", target_users=opts.users,
                        p95_limit_ms=opts.p95_limit_ms)
        files["png"] = str(png)
    result = RunResult(verdict=verdict, out_dir=opts.out_dir, files=files, pool=pool,
                       statements=statements, locust_exit=proc.returncode,
                       options={"users": opts.users, "spawn_rate": opts.spawn_rate,
                                "duration": opts.duration, "warmup": opts.warmup,
                                "processes": opts.processes,
                                "workers": opts.expect_workers, "dbname": dbname,
                                "pgbouncer_port": port, "pool_size": opts.pool_size})
    # Whole or not at all: a full disk leaves the previous run's verdict, not a torn one.
    write_atomic(opts.out_dir / "verdict.json",
                 json.dumps(result.to_dict(), indent=2, default=str).encode("utf-8"),
                 mode=0o644)
    return result


def _raise_if_full(directory: Path) -> None:
    """Locust does not fail when its CSV writes do: a full disk under ``--out`` is told
    as such rather than as a Locust failure or an empty run.

    :raises OSError: ENOSPC, naming ``directory``, when its file system has no room left.
    """
    if os.statvfs(directory).f_bavail == 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # PgBouncer figures are informative: never fail the run
        log.warning("PgBouncer statistics unavailable: %s", exc)
        return None

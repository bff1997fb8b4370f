"""The DAL's hot calls vs. the psycopg floor and pgbench running the same SQL.

    .venv/bin/python bench/vs_pgbench.py --clients 10 --seconds 10 --rounds 3 \
        [--pgbouncer-port 6432] [--query history|append]

``--query history`` (the default) is the history read, ``append`` the message append
(``add_message`` into chats of the benchmark's own, ``lt-run-vsbench-*``, made before
and deleted after the run).

1. picks the seeded chats (`donnactl loadtest seed` first) of DB_NAME (or --dbname);
2. baseline: ``pgbench -M prepared -n -c N -j 2 -T S -f query.sql`` as the app role,
   the DAL's statement with the chat id drawn by pgbench (``random()`` over the
   chats; the id is built in SQL, so the statement is the same and the parameter
   differs only in where it is computed);
3. the DAL: N threads each looping ``PostgresDataAccess.get_chat_history(chat, 20)``
   (or ``add_message``) over random chats for S seconds (the DAL prepares after 5
   executions, the same protocol as -M prepared; through PgBouncer it cannot),
   spread over ``--processes`` processes (default 2: pgbench's ``-j 2`` gives its
   clients two threads, i.e. two cores; one Python process uses at most one, as an app
   server runs several worker processes for the same reason);
4. a bare ``psycopg_pool`` loop (same threads, same SQL, psycopg's cursor API, default
   row tuples, no DAL code): what a plain psycopg application pays;
5. the psycopg floor: the least any client built on psycopg can do to hand Python
   values to an app. Each thread makes one libpq call per query on a connection of its
   own (``PGconn.exec_prepared``, the statement prepared once; through PgBouncer
   ``exec_params``) and psycopg's C loaders, with the DAL's json loader, turn the rows
   into tuples: no cursor, no pool, no DAL code. What it reaches bounds what the DAL
   can reach on this host;
5b. the API floor: the floor plus what the DAL's public API asks of any implementation,
   a connection from one shared ``psycopg_pool`` per call (threads do not own
   connections; with the DAL's checkout check) and rows as dicts: the DAL's own
   lower-layer call (``fastpath.fetch``) and nothing of the DAL around it. DAL / API
   floor is the cost of the DAL's own code, API floor / floor the cost of the API;
6. repeats 2-5 ``--rounds`` times interleaved (the host is shared: a neighbour's load
   hits every side of a round alike) and prints each round, then the min-max (and
   median) over the rounds of the DAL's throughput over the floor's (goal: >= 0.8),
   the DAL's, the bare pool's and the floor's shares of pgbench's, the CPU per query
   on each side and the load average.

Runs as root on the deployed host (the passfile is root's); nothing is written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus
from psycopg_pool import ConnectionPool
from report import header, rotated, span

from donnadb import db
from donnadb.config import load_settings
from donnadb.dal import PostgresDataAccess, fastpath
from donnadb.dal import postgres_sql as q
from donnadb.dal.postgres import _check_idle_connection, dal_adapters
from donnadb.loadtest.seed import CHAT_PREFIX, RUN_CHAT_PREFIX

CHATS_SQL = "SELECT count(*) FROM chat_sessions WHERE chat_id LIKE %s"
APPEND_PREFIX = f"{RUN_CHAT_PREFIX}vsbench-"
APPEND_CHATS = 1000
APPEND_TEXT = "Could you move the dentist appointment to Thursday afternoon, please?"
DELETE_APPEND_CHATS = "DELETE FROM chat_sessions WHERE chat_id LIKE %s"


class Workload:
    """One hot call: its DAL statement with every parameter's value for a chat, the
    DAL's own call, and the chats it draws from (``prefix`` + a zero-padded number)."""

    def __init__(self, kind: str, prefix: str, width: int, n_chats: int) -> None:
        self.kind, self.prefix, self.width, self.n_chats = kind, prefix, width, n_chats
        self.query = q.SELECT_HISTORY if kind == "history" else q.ADD_MESSAGE
        self.chats = [f"{prefix}{i:0{width}d}" for i in range(n_chats)]

    def params(self, chat: str) -> dict:
        if self.kind == "history":
            return {"chat_id": chat, "limit": 20, "offset": 0}
        return {"chat_id": chat, "role": "user", "content": APPEND_TEXT, "metadata": "{}",
                "token_count": None, "abuse_flagged": False}

    def dal_call(self, dal: PostgresDataAccess, chat: str) -> None:
        if self.kind == "history":
            dal.get_chat_history(chat, 20)
        else:
            dal.add_message(chat, "user", APPEND_TEXT)

    def statement(self, name: str) -> fastpath.Statement:
        """The query as the DAL's fast path runs it (``$n`` placeholders), as ``name``."""
        return fastpath.Statement(name, self.query, list(self.params(self.chats[0])))

    def positional(self) -> tuple[bytes, list[str]]:
        """The statement with ``$n`` placeholders, and the parameters' names in order."""
        return self.statement(self.kind).sql, list(self.params(self.chats[0]))

    def text_values(self, chat: str) -> list[bytes | None]:
        """The parameters in the text format libpq sends."""
        out: list[bytes | None] = []
        for value in self.params(chat).values():
            if value is None:
                out.append(None)
            elif isinstance(value, bool):
                out.append(b"t" if value else b"f")
            else:
                out.append(str(value).encode())
        return out

    def pgbench_script(self) -> str:
        """The statement with its parameters filled by pgbench (the chat drawn by it)."""
        sql = self.query
        for name, value in self.params(self.chats[0]).items():
            if name == "chat_id":
                literal = f"'{self.prefix}' || lpad(:n::text, {self.width}, '0')"
            elif value is None:
                literal = "NULL"
            elif isinstance(value, bool | int):
                literal = str(value).lower()
            else:
                literal = "'" + str(value).replace("'", "''") + "'"
            sql = sql.replace(f"%({name})s", literal)
        body = " ".join(sql.split())
        return f"\\set n random(0, {self.n_chats - 1})\n{body};\n"
# The backends serving the benchmark: the app role's in the benchmark's database.
BACKENDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a local process from /proc, or None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _pgbouncer_pids() -> list[int]:
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/comm")
            if _read(p) == "pgbouncer"]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class ServerCpu:
    """CPU the server side spent during a run: the app role's backends in the database
    (sampled from /proc every 0.2 s, so a backend that exits loses at most its last
    0.2 s) plus, through PgBouncer, PgBouncer's process. Other sessions of that role in
    that database (and other PgBouncer clients) count too: the report says so."""

    def __init__(self, settings, dbname: str) -> None:
        self.settings, self.dbname = settings, dbname
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self, conn) -> None:
        pids = [r[0] for r in conn.execute(
            BACKENDS_SQL, (self.dbname, self.settings.db_role_app)).fetchall()]
        if self.settings.pgbouncer_port is not None:
            pids += [-p for p in _pgbouncer_pids()]
        for pid in pids:
            cpu = _cpu_seconds(abs(pid))
            if cpu is not None:
                self.first.setdefault(pid, cpu)
                self.last[pid] = cpu

    def _loop(self) -> None:
        with db.connection("readonly", settings=self.settings, dbname=self.dbname) as conn:
            conn.autocommit = True
            while True:
                self._sample(conn)
                if self.stop.wait(0.2):
                    self._sample(conn)
                    return

    def __enter__(self) -> ServerCpu:
        self.thread.start()
        time.sleep(0.3)  # the first sample sets every existing backend's baseline
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last)


class Run:
    """One side of a round: rate, and CPU microseconds per query on each side."""

    def __init__(self, rate: float, queries: int, client_cpu: float, server_cpu: float):
        self.rate = rate
        self.client_us = client_cpu / max(queries, 1) * 1e6
        self.server_us = server_cpu / max(queries, 1) * 1e6


def run_pgbench(settings, dbname: str, port: int, clients: int, seconds: int,
                work: Workload, prepared: bool) -> Run:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(work.pgbench_script())
        script = f.name
    try:
        env = dict(os.environ, PGPASSFILE=str(settings.db_passfile),
                   **db.tls_env(settings, via_pgbouncer=port == settings.pgbouncer_port))
        cmd = ["pgbench", "-n", "-M", "prepared" if prepared else "extended",
               "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
               "-h", settings.db_host, "-p", str(port), "-U", settings.db_role_app,
               "-f", script, dbname]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with ServerCpu(settings, dbname) as server:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(script)
    m = re.search(r"tps = ([\d.]+)", out)
    n = re.search(r"number of transactions actually processed: (\d+)", out)
    if not m or not n:
        raise SystemExit(f"pgbench printed no tps:\n{out}")
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(float(m.group(1)), int(n.group(1)), client, server.seconds)


def _loop(clients: int, seconds: int, call) -> tuple[int, float, float]:
    """``clients`` threads calling ``call(rng)`` for ``seconds``: (calls, wall s, CPU s)."""
    counts = [0] * clients
    stop = threading.Event()

    def loop(k: int) -> None:
        rng = random.Random(k)  # noqa: S311 - picks chats, not secrets
        while not stop.is_set():
            call(rng)
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    cpu0, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start, time.process_time() - cpu0


def _side(kind: str, settings, dbname: str, clients: int, seconds: int, work: Workload,
          ready) -> tuple[int, float, float]:
    """One process's share of a side: ``kind`` "dal" (PostgresDataAccess.get_chat_history),
    "bare" (psycopg_pool, tuples, no checkout check, no DAL code) or "floor" (see
    :func:`_floor`). Warms up (every connection open, the statement prepared where it
    may be), calls ``ready()``, then runs :func:`_loop`."""
    if kind == "floor":
        call, close = _floor(settings, dbname, clients, work)
    elif kind == "api":
        call, close = _api_floor(settings, dbname, clients, work)
    elif kind == "dal":
        s = settings.model_copy(update={"db_max_connections": clients})
        dal = PostgresDataAccess(s, dbname=dbname, min_size=clients)
        close = dal.close

        def call(rng: random.Random) -> None:
            work.dal_call(dal, rng.choice(work.chats))
    else:
        kwargs: dict = {"autocommit": True}
        if settings.pgbouncer_port is not None:
            kwargs["prepare_threshold"] = None
        pool = ConnectionPool(db.conninfo("app", settings=settings, dbname=dbname),
                              min_size=clients, max_size=clients, kwargs=kwargs)
        pool.wait()
        close = pool.close

        def call(rng: random.Random) -> None:
            with pool.connection() as conn:
                conn.execute(work.query, work.params(rng.choice(work.chats))).fetchall()
    try:
        # The floor warmed each of its connections itself: a call from this thread would
        # keep one of them for itself.
        if kind != "floor":
            warm = random.Random(0)  # noqa: S311 - picks chats, not secrets
            for _ in range(clients * 10):
                call(warm)
        ready()
        return _loop(clients, seconds, call)
    finally:
        close()


def _floor(settings, dbname: str, clients: int, work: Workload):
    """The psycopg floor's ``(call, close)``: ``clients`` connections, each warmed up and
    then taken by the first thread that calls; a call is one libpq round trip
    (PGconn.exec_prepared, or exec_params through PgBouncer, which cannot keep prepared
    statements) and psycopg's C loaders making the rows into tuples."""
    statement, _ = work.positional()
    prepared = settings.pgbouncer_port is None
    info = db.conninfo("app", settings=settings, dbname=dbname)
    idle: queue.SimpleQueue = queue.SimpleQueue()
    opened: list[psycopg.Connection] = []
    local = threading.local()

    def run(pgconn, tx: Transformer, chat: str) -> None:
        params = work.text_values(chat)
        res = (pgconn.exec_prepared(b"floor", params) if prepared
               else pgconn.exec_params(statement, params))
        if res.status != ExecStatus.TUPLES_OK:
            raise SystemExit(f"floor query failed: {res.error_message.decode()}")
        tx.set_pgresult(res)
        tx.load_rows(0, res.ntuples, tuple)

    warm = random.Random(0)  # noqa: S311 - picks chats, not secrets
    for _ in range(clients):
        conn = psycopg.connect(info, autocommit=True, context=dal_adapters())
        opened.append(conn)
        if prepared:
            conn.pgconn.prepare(b"floor", statement)
        pair = (conn.pgconn, Transformer(conn))
        for _ in range(10):
            run(*pair, warm.choice(work.chats))
        idle.put(pair)

    def call(rng: random.Random) -> None:
        pair = getattr(local, "pair", None)
        if pair is None:
            pair = local.pair = idle.get()
        run(*pair, rng.choice(work.chats))

    def close() -> None:
        for conn in opened:
            conn.close()

    return call, close


def _api_floor(settings, dbname: str, clients: int, work: Workload):
    """The API floor's ``(call, close)`` (see the module's docstring, 5b)."""
    statement = work.statement(f"bench_{work.kind}")
    prepared = settings.pgbouncer_port is None
    kwargs: dict = {"autocommit": True, "context": dal_adapters()}
    if not prepared:
        kwargs["prepare_threshold"] = None
    pool = ConnectionPool(db.conninfo("app", settings=settings, dbname=dbname),
                          min_size=clients, max_size=clients, kwargs=kwargs,
                          check=_check_idle_connection, open=True)
    pool.wait()

    def call(rng: random.Random) -> list[dict]:
        conn = pool.getconn()
        try:
            return fastpath.fetch(conn, statement, work.text_values(rng.choice(work.chats)),
                                  prepare=prepared)
        finally:
            pool.putconn(conn)

    return call, pool.close


def _child(kind, settings, dbname, clients, seconds, work, barrier, results) -> None:
    results.put(_side(kind, settings, dbname, clients, seconds, work, barrier.wait))


def run_side(kind: str, settings, dbname: str, clients: int, seconds: int,
             work: Workload, processes: int) -> Run:
    """The side ``kind`` with ``clients`` threads spread over ``processes`` processes
    (pgbench's ``-j`` counterpart: one Python process uses at most one core)."""
    server = ServerCpu(settings, dbname)
    if processes <= 1:
        n, wall, client = _side(kind, settings, dbname, clients, seconds, work,
                                server.__enter__)
        server.__exit__()
        return Run(n / wall, n, client, server.seconds)
    ctx = multiprocessing.get_context("forkserver")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    shares = [clients // processes + (1 if i < clients % processes else 0)
              for i in range(processes)]
    children = [ctx.Process(target=_child, args=(kind, settings, dbname, share, seconds,
                                                 work, barrier, results))
                for share in shares]
    for child in children:
        child.start()
    barrier.wait()
    with server:
        done = [results.get() for _ in children]
    for child in children:
        child.join()
    n = sum(d[0] for d in done)
    return Run(n / max(d[1] for d in done), n, sum(d[2] for d in done), server.seconds)


def cpu(run: Run) -> str:
    return f"{run.client_us:.0f} / {run.server_us:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes sharing the DAL's clients (default 2, as pgbench's "
                             "-j 2; 1 = one GIL-bound process)")
    parser.add_argument("--dbname", default=None)
    parser.add_argument("--pgbouncer-port", type=int, default=0,
                        help="run both through PgBouncer (0: direct)")
    parser.add_argument("--query", choices=("history", "append"), default="history",
                        help="the history read (default) or the message append")
    args = parser.parse_args()
    settings = load_settings(pgbouncer_port=args.pgbouncer_port or None)
    if not args.pgbouncer_port:
        settings = settings.model_copy(update={"pgbouncer_port": None})
    dbname = args.dbname or settings.db_name
    with db.connection("readonly", settings=settings, dbname=dbname) as conn:
        n_chats = conn.execute(CHATS_SQL, (CHAT_PREFIX + "%",)).fetchone()[0]
    if n_chats == 0:
        raise SystemExit("no seeded chats: run `donnactl loadtest seed` first")
    if args.query == "history":
        work = Workload("history", CHAT_PREFIX, 7, n_chats)
    else:
        work = Workload("append", APPEND_PREFIX, 4, APPEND_CHATS)
        _append_chats(settings, dbname, work)
    try:
        return _rounds(args, settings, dbname, work)
    finally:
        if args.query == "append":
            _delete_append_chats(settings, dbname)


def _append_chats(settings, dbname: str, work: Workload) -> None:
    """The append's own chats, empty (any left by an interrupted run deleted first)."""
    _delete_append_chats(settings, dbname)
    with PostgresDataAccess(settings, dbname=dbname) as dal:
        for chat in work.chats:
            dal.create_chat_session(chat, None, {})


def _delete_append_chats(settings, dbname: str) -> None:
    with db.connection("migrator", settings=settings, dbname=dbname) as conn:
        conn.execute(DELETE_APPEND_CHATS, (APPEND_PREFIX + "%",))


def _rounds(args, settings, dbname: str, work: Workload) -> int:
    port = args.pgbouncer_port or settings.db_port
    # Through PgBouncer (transaction pooling) neither side may use prepared statements.
    prepared = not args.pgbouncer_port
    print(header("bench/vs_pgbench.py", args.rounds))
    via = f"PgBouncer :{port}" if args.pgbouncer_port else f"PostgreSQL :{port}"
    what = "history read" if work.kind == "history" else "message append"
    print(f"{what}, {args.clients} clients, {args.seconds} s per run, {work.n_chats:,} chats, "
          f"via {via}, pgbench -M {'prepared' if prepared else 'extended'} "
          f"-j {min(args.clients, 2)}, DAL, bare pool, API floor and floor in {args.processes} "
          f"process(es), load average at start {os.getloadavg()[0]:.1f}", flush=True)
    print("CPU columns: microseconds of CPU per query, client process(es) / server side "
          "(the app role's backends in the database, plus PgBouncer's process through it)")
    print("| round | pgbench tps | pgbench CPU µs | DAL qps | DAL CPU µs | bare pool qps "
          "| bare CPU µs | API floor qps | API floor CPU µs | psycopg floor qps "
          "| floor CPU µs | DAL / floor | DAL / API floor | API floor / floor "
          "| DAL / pgbench | bare / pgbench | floor / pgbench | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|---:|", flush=True)
    figures: dict[str, list[float]] = {k: [] for k in (
        "to_floor", "to_api", "api_to_floor", "ratios", "bare", "floor", "dal_rates")}
    for r in range(1, args.rounds + 1):
        base = run_pgbench(settings, dbname, port, args.clients, args.seconds, work,
                           prepared)
        # The Python sides in a different order each round: none always runs first.
        runs = {kind: run_side(kind, settings, dbname, args.clients, args.seconds, work,
                               args.processes)
                for kind in rotated(("dal", "bare", "api", "floor"), r)}
        dal, bare, api, floor = runs["dal"], runs["bare"], runs["api"], runs["floor"]
        for key, value in (("to_floor", dal.rate / floor.rate),
                           ("to_api", dal.rate / api.rate),
                           ("api_to_floor", api.rate / floor.rate),
                           ("ratios", dal.rate / base.rate),
                           ("bare", bare.rate / base.rate),
                           ("floor", floor.rate / base.rate), ("dal_rates", dal.rate)):
            figures[key].append(value)
        print(f"| {r} | {base.rate:,.0f} | {cpu(base)} | {dal.rate:,.0f} | {cpu(dal)} | "
              f"{bare.rate:,.0f} | {cpu(bare)} | {api.rate:,.0f} | {cpu(api)} | "
              f"{floor.rate:,.0f} | {cpu(floor)} | {dal.rate / floor.rate:.2f} | "
              f"{dal.rate / api.rate:.2f} | {api.rate / floor.rate:.2f} | "
              f"{dal.rate / base.rate:.2f} | {bare.rate / base.rate:.2f} | "
              f"{floor.rate / base.rate:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)

    def med(key: str) -> str:
        return f"{span(figures[key])} ({statistics.median(figures[key]):.2f}"

    print(f"min-max over {args.rounds} rounds (median): DAL / psycopg floor "
          f"{med('to_floor')}; goal >= 0.80), DAL {span(figures['dal_rates'], '{:,.0f}')} "
          f"qps; DAL / API floor {med('to_api')}; the DAL's own code), API floor / floor "
          f"{med('api_to_floor')}; a shared pool and dict rows); DAL / pgbench "
          f"{med('ratios')}); bare psycopg_pool / pgbench {med('bare')}); psycopg floor / "
          f"pgbench {med('floor')}; what any psycopg client reaches here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

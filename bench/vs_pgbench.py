"""The DAL's history read vs. pgbench running the same SQL: how close to the limit?

    .venv/bin/python bench/vs_pgbench.py --clients 10 --seconds 20 [--pgbouncer-port 6432]

1. picks the seeded chats (`donnactl loadtest seed` first) of DB_NAME (or --dbname);
2. baseline: ``pgbench -M prepared -n -c N -j 2 -T S -f history.sql`` as the app role,
   the DAL's SELECT_HISTORY with the chat id drawn by pgbench (``random()`` over the
   seeded chats; the id is built in SQL, so the statement is the same and the
   parameter differs only in where it is computed);
3. the DAL: N threads each looping ``PostgresDataAccess.get_chat_history(chat, 20)``
   over random seeded chats for S seconds (psycopg prepares after 5 executions, the
   same protocol as -M prepared; through PgBouncer it cannot, as the DAL disables it);
4. prints both rates and the DAL's share of pgbench's (the issue's goal: >= 0.7).

Runs as root on the deployed host (the passfile is root's); nothing is written.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from donnadb import db  # noqa: E402
from donnadb.config import load_settings  # noqa: E402
from donnadb.dal import PostgresDataAccess  # noqa: E402
from donnadb.dal import postgres_sql as q  # noqa: E402
from loadtest.seed import CHAT_PREFIX  # noqa: E402

CHATS_SQL = "SELECT count(*) FROM chat_sessions WHERE chat_id LIKE %s"


def pgbench_script(n_chats: int) -> str:
    """SELECT_HISTORY with its two named parameters filled by pgbench."""
    sql = q.SELECT_HISTORY.replace("%(chat_id)s",
                                   f"'{CHAT_PREFIX}' || lpad(:n::text, 7, '0')")
    sql = sql.replace("%(limit)s", "20").replace("%(offset)s", "0")
    body = " ".join(sql.split())
    return f"\\set n random(0, {n_chats - 1})\n{body};\n"


def run_pgbench(settings, dbname: str, port: int, clients: int, seconds: int,
                n_chats: int, prepared: bool) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(pgbench_script(n_chats))
        script = f.name
    try:
        env = dict(os.environ, PGPASSFILE=str(settings.db_passfile))
        cmd = ["pgbench", "-n", "-M", "prepared" if prepared else "extended",
               "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
               "-h", settings.db_host, "-p", str(port), "-U", settings.db_role_app,
               "-f", script, dbname]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    m = re.search(r"tps = ([\d.]+)", out)
    if not m:
        raise SystemExit(f"pgbench printed no tps:\n{out}")
    return float(m.group(1))


def run_dal(settings, dbname: str, clients: int, seconds: int, n_chats: int) -> float:
    s = settings.model_copy(update={"db_max_connections": clients})
    dal = PostgresDataAccess(s, dbname=dbname, min_size=clients)
    chats = [f"{CHAT_PREFIX}{i:07d}" for i in range(n_chats)]
    counts = [0] * clients
    stop = threading.Event()

    def loop(k: int) -> None:
        rng = random.Random(k)  # noqa: S311 - picks chats, not secrets
        while not stop.is_set():
            dal.get_chat_history(rng.choice(chats), 20)
            counts[k] += 1

    try:
        # Warm up: open every connection and let psycopg prepare the statement.
        for c in chats[: clients * 10]:
            dal.get_chat_history(c, 20)
        threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)
    finally:
        dal.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--dbname", default=None)
    parser.add_argument("--pgbouncer-port", type=int, default=0,
                        help="run both through PgBouncer (0: direct)")
    args = parser.parse_args()
    settings = load_settings(pgbouncer_port=args.pgbouncer_port or None)
    if not args.pgbouncer_port:
        settings = settings.model_copy(update={"pgbouncer_port": None})
    dbname = args.dbname or settings.db_name
    with db.connection("readonly", settings=settings, dbname=dbname) as conn:
        n_chats = conn.execute(CHATS_SQL, (CHAT_PREFIX + "%",)).fetchone()[0]
    if n_chats == 0:
        raise SystemExit("no seeded chats: run `donnactl loadtest seed` first")
    port = args.pgbouncer_port or settings.db_port
    # Through PgBouncer (transaction pooling) neither side may use prepared statements.
    prepared = not args.pgbouncer_port
    base = run_pgbench(settings, dbname, port, args.clients, args.seconds, n_chats, prepared)
    dal = run_dal(settings, dbname, args.clients, args.seconds, n_chats)
    via = f"PgBouncer :{port}" if args.pgbouncer_port else f"PostgreSQL :{port}"
    print(f"history read, {args.clients} clients, {args.seconds} s each, {n_chats:,} chats, "
          f"via {via}")
    print(f"  pgbench -M {'prepared' if prepared else 'extended'}: {base:10,.0f} tps")
    print(f"  DAL get_chat_history:  {dal:10,.0f} qps")
    print(f"  DAL / pgbench:         {dal / base:10.2f}  (goal >= 0.70)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

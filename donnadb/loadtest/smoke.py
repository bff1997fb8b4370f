"""Proof that psycopg cooperates with gevent under Locust: N users, each ``pg_sleep(1)``.

Run in its own process (it monkey-patches, as Locust does)::

    .venv/bin/python -m donnadb.loadtest.smoke --users 20 [--pgbouncer-port 6432]

With cooperation the N sleeps run at the same time and the whole takes about one
second; without it (a blocking wait function) they run one after the other, N
seconds. The output says which: ``overlap`` is true when every sleep was in flight at
one common instant (the latest start came before the earliest end).
"""

from __future__ import annotations

# gevent's patching must precede psycopg's import (see donnadb/loadtest/locustfile.py).
from gevent import monkey  # noqa: I001

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from donnadb import db  # noqa: E402
from donnadb.config import load_settings  # noqa: E402

SLEEP_SQL = "SELECT pg_sleep(1)"


def run(users: int, pgbouncer_port: int | None = None, dbname: str | None = None) -> dict:
    """Open ``users`` connections, run the sleeps concurrently, report the intervals."""
    settings = load_settings(pgbouncer_port=pgbouncer_port or None)
    if not pgbouncer_port:
        settings = settings.model_copy(update={"pgbouncer_port": None})
    conns = [db.connect("app", settings=settings, dbname=dbname, autocommit=True,
                        prepare_threshold=None) for _ in range(users)]
    intervals: list[tuple[float, float]] = []

    def one(conn) -> None:
        start = time.perf_counter()
        conn.execute(SLEEP_SQL)
        intervals.append((start, time.perf_counter()))

    try:
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(one, c) for c in conns], raise_error=True)
        wall = time.perf_counter() - started
    finally:
        for c in conns:
            c.close()
    latest_start = max(s for s, _ in intervals)
    earliest_end = min(e for _, e in intervals)
    return {"users": users, "wall_seconds": round(wall, 3),
            "serial_seconds": round(sum(e - s for s, e in intervals), 3),
            "overlap": latest_start < earliest_end,
            "wait_function": _wait_function_name()}


def _wait_function_name() -> str:
    from psycopg import waiting

    return waiting.wait.__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--pgbouncer-port", type=int, default=0)
    parser.add_argument("--dbname", default=None)
    args = parser.parse_args(argv)
    result = run(args.users, args.pgbouncer_port, args.dbname)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["overlap"] else 1


if __name__ == "__main__":
    sys.exit(main())

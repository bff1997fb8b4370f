"""The server's cost of a new user with field encryption on, against the plain insert.

    .venv/bin/python bench/sealed_insert.py [--clients 1 10] [--seconds 8] [--rounds 3]

Makes a migrated scratch database (the real schema and indexes), then times with
``pgbench -n -M prepared`` (``-j 2``; as postgres over the local socket: the statements
run as the DAL's do, without the DAL's Python), once per side per round, interleaved:

- plain: the DAL's user insert with encryption off (e-mail and name in clear);
- sealed: the DAL's sealed insert (``postgres_sql.INSERT_SEALED_USER``): the sealed
  e-mail and name, the keyed hash, and the wrapped data key in the users row;
- two rows: the same user with its key in a table of its own, as before migration
  0014 (``user_keys`` of 0009: its foreign key to users, its primary key and
  ``(kek_id, user_id)`` index), both written by one statement.

The sealed values are bytes of the real sizes that differ from row to row (sealed
e-mail and name about 50 and 40 bytes, the hash 32, the wrapped key 61), made in SQL
from one md5 each. Prints each round's average latency (ms, as pgbench reports it) and
throughput, then per client count the ratio of each sealed side's latency to the
plain one's in the same round, min-max over the rounds: what the database adds.

Then the application's part, in the same rounds: ``--dal-calls`` (default 2,000)
``create_user`` calls on one thread through ``PostgresDataAccess`` (as the application
gets it, through PgBouncer when the settings name it), with field encryption off and
on (a throwaway key file, 0600), and this process's CPU time per call (absolute, µs)
and the ratio sealed / plain.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from report import header, ratios, span
from scratch import create_scratch_database, drop_database, settle

from donnadb.config import Settings, load_settings
from donnadb.crypto import keyfile
from donnadb.dal import PostgresDataAccess
from donnadb.migrate import apply_migrations

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
# The layout before 0014, beside the real users table.
TWO_ROW_TABLE = """
CREATE TABLE bench_user_keys (
    user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    kek_id TEXT NOT NULL CHECK (kek_id ~ '^[0-9a-f]{16}$'),
    wrapped_key BYTEA NOT NULL CHECK (octet_length(wrapped_key) = 61),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    rewrapped_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX ON bench_user_keys (kek_id, user_id);
"""
# ``size`` bytes that differ from row to row: one md5 of the row's number, repeated (one
# hash per value, so that making the values costs the server little beside the insert).
RANDOM_BYTES = "substring(decode(repeat(md5('{salt}' || :n), {times}), 'hex') from 1 for {size})"
SIDES = {
    "plain": """
INSERT INTO users (id, clerk_id, email, name, profile, preferences, status)
VALUES (gen_random_uuid(), 'user_' || :n || '_' || random(), 'u' || :n || '@example.com',
        'Some Name', '{}', '{}', 'active');
""",
    "sealed": """
INSERT INTO users (id, clerk_id, email_sealed, name_sealed, email_hmac, profile,
                   preferences, status, last_active_at, kek_id, wrapped_key, key_created_at)
VALUES (gen_random_uuid(), 'user_' || :n || '_' || random(), {email}, {name}, {hmac},
        '{{}}', '{{}}', 'active', NULL, '0123456789abcdef', {wrapped}, now());
""",
    "two rows": """
WITH made AS (
    INSERT INTO users (id, clerk_id, email_sealed, name_sealed, email_hmac, profile,
                       preferences, status, last_active_at)
    VALUES (gen_random_uuid(), 'user_' || :n || '_' || random(), {email}, {name}, {hmac},
            '{{}}', '{{}}', 'active', NULL)
    RETURNING id
)
INSERT INTO bench_user_keys (user_id, kek_id, wrapped_key)
SELECT id, '0123456789abcdef', {wrapped} FROM made;
""",
}


def _bytes(size: int, salt: str) -> str:
    return RANDOM_BYTES.format(salt=salt, times=(size + 15) // 16, size=size)


def _script(side: str) -> str:
    body = SIDES[side]
    if side != "plain":
        body = body.format(email=_bytes(50, "e"), name=_bytes(40, "n"),
                           hmac=_bytes(32, "h"), wrapped=_bytes(61, "k"))
    return "\\set n random(1, 1000000000)\n" + body.strip().replace("\n", " ") + "\n"


def _psql(dbname: str, sql: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-qX", "-v", "ON_ERROR_STOP=1",
                    "-d", dbname, "-c", sql], check=True, capture_output=True, text=True)


def _pgbench(dbname: str, script: Path, clients: int, seconds: int) -> tuple[float, float]:
    """(average latency ms, transactions per second) of one pgbench run."""
    done = subprocess.run(["runuser", "-u", "postgres", "--", PGBENCH, "-n", "-M", "prepared",
                           "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
                           "-f", str(script), dbname],
                          check=True, capture_output=True, text=True)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    tps = re.search(r"tps = ([\d.]+)", done.stdout)
    if latency is None or tps is None:
        raise SystemExit(f"pgbench printed no figures:\n{done.stdout}{done.stderr}")
    return float(latency.group(1)), float(tps.group(1))


def _dal_cpu_per_create(settings: Settings, dbname: str, calls: int) -> float:
    """This process's CPU µs per ``create_user`` (new users, one thread)."""
    with PostgresDataAccess(settings, dbname=dbname, min_size=1) as dal:
        run = uuid.uuid4().hex[:8]
        for i in range(50):  # warm: connections made, statements met
            dal.create_user({"clerk_id": f"warm-{run}-{i}", "email": "w@example.org"})
        start = time.process_time()
        for i in range(calls):
            dal.create_user({"clerk_id": f"dal-{run}-{i}", "email": f"u{i}@example.org",
                             "name": "Some Name"})
        return (time.process_time() - start) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dal-calls", type=int, default=2000)
    args = ap.parse_args()
    print(header("bench/sealed_insert.py", args.rounds), flush=True)
    settings = load_settings()
    dbname = create_scratch_database(settings)
    work = Path(tempfile.mkdtemp(prefix="sealed-insert-"))
    work.chmod(0o755)  # pgbench runs as postgres
    try:
        apply_migrations(settings=settings, dbname=dbname)
        _psql(dbname, TWO_ROW_TABLE)
        scripts = {}
        for side in SIDES:
            scripts[side] = work / f"{side.replace(' ', '_')}.sql"
            scripts[side].write_text(_script(side))
            scripts[side].chmod(0o644)
        key_file = work / "fields.key"
        keyfile.generate(key_file)
        dal_sides = {"plain": settings.model_copy(update={"crypto_enabled": False}),
                     "sealed": settings.model_copy(update={"crypto_enabled": True,
                                                           "crypto_kek_file": key_file})}
        latency: dict[tuple[int, str], list[float]] = {}
        client: dict[str, list[float]] = {}
        for r in range(1, args.rounds + 1):
            for side in (("plain", "sealed") if r % 2 else ("sealed", "plain")):
                client.setdefault(side, []).append(
                    _dal_cpu_per_create(dal_sides[side], dbname, args.dal_calls))
                print(f"round {r}  DAL create_user, {side:<6} client CPU "
                      f"{client[side][-1]:.0f} µs per call", flush=True)
            for clients in args.clients:
                order = list(SIDES)[r - 1:] + list(SIDES)[:r - 1]  # rotated each round
                for side in order:
                    settle()  # the WAL the side before wrote is archived first
                    ms, tps = _pgbench(dbname, scripts[side], clients, args.seconds)
                    latency.setdefault((clients, side), []).append(ms)
                    print(f"round {r}  {clients:>2} clients  {side:<9} latency {ms:.3f} ms  "
                          f"{tps:,.0f} inserts/s", flush=True)
        print(f"min-max over {args.rounds} rounds; ratio = side's average latency / plain's "
              "in the same round")
        for clients in args.clients:
            plain = latency[(clients, "plain")]
            for side in ("sealed", "two rows"):
                mine = latency[(clients, side)]
                print(f"{clients:>2} clients  {side:<9} {span(mine, '{:.3f}')} ms  plain "
                      f"{span(plain, '{:.3f}')} ms  ratio {span(ratios(mine, plain), '{:.2f}')}")
        print(f"DAL create_user, client CPU per call: plain {span(client['plain'], '{:.0f}')} "
              f"µs, sealed {span(client['sealed'], '{:.0f}')} µs, ratio "
              f"{span(ratios(client['sealed'], client['plain']), '{:.2f}')}")
    finally:
        drop_database(dbname)
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

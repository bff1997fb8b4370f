"""Choose pg_dump's default gzip level by measurement (PostgreSQL 15 pg_dump: gzip only).

Builds a scratch database with the real schema and chat-like rows (repetitive
English text, JSON metadata, UUIDs), then dumps it with ``pg_dump -Fd -j2`` at each
gzip level, in the same process, every level once per round for ``--rounds`` interleaved
rounds, and prints size and the time range as ratios against level 0 (no compression)
and level 6 (pg_dump's default).

    .venv/bin/python bench/backup_compression.py [--messages 400000] [--levels 0,1,3,6,9] \
        [--rounds 3]

The database is dropped at the end. Run as root on the deployed host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from report import header, interleaved, ratios, span

from donnadb.backup import bootstrap, pgtools
from donnadb.config import load_settings
from donnadb.migrate import apply_migrations

SEED = """
SET ROLE {owner};
INSERT INTO users (clerk_id, email, name, profile)
SELECT 'clerk_' || g, 'user' || g || '@example.org', 'User ' || g,
       jsonb_build_object('plan', 'free', 'locale', 'en-GB', 'n', g)
FROM generate_series(1, {users}) g;
INSERT INTO chat_sessions (chat_id, user_id, title, metadata)
SELECT 'chat_' || u.clerk_id || '_' || s, u.id, 'Conversation ' || s,
       jsonb_build_object('source', 'web', 'model', 'donna-1')
FROM users u, generate_series(1, 5) s;
INSERT INTO messages (chat_session_id, role, content, metadata, sequence_number, token_count)
SELECT cs.id, (ARRAY['user', 'assistant'])[1 + n % 2],
       (SELECT string_agg(w[1 + (n * 7919 + i * 104729 + (hashtext(cs.chat_id) & 65535))
                                  % array_length(w, 1)], ' ')
          FROM generate_series(1, 20 + n % 60) i) || ' ' || md5(n::text),
       jsonb_build_object('latency_ms', n % 900, 'tokens', n % 400),
       n, n % 400
FROM chat_sessions cs, generate_series(1, {per_chat}) n,
     (SELECT regexp_split_to_array('the a to and of in is you that it for on with as are this '
        || 'be at have not your can trip Lisbon flight hotel dinner recipe python database '
        || 'meeting budget weather music book train museum coffee garden project deadline '
        || 'report email summary plan idea question answer thanks please could would should '
        || 'tomorrow today week month year travel price ticket booking cancel change help '
        || 'explain why how what when where I think maybe sure great sorry schedule remind',
        ' ') AS w) words;
"""


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def seeded_database(settings, messages: int):
    """A scratch database with the real schema and ``messages`` chat messages; dropped after.

    Yields (name, size in bytes).
    """
    users = max(messages // 100, 1)
    per_chat = max(messages // (users * 5), 1)
    name = f"donna_bench_{uuid.uuid4().hex[:8]}"
    try:
        bootstrap.create_database(settings, name)
        apply_migrations(settings=settings, dbname=name)
        bootstrap.apply_bootstrap(settings, name)
        t = time.monotonic()
        bootstrap.superuser_psql(
            SEED.format(owner=settings.db_role_owner, users=users, per_chat=per_chat),
            dbname=name)
        bootstrap.superuser_psql("VACUUM ANALYZE", dbname=name)
        size = int(bootstrap.superuser_psql(
            "SELECT pg_database_size(current_database())", dbname=name))
        print(f"seeded {users * 5 * per_chat} messages in {time.monotonic() - t:.1f} s; "
              f"database {size / 2**20:.0f} MiB")
        yield name, size
    finally:
        bootstrap.drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--levels", default="0,1,3,6,9")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every level once per round")
    args = parser.parse_args()
    settings = load_settings()
    levels = [int(x) for x in args.levels.split(",")]
    print(header("bench/backup_compression.py", args.rounds), flush=True)
    work = Path(tempfile.mkdtemp(prefix="donna-bench-"))
    sizes: dict[int, int] = {}
    try:
        with seeded_database(settings, args.messages) as (name, db_size):
            pg_dump = pgtools.tool(settings, "pg_dump")
            env = pgtools.libpq_env(settings, settings.role("backup"), name)

            def dump(level: int):
                def run() -> None:
                    out = work / f"z{level}"
                    shutil.rmtree(out, ignore_errors=True)
                    pgtools.run([pg_dump, "-Fd", f"-j{args.jobs}", f"-Z{level}", f"-f{out}"],
                                env, "pg_dump")
                    sizes[level] = dir_size(out)
                    shutil.rmtree(out)
                return run

            def each(r: int, this: dict[str, float]) -> None:
                print(f"round {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in this.items()),
                      flush=True)

            times = interleaved({f"Z{level}": dump(level) for level in levels},
                                args.rounds, each)
            base = 0 if 0 in levels else levels[0]
            ref = 6 if 6 in levels else base
            print(f"{'level':>5} {'seconds':>12} {'MiB':>8} {'size/Z0':>8} {'time/Z0':>11} "
                  f"{'size/Z6':>8} {'time/Z6':>11}")
            for level in levels:
                key = f"Z{level}"
                print(f"{level:>5} {span(times[key]):>12} {sizes[level] / 2**20:>8.1f} "
                      f"{sizes[level] / sizes[base]:>8.3f} "
                      f"{span(ratios(times[key], times[f'Z{base}'])):>11} "
                      f"{sizes[level] / sizes[ref]:>8.3f} "
                      f"{span(ratios(times[key], times[f'Z{ref}'])):>11}")
            print(f"database {db_size / 2**20:.0f} MiB; ranges are min-max over "
                  f"{args.rounds} rounds, time ratios per round; load average "
                  f"{os.getloadavg()[0]:.2f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

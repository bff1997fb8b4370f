"""Our legacy import vs. the physical limit (a plain COPY of the same rows), same run.

    .venv/bin/python bench/import.py                     # 1,000,000 messages
    .venv/bin/python bench/import.py --messages 200000   # a quick run

1. generates a data directory (donnadb.legacy.fixtures, no deviations): ``--messages``
   messages in ``--messages / 50`` chats (20,000 for 1M), ``--users`` users (5,000);
   ``--data-dir`` keeps it (and reuses it on the next run when it exists);
2. times ``migrate-data import`` (read + normalise the JSON files, write) into an empty
   migrated scratch database: the default path (an empty ``messages``, so the import
   defers its secondary indexes and builds them at the end), then ``--keep-indexes``
   (every index maintained row by row, as an import into a table holding rows does),
   and the same files read and parsed as the import does, written nowhere ("parse
   only": the work the baseline, whose rows are already in memory, never does);
3. times the baseline in another scratch database: the same rows, already in memory,
   COPYed straight into the same empty tables (a) with the non-constraint indexes
   dropped and built afterwards (the physical limit) and (b) with every index in place;
4. repeats 2-3 ``--rounds`` times (default 3), each round with fresh databases, so a
   neighbour's load hits every side of a round alike; before each side, untimed, a
   CHECKPOINT and the WAL archiver's backlog taken (bench/scratch.py ``settle``), so
   what one side wrote is not compressed and archived during the next;
5. prints each round, then messages/s and the ratios (each from one round) as min-max
   ranges, the load average before/after, and what bounds the default path: its
   loading and index-build seconds, and the machine's busy CPU seconds (/proc/stat)
   of the default path, the physical limit and the parse alone. Run as root on the
   deployed host (scratch databases are created through the postgres superuser:
   bench/scratch.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cpushare import CORES, busy_cpu_seconds, with_busy_cpu
from report import header, ratios, span
from scratch import create_scratch_database, drop_database, settle

from donnadb import db
from donnadb.config import load_settings
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import default_workers, import_data_dir
from donnadb.legacy.logs import iter_log_file
from donnadb.legacy.parallel import iter_parts
from donnadb.legacy.reader import LegacyReader
from donnadb.migrate import apply_migrations

TABLES = ("users", "chat_sessions", "messages", "user_memory", "system_logs")
INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes AS i
 WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
"""


def materialise(root: Path):
    """Every row as the import would write it (outside the timed section)."""
    reader = LegacyReader.open(root)
    users, memory, chats, messages, logs = [], [], [], [], []
    for u in reader.users():
        users.append((u.id, u.clerk_id, u.email, u.name, u.profile, u.preferences,
                      u.created_at, u.updated_at))
        memory += [(m.id, u.id, m.memory_type, m.key, m.value, m.created_at, m.updated_at,
                    m.expires_at) for m in u.memory]
    known = {u[1] for u in users}
    from donnadb.legacy.normalise import user_uuid

    for c in reader.chats():
        owner = None
        if c.clerk_id:
            owner = user_uuid(c.clerk_id)
            if c.clerk_id not in known:
                known.add(c.clerk_id)
                users.append((owner, c.clerk_id, None, None, {}, {}, c.created_at,
                              c.created_at))
        chats.append((c.id, c.chat_id, owner, c.title, c.profile, c.metadata, c.created_at,
                      c.updated_at))
        messages += [(m.id, c.id, m.role, m.content, m.metadata, m.created_at,
                      m.sequence_number, m.token_count, m.abuse_flagged) for m in c.messages]
    for r in reader.logs():
        logs.append((r.id, r.level, r.message, r.context, r.trace_id, r.ip_address,
                     r.user_agent, r.request_uri, r.created_at))
    return {"users": users, "user_memory": memory, "chat_sessions": chats,
            "messages": messages, "system_logs": logs}


COPY_SPECS = {
    "users": ("id, clerk_id, email, name, profile, preferences, created_at, updated_at",
              ["uuid", "text", "text", "text", "jsonb", "jsonb", "timestamptz", "timestamptz"]),
    "user_memory": ("id, user_id, memory_type, key, value, created_at, updated_at, expires_at",
                    ["uuid", "uuid", "text", "text", "jsonb", "timestamptz", "timestamptz",
                     "timestamptz"]),
    "chat_sessions": ("id, chat_id, user_id, title, profile, metadata, created_at, updated_at",
                      ["uuid", "text", "uuid", "text", "text", "jsonb", "timestamptz",
                       "timestamptz"]),
    "messages": ("id, chat_session_id, role, content, metadata, created_at, sequence_number, "
                 "token_count, abuse_flagged",
                 ["uuid", "uuid", "text", "text", "jsonb", "timestamptz", "int4", "int4",
                  "bool"]),
    "system_logs": ("id, level, message, context, trace_id, ip_address, user_agent, "
                    "request_uri, created_at",
                    ["uuid", "text", "text", "jsonb", "text", "inet", "text", "text",
                     "timestamptz"]),
}


def plain_copy(conn, rows) -> None:
    with conn.transaction():
        for table in ("users", "user_memory", "chat_sessions", "messages", "system_logs"):
            cols, types = COPY_SPECS[table]
            if table == "system_logs":
                import ipaddress

                data = [r[:5] + ((ipaddress.ip_address(r[5]) if r[5] else None),) + r[6:]
                        for r in rows[table]]
            else:
                data = rows[table]
            with conn.cursor() as cur, cur.copy(
                    f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for row in data:
                    copy.write_row(row)


def truncate(conn) -> None:
    conn.execute("TRUNCATE users, chat_sessions, messages, user_memory, system_logs CASCADE")


def _import(settings, root: Path, batch: int, *, defer: bool | None
            ) -> tuple[float, object]:
    """Seconds to import ``root`` into a fresh migrated scratch database, and the summary."""
    name = create_scratch_database(settings, prefix="donna_bench")
    try:
        apply_migrations(settings=settings, dbname=name)
        with db.connect("migrator", settings=settings, dbname=name, autocommit=True) as conn:
            t = time.perf_counter()
            summary = import_data_dir(LegacyReader.open(root), conn, batch_size=batch,
                                      defer_indexes=defer,
                                      owner_role=settings.db_role_owner)
            return time.perf_counter() - t, summary
    finally:
        drop_database(name)


def _parse_only(root: Path, workers: int) -> float:
    """Seconds to read and parse ``root`` as the import does (users, then chats
    normalised and COPY-encoded by ``workers`` processes, then logs), writing nothing:
    the work the physical limit, whose rows are already in memory, does not do."""
    t = time.perf_counter()
    reader = LegacyReader.open(root)
    for _ in reader.users():
        pass
    for _ in iter_parts(reader, workers):
        pass
    for path in reader.inventory.logs:
        for _ in iter_log_file(path, reader.inventory, reader.report):
            pass
    return time.perf_counter() - t


def _baseline(settings, rows) -> tuple[float, float, float, float]:
    """COPY alone, COPY + index builds (the physical limit), COPY with indexes in place,
    and the machine's busy CPU seconds during the physical limit."""
    name = create_scratch_database(settings, prefix="donna_bench")
    try:
        apply_migrations(settings=settings, dbname=name)
        with db.connect("migrator", settings=settings, dbname=name, autocommit=True) as conn:
            conn.execute("SET ROLE " + settings.db_role_owner)
            indexes = conn.execute(INDEXES, [list(TABLES)]).fetchall()
            for index, _ in indexes:
                conn.execute(f'DROP INDEX "{index}"')
            cpu = busy_cpu_seconds()
            t = time.perf_counter()
            plain_copy(conn, rows)
            copy_only = time.perf_counter() - t
            for _, definition in indexes:
                conn.execute(definition)
            limit = time.perf_counter() - t
            cpu = busy_cpu_seconds() - cpu
            truncate(conn)
            t = time.perf_counter()
            plain_copy(conn, rows)
            return copy_only, limit, time.perf_counter() - t, cpu
    finally:
        drop_database(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000,
                    help="messages to generate (default 1,000,000)")
    ap.add_argument("--chats", type=int, default=None, help="default: --messages / 50")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--logs", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: MIGRATION_BATCH_SIZE")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="generate here (reused when it already exists) instead of a tmp dir")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds, every side once per round")
    args = ap.parse_args()
    chats = args.chats or max(1, args.messages // 50)
    settings = load_settings()
    batch = args.batch_size or settings.migration_batch_size
    print(header("bench/import.py", args.rounds), flush=True)
    load_before = os.getloadavg()
    sides: dict[str, list[float]] = {"default": [], "keep": [], "copy": [], "limit": [],
                                     "indexed": [], "parse": [], "builds": []}
    busy: dict[str, list[float]] = {"default": [], "parse": [], "limit": []}
    waited: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp) / "data"
        if not root.exists():
            t = time.perf_counter()
            generate(root, users=args.users, chats=chats,
                     messages_per_chat=max(1, args.messages // chats), logs=args.logs,
                     deviations=False)
            print(f"generated {root} in {time.perf_counter() - t:.1f}s", flush=True)
        workers = default_workers(LegacyReader.open(root))
        rows = materialise(root)
        for r in range(1, args.rounds + 1):
            # Each side starts on a server done with the last one's writes (settle).
            waited.append(settle())
            ours, summary = with_busy_cpu(
                lambda: _import(settings, root, batch, defer=None), busy["default"])()
            waited.append(settle())
            parsed = with_busy_cpu(lambda: _parse_only(root, workers), busy["parse"])()
            waited.append(settle())
            kept, _ = _import(settings, root, batch, defer=False)
            waited.append(settle())
            copy_only, limit, with_indexes, limit_cpu = _baseline(settings, rows)
            busy["limit"].append(limit_cpu)
            for key, value in (("default", ours), ("keep", kept), ("copy", copy_only),
                               ("limit", limit), ("indexed", with_indexes),
                               ("parse", parsed), ("builds", summary.index_build_seconds)):
                sides[key].append(value)
            print(f"round {r}: import {ours:.2f}s (indexes deferred: "
                  f"{summary.indexes_rebuilt}, built in {summary.index_build_seconds:.2f}s),"
                  f" parse only {parsed:.2f}s, --keep-indexes {kept:.2f}s, "
                  f"COPY {copy_only:.2f}s + index builds {limit - copy_only:.2f}s, "
                  f"COPY with indexes {with_indexes:.2f}s", flush=True)
    load_after = os.getloadavg()
    n = summary.read["messages"]

    def rate(key: str) -> str:
        return span([n / x for x in sides[key]], "{:,.0f}")

    builds = [a - b for a, b in zip(sides["limit"], sides["copy"], strict=True)]
    print(f"{n:,} messages, {summary.read.get('chat_sessions', 0):,} chats, "
          f"{summary.read.get('users', 0):,} users, {summary.read.get('system_logs', 0):,} "
          f"logs; batch size {batch}; parser workers {workers}; "
          f"load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min); before each side a CHECKPOINT and the WAL "
          f"archiver's backlog taken ({span(waited, '{:.1f}')}s, not timed); min-max over "
          f"{args.rounds} rounds, ratios per round")
    print(f"our import, default path:              {span(sides['default']):>13}s  "
          f"{rate('default')} msg/s")
    print(f"our import --keep-indexes:             {span(sides['keep']):>13}s  "
          f"{rate('keep')} msg/s")
    print(f"physical limit: COPY {span(sides['copy'])}s + index builds {span(builds)}s = "
          f"{span(sides['limit'])}s  {rate('limit')} msg/s")
    print(f"plain COPY, indexes in place (ref.):   {span(sides['indexed']):>13}s  "
          f"{rate('indexed')} msg/s")
    print(f"default path / physical limit: {span(ratios(sides['default'], sides['limit']))}x"
          f" (target 1.5x); --keep-indexes / physical limit: "
          f"{span(ratios(sides['keep'], sides['limit']))}x; default path / COPY with "
          f"indexes: {span(ratios(sides['default'], sides['indexed']))}x")
    _print_limit(sides, busy, workers)


def _print_limit(sides: dict[str, list[float]], busy: dict[str, list[float]],
                 workers: int) -> None:
    """What bounds the default path on this machine: the parsing the physical limit
    does not do, in CPU seconds of the whole machine (the import's processes, the
    parser workers and the server alike; ``/proc/stat``)."""
    loads = [a - b for a, b in zip(sides["default"], sides["builds"], strict=True)]
    share = [c / (w * CORES) for c, w in zip(busy["default"], sides["default"],
                                            strict=True)]
    print(f"the default path: loading {span(loads)}s, then the deferred index builds "
          f"{span(sides['builds'])}s (the GIN beside the B-trees); machine busy "
          f"{span(busy['default'], '{:.1f}')} CPU s, {span(share, '{:.0%}')} of "
          f"{CORES} cores")
    print(f"parse only (read, normalise, COPY-encode; {workers} parser workers, no "
          f"database): {span(sides['parse'])}s, machine busy "
          f"{span(busy['parse'], '{:.1f}')} CPU s")
    extra = [d - lim for d, lim in zip(busy["default"], busy["limit"], strict=True)]
    print(f"busy CPU beyond the physical limit's ({span(busy['limit'], '{:.1f}')} CPU s): "
          f"{span(extra, '{:.1f}')} CPU s, against parse only's "
          f"{span(busy['parse'], '{:.1f}')}")

if __name__ == "__main__":
    main()

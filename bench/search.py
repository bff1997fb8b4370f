"""The DAL's full-text search: the plan's expression index against the composite GIN index
the schema has (migration 0006) and a stored tsvector column, on the load test's seed.

    .venv/bin/python bench/search.py [--scale small|default|ci] [--rounds 3]
        [--searches 300] [--inserts 2000] [--seed 1]

1. seeds a scratch database (bench/scratch.py, ``donna_searchbench_*``) with the load
   test's seed at ``--scale`` (donnadb/loadtest/seed.py: ``small`` 200,000 messages,
   ``default`` 2,000,000): variant **B**, today's schema (a composite GIN index on
   ``(chat_session_id, to_tsvector('english', content))``, ``btree_gin``) and
   ``SEARCH_MESSAGES``;
2. copies it (``CREATE DATABASE ... TEMPLATE``) once per other schema and runs, timed,
   the migration that schema needs, each step on its own:
   **A** the plan's expression GIN index on ``to_tsvector('english', content)`` built
   ``CONCURRENTLY``, the composite one dropped (the schema before migration 0006);
   **C** a stored generated column ``content_tsv`` (``ALTER TABLE ... ADD COLUMN``
   rewrites the table and every index under ACCESS EXCLUSIVE) and a GIN index on it;
   **C+B** a copy of C with the composite ``(chat_session_id, content_tsv)`` instead;
   every copy then gets ``VACUUM ANALYZE messages``, as after the seed. The variants are
   queries on them: ``SEARCH_MESSAGES`` on A and B, the same on ``content_tsv`` on C and C+B, and on
   B and C+B a shape without the join (``chat_session_id = ANY(<the recent chats>)``,
   "any") that searches all the chats in one index scan;
3. draws ``--searches`` (user, words) as the load test does: users by the workload's
   Zipf picker over its catalogue, words by ``workload.search_words``;
4. runs every search once in every variant and compares the rows with A's (the
   mismatch count must be 0; this pass also warms the caches);
5. per round, the variants in an order rotated each round: every search under
   ``EXPLAIN (ANALYZE, BUFFERS off, TIMING off)`` (server time = Planning Time +
   Execution Time; median, p95, mean); then ``--inserts`` messages through
   ``add_message()``, one transaction each, into chats of the benchmark's own, and the
   GIN indexes' pending lists merged (``gin_clean_pending_list``: work every inserted
   message costs later if not now), both timed per message; the chats are deleted and
   ``messages`` vacuumed, untimed;
6. prints each round, then the min-max over the rounds, the sizes and the migrations'
   times (one measurement each); drops the databases.

Runs as root on the deployed host (the passfiles are root's; the scratch databases are
made through the postgres superuser, as bench/scratch.py does). Nothing else is touched.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from report import header, rotated, span
from scratch import create_scratch_database, drop_database

from donnadb import db
from donnadb.backup import bootstrap
from donnadb.config import load_settings
from donnadb.dal import postgres_sql as q
from donnadb.dal import ranking
from donnadb.errors import DatabaseError
from donnadb.loadtest import seed, workload
from donnadb.migrate import apply_migrations

PREFIX = "donna_searchbench"
#: The expression of the indexes and of the query, and the stored column replacing it.
EXPRESSION = "to_tsvector('english', m.content)"
COLUMN = "m.content_tsv"
#: The user's recent chats, as SEARCH_MESSAGES picks them.
RECENT = q.RECENT_CHATS
# The same search with the messages restricted to an array of the recent chats and no join
# on them (the chat's name is looked up per row found): the planner's only way to the
# messages is one index scan for all the chats, which a GIN index with chat_session_id as
# its first column serves with both conditions. Today's join instead lets it scan such an
# index chat by chat (chat_session_id = s.id).
SEARCH_IN_CHATS = q.ranked_page(f"""
WITH s AS MATERIALIZED ({RECENT})
SELECT m.id::text AS id, (SELECT chat_id FROM s WHERE s.id = m.chat_session_id) AS chat_id,
       m.role, m.content, m.metadata, m.created_at, m.sequence_number, m.token_count,
       m.abuse_flagged, {q.SEARCH_RANK}
  FROM messages AS m
 WHERE m.chat_session_id = ANY (ARRAY(SELECT id FROM s))
   AND {EXPRESSION} @@ plainto_tsquery('english', %(query)s)
 ORDER BY {q.SEARCH_ORDER}
 LIMIT %(limit)s""")
EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS off, TIMING off, FORMAT JSON) "
PLAN = "EXPLAIN (COSTS off) "

DROP_EXPRESSION_INDEX = "DROP INDEX CONCURRENTLY idx_messages_content_fts"
DROP_COMPOSITE_INDEX = "DROP INDEX CONCURRENTLY idx_messages_chat_fts"
ADD_COLUMN = ("ALTER TABLE messages ADD COLUMN content_tsv tsvector GENERATED ALWAYS AS "
              "(to_tsvector('english', content)) STORED")


@dataclass(frozen=True)
class Schema:
    """A database of the comparison: its full-text indexes, and the migration that makes
    it from ``base`` (another schema's database, copied first)."""

    key: str
    what: str
    indexes: tuple[str, ...]
    base: str | None = None
    steps: tuple[tuple[str, str], ...] = ()


SCHEMAS = (
    Schema("B", "today (migrations 0006, 0008): composite GIN (chat_session_id, to_tsvector), "
                "fastupdate off",
           ("idx_messages_chat_fts",)),
    Schema("A", "the plan's: GIN on to_tsvector('english', content)",
           ("idx_messages_content_fts",), "B", (
               ("CREATE INDEX CONCURRENTLY (to_tsvector): no long lock",
                "CREATE INDEX CONCURRENTLY idx_messages_content_fts ON messages USING gin "
                "(to_tsvector('english', content))"),
               ("DROP INDEX CONCURRENTLY the composite index", DROP_COMPOSITE_INDEX))),
    Schema("C", "stored content_tsv column, GIN on it", ("idx_messages_content_tsv",), "A", (
        ("DROP INDEX CONCURRENTLY the expression index", DROP_EXPRESSION_INDEX),
        ("ALTER TABLE ADD COLUMN ... STORED: table and index rewrite, ACCESS EXCLUSIVE "
         "throughout", ADD_COLUMN),
        ("CREATE INDEX CONCURRENTLY (content_tsv): no long lock",
         "CREATE INDEX CONCURRENTLY idx_messages_content_tsv ON messages USING gin "
         "(content_tsv)"))),
    Schema("C+B", "content_tsv column, composite GIN (chat_session_id, content_tsv)",
           ("idx_messages_chat_tsv",), "C", (
               ("CREATE INDEX CONCURRENTLY (chat_session_id, content_tsv): no long lock",
                "CREATE INDEX CONCURRENTLY idx_messages_chat_tsv ON messages USING gin "
                "(chat_session_id, content_tsv)"),
               ("DROP INDEX CONCURRENTLY C's content_tsv index",
                "DROP INDEX CONCURRENTLY idx_messages_content_tsv"))),
)


@dataclass(frozen=True)
class Variant:
    """A search plan: a query on one schema's database."""

    key: str
    schema: str
    query: str
    #: Returns A's rows (False: a yardstick that orders differently).
    same_rows: bool = True


COLUMN_SEARCH = q.SEARCH_MESSAGES.replace(EXPRESSION, COLUMN)
# B's plan without ranking or snippets, newest first: what the relevance order costs.
NEWEST_FIRST = f"""
SELECT m.id::text AS id, s.chat_id, m.role, m.content, m.metadata, m.created_at,
       m.sequence_number, m.token_count, m.abuse_flagged
  FROM ({q.RECENT_CHATS}) AS s
  JOIN messages AS m ON m.chat_session_id = s.id
 WHERE {EXPRESSION} @@ plainto_tsquery('english', %(query)s)
 ORDER BY m.created_at DESC, s.chat_id, m.sequence_number DESC
 LIMIT %(limit)s"""
VARIANTS = (
    Variant("A", "A", q.SEARCH_MESSAGES),
    Variant("B", "B", q.SEARCH_MESSAGES),
    Variant("B any", "B", SEARCH_IN_CHATS),
    Variant("B newest", "B", NEWEST_FIRST, same_rows=False),
    Variant("C", "C", COLUMN_SEARCH),
    Variant("C+B", "C+B", COLUMN_SEARCH),
    Variant("C+B any", "C+B", SEARCH_IN_CHATS.replace(EXPRESSION, COLUMN)),
)

#: The write side: chats of the benchmark's own (the load test's run prefix), deleted after.
WRITE_PREFIX = f"{seed.RUN_CHAT_PREFIX}searchbench-"
WRITE_CHATS = 20
DELETE_WRITE_CHATS = "DELETE FROM chat_sessions WHERE chat_id LIKE %s"
CLEAN_PENDING = "SELECT gin_clean_pending_list(%s::regclass)"
SIZES = """
SELECT pg_table_size('messages'), pg_indexes_size('messages'),
       (SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class AS c
         WHERE c.relname = ANY (%s))
"""
CLONE = "CREATE DATABASE {name} TEMPLATE {template} STRATEGY = FILE_COPY"


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def texts(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` messages as the load test writes them (user, then assistant), from the
    workload's words: whatever the seed's vocabulary, the same generator as the searches."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(("user", f"Could you {workload.search_words(rng)} for me tomorrow?"))
        else:
            body = " ".join(workload.search_words(rng) for _ in range(30))
            out.append(("assistant", f"Sure. {body}."))
    return out


@contextmanager
def owner_connection(settings, dbname: str):
    """The migrator acting as the schema's owner for the whole session, autocommit (CREATE
    INDEX CONCURRENTLY cannot run in a transaction), as a migration's DDL runs."""
    with db.connection("migrator", settings=settings, dbname=dbname, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.role("owner"))))
        yield conn


def clone(settings, template: str, name: str, attempts: int = 10) -> None:
    """``name`` as a file copy of ``template`` (nobody may be connected to it), bootstrapped."""
    statement = sql.SQL(CLONE).format(name=sql.Identifier(name),
                                      template=sql.Identifier(template)).as_string(None)
    for attempt in range(attempts):
        try:
            bootstrap.superuser_psql(statement)
            break
        except DatabaseError as exc:
            # psql's last line: the DETAIL under "is being accessed by other users".
            busy = "being accessed" in str(exc) or "other session" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(1)
    bootstrap.apply_bootstrap(settings, name)


def migrate(settings, dbname: str, schema: Schema) -> list[tuple[str, float]]:
    """Run ``schema``'s migration in ``dbname``; seconds per step."""
    done = []
    with owner_connection(settings, dbname) as conn:
        for label, statement in schema.steps:
            t = time.perf_counter()
            conn.execute(statement)
            done.append((label, time.perf_counter() - t))
        conn.execute("VACUUM (ANALYZE) messages")
    return done


def server_ms(conn: psycopg.Connection, query: str, params: dict) -> float:
    """Planning + execution time of ``query``, as EXPLAIN ANALYZE reports it."""
    plan = conn.execute(EXPLAIN + query, params).fetchone()[0][0]
    return plan["Planning Time"] + plan["Execution Time"]


def params_for(user: str, words: str) -> dict:
    # What the load test's search asks the DAL for.
    return {"user_id": user, "query": words, "limit": 20, "chats": workload.SEARCH_CHATS,
            "headline": ranking.HEADLINE_OPTIONS}


def search_times(conn, variant: Variant, sample: list[tuple[str, str]]) -> list[float]:
    return [server_ms(conn, variant.query, params_for(u, w)) for u, w in sample]


def mismatches(conns: dict, sample: list[tuple[str, str]]) -> dict[str, int]:
    """Searches (of ``sample``) whose rows differ from A's, per variant meant to match."""
    same = [v for v in VARIANTS if v.same_rows]
    bad = {v.key: 0 for v in same}
    for user, words in sample:
        rows = {v.key: conns[v.schema].execute(v.query, params_for(user, words)).fetchall()
                for v in same}
        for key, got in rows.items():
            bad[key] += got != rows["A"]
    return bad


def write_cost(settings, dbname: str, schema: Schema, user: str,
               messages: list[tuple[str, str]]) -> tuple[float, float]:
    """Seconds per message: ``add_message()`` (one transaction each), then the merge of the
    schema's GIN pending lists. The chats are deleted and the table vacuumed after."""
    chats = [f"{WRITE_PREFIX}{i:03d}" for i in range(WRITE_CHATS)]
    with db.connection("app", settings=settings, dbname=dbname, autocommit=True) as conn:
        for chat in chats:
            conn.execute(q.INSERT_SESSION, {"chat_id": chat, "user_id": user, "title": None,
                                            "profile": None, "metadata": "{}"})
        t = time.perf_counter()
        for i, (role, content) in enumerate(messages):
            conn.execute(q.ADD_MESSAGE, {"chat_id": chats[i % WRITE_CHATS], "role": role,
                                         "content": content, "metadata": "{}",
                                         "token_count": None, "abuse_flagged": False})
        insert = time.perf_counter() - t
    with owner_connection(settings, dbname) as conn:
        t = time.perf_counter()
        for index in schema.indexes:
            conn.execute(CLEAN_PENDING, (index,))
        merge = time.perf_counter() - t
        conn.execute(DELETE_WRITE_CHATS, (WRITE_PREFIX + "%",))
        conn.execute("VACUUM messages")
    return insert / len(messages), merge / len(messages)


def plan_lines(conn, variant: Variant, user: str, words: str) -> list[str]:
    return [r[0] for r in conn.execute(PLAN + variant.query, params_for(user, words))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(seed.SCALES), default="small",
                        help="the load test's seed scale (default small: 200,000 messages)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--searches", type=int, default=300, help="searches in the sample")
    parser.add_argument("--inserts", type=int, default=2000,
                        help="messages inserted per schema and round")
    parser.add_argument("--seed", type=int, default=1, help="draws the sample and texts")
    args = parser.parse_args()
    settings = load_settings().model_copy(update={"pgbouncer_port": None})
    print(header("bench/search.py", args.rounds), flush=True)
    names = {"B": create_scratch_database(settings, prefix=PREFIX)}
    try:
        return run(args, settings, names)
    finally:
        for name in names.values():
            drop_database(name)


def prepare(args, settings, names: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
    """Seed B's database, then copy and migrate one per other schema; the steps' seconds."""
    scale = seed.SCALES[args.scale]
    base = names["B"]
    apply_migrations(settings=settings, dbname=base)
    bootstrap.apply_bootstrap(settings, base)
    t = time.perf_counter()
    seed.seed(settings, scale, dbname=base)
    print(f"scale {args.scale}: {scale.users:,} users, {scale.sessions:,} chats, "
          f"{scale.messages:,} messages, seeded in {time.perf_counter() - t:.0f} s; "
          f"{args.searches} searches per variant and round, {args.inserts} inserts per "
          f"schema and round; maintenance_work_mem {show(settings, base, 'maintenance_work_mem')}",
          flush=True)
    # The seed's COPY grew the composite index entry by entry; every other schema's index
    # is built whole. Rebuilt, all sizes compare like with like (and it times B's build).
    with owner_connection(settings, base) as conn:
        t = time.perf_counter()
        conn.execute("REINDEX INDEX idx_messages_chat_fts")
        steps = {"B": [("REINDEX the composite index (its build, for reference)",
                        time.perf_counter() - t)]}
    for schema in SCHEMAS[1:]:
        names[schema.key] = f"{base}_{schema.key.lower().replace('+', '')}"
        clone(settings, names[schema.base], names[schema.key])
        steps[schema.key] = migrate(settings, names[schema.key], schema)
    for key, done in steps.items():
        print(f"migration to {key} at this scale (one measurement): " + "; ".join(
            f"{label} {secs:.1f} s" for label, secs in done), flush=True)
    return steps


def run(args, settings, names: dict[str, str]) -> int:
    prepare(args, settings, names)
    rng = random.Random(args.seed)  # noqa: S311 - draws a sample, not secrets
    catalogue = workload.load_catalogue(settings, names["B"], rng)
    sample = [(catalogue.pick_user(), workload.search_words(rng)) for _ in range(args.searches)]
    print(f"sample: {len(sample)} searches by {len({u for u, _ in sample})} users "
          f"(the workload's Zipf picker over {len(catalogue.user_ids):,}), each in the "
          f"user's {workload.SEARCH_CHATS} most recent chats, 20 rows at most")
    for schema in SCHEMAS:
        print(f"schema {schema.key}: {schema.what}")
    with schema_connections(settings, names) as conns:
        sizes = {s.key: conns[s.key].execute(SIZES, (list(s.indexes),)).fetchone()
                 for s in SCHEMAS}
        for v in VARIANTS:
            print(f"plan of {v.key} (schema {v.schema}), first search of the sample:")
            for line in plan_lines(conns[v.schema], v, *sample[0]):
                print(f"    {line}")
        bad = mismatches(conns, sample)
        print("searches whose rows differ from A's (must be 0): "
              + ", ".join(f"{k} {n}" for k, n in bad.items()), flush=True)
        searches, writes = rounds(args, settings, names, conns, sample, catalogue.user_ids[0])
    summary(args, searches, writes, sizes)
    return 1 if any(bad.values()) else 0


@contextmanager
def schema_connections(settings, names: dict[str, str]):
    """One app-role connection per schema's database (direct, autocommit)."""
    conns = {}
    try:
        for key, name in names.items():
            conns[key] = db.connect("app", settings=settings, dbname=name, autocommit=True)
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


def show(settings, dbname: str, name: str) -> str:
    with db.connection("app", settings=settings, dbname=dbname) as conn:
        return conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]


Figures = dict[str, dict[str, list[float]]]


def rounds(args, settings, names, conns, sample, writer: str) -> tuple[Figures, Figures]:
    """Every variant's searches, then every schema's writes, in rotated order per round."""
    searches: Figures = {v.key: {"median": [], "p95": [], "mean": [], "ratio": []}
                         for v in VARIANTS}
    writes: Figures = {s.key: {"insert": [], "merge": []} for s in SCHEMAS}
    print("server ms per search = EXPLAIN ANALYZE's Planning + Execution Time (TIMING off); "
          "insert = add_message(), one transaction each, client wall time per message; "
          "merge = gin_clean_pending_list of the schema's GIN index afterwards, per message")
    for r in range(1, args.rounds + 1):
        this = {v.key: search_times(conns[v.schema], v, sample) for v in rotated(VARIANTS, r)}
        messages = texts(random.Random(args.seed * 1000 + r), args.inserts)  # noqa: S311
        cost = {s.key: write_cost(settings, names[s.key], s, writer, messages)
                for s in rotated(SCHEMAS, r)}
        base = statistics.median(this["A"])
        print(f"round {r} (load average {os.getloadavg()[0]:.1f}):")
        print("| variant | median ms | p95 ms | mean ms | median / A |")
        print("|---|---:|---:|---:|---:|")
        for v in VARIANTS:
            f = searches[v.key]
            f["median"].append(statistics.median(this[v.key]))
            f["p95"].append(percentile(this[v.key], 95))
            f["mean"].append(statistics.fmean(this[v.key]))
            f["ratio"].append(f["median"][-1] / base)
            print(f"| {v.key} | {f['median'][-1]:.2f} | {f['p95'][-1]:.2f} | "
                  f"{f['mean'][-1]:.2f} | {f['ratio'][-1]:.2f} |")
        print("| schema | insert µs/msg | merge µs/msg |")
        print("|---|---:|---:|")
        for s in SCHEMAS:
            insert, merge = cost[s.key]
            writes[s.key]["insert"].append(insert * 1e6)
            writes[s.key]["merge"].append(merge * 1e6)
            print(f"| {s.key} | {insert * 1e6:.0f} | {merge * 1e6:.0f} |", flush=True)
    return searches, writes


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def summary(args, searches: Figures, writes: Figures, sizes: dict) -> None:
    print(f"min-max over {args.rounds} rounds, scale {args.scale}, server ms per search:")
    print("| variant | median ms | p95 ms | mean ms | median / A (per round) |")
    print("|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        f = searches[v.key]
        print(f"| {v.key} | {span(f['median'])} | {span(f['p95'])} | {span(f['mean'])} | "
              f"{span(f['ratio'])} |")
    print("| schema | insert µs/msg | merge µs/msg | table MiB (pg_table_size) "
          "| all its indexes MiB | full-text index MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in SCHEMAS:
        f, (table, indexes, fts) = writes[s.key], sizes[s.key]
        print(f"| {s.key} | {span(f['insert'], '{:.0f}')} | {span(f['merge'], '{:.0f}')} | "
              f"{_mib(table)} | {_mib(indexes)} | {_mib(fts)} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())

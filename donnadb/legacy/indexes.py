"""Deferring the messages indexes during an initial load.

Maintaining the six secondary indexes of ``messages`` (one of them GIN full-text) row by
row costs about twice as much as building them once afterwards. For a first load into an
EMPTY ``messages`` table the import drops them and rebuilds them at the end: by default
whenever it finds the table empty (nothing can read what is not there yet), and
``--defer-indexes`` insists on it (refused on a table holding rows). The constraint
indexes (primary key, unique sequence per chat) always stay: the upserts need them, and
no index is ever needed for correctness, so a reader during the load is only slower.

Kill-safety: the index definitions are saved, in the same transaction as the drops, in
the table's comment (a transactional place every later import looks at). Any later
import, with or without the flag, sees the marker, keeps loading and rebuilds the
indexes (``CREATE INDEX IF NOT EXISTS``) before it removes the marker and puts the
original comment back. Never use it while the application reads the database.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from donnadb import db
from donnadb.errors import UsageError

log = logging.getLogger(__name__)

MARKER = "donnadb legacy import: deferred indexes "
SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes AS i
 WHERE i.schemaname = current_schema() AND i.tablename = 'messages'
   AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c
                    WHERE c.conname = i.indexname AND c.conrelid = 'messages'::regclass)
 ORDER BY i.indexname
"""
TABLE_COMMENT = "SELECT obj_description('messages'::regclass, 'pg_class')"
MESSAGES_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM messages)"
#: Index builds are faster with more memory; a session setting, no privilege needed. The
#: server's own value (the deploy sizes it from the host's RAM) is kept when it is larger.
BUILD_MEMORY = """
SELECT set_config('maintenance_work_mem',
                  greatest(pg_size_bytes(current_setting('maintenance_work_mem')),
                           pg_size_bytes('256MB')) / 1024 || 'kB', false)
"""


def pending(conn: psycopg.Connection) -> dict | None:
    """The saved state when an earlier import deferred the indexes, else None."""
    comment = conn.execute(TABLE_COMMENT).fetchone()[0]
    if comment and comment.startswith(MARKER):
        return json.loads(comment[len(MARKER):])
    return None


def _set_comment(conn: psycopg.Connection, text: str | None, owner: str) -> None:
    db.set_local_role(conn, owner)
    conn.execute(sql.SQL("COMMENT ON TABLE messages IS {}").format(
        sql.Literal(text) if text is not None else sql.SQL("NULL")))


def defer(conn: psycopg.Connection, owner: str, *, required: bool = True) -> dict | None:
    """Drop the secondary messages indexes (saving them first); returns the saved state,
    or None when ``messages`` holds rows and not ``required`` (they stay).

    :raises UsageError: ``required`` and ``messages`` is not empty (an incremental import
        into a live database must keep its indexes).
    """
    state = pending(conn)
    if state is not None:
        return state
    with conn.transaction():
        if not conn.execute(MESSAGES_EMPTY).fetchone()[0]:
            if not required:
                return None
            raise UsageError("--defer-indexes is only for an initial load: messages is not "
                             "empty; run the import without it")
        indexes = conn.execute(SECONDARY_INDEXES).fetchall()
        state = {"indexes": [d for _, d in indexes],
                 "comment": conn.execute(TABLE_COMMENT).fetchone()[0]}
        _set_comment(conn, MARKER + json.dumps(state), owner)
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    log.info("deferred %d messages indexes", len(state["indexes"]))
    return state


def rebuild(conn: psycopg.Connection, state: dict, owner: str) -> int:
    """Recreate the saved indexes (each in its own transaction), then clear the marker.

    Two lanes at once, on ``conn`` and on a second connection of the same role: the
    full-text GIN index (PostgreSQL 15 builds a GIN index on one core, and it costs more
    than all the B-trees together) beside the B-trees, so the rebuild takes about as long
    as the GIN build alone. A failure in either lane is raised here, after both stopped.
    """
    gin = [d for d in state["indexes"] if " USING gin " in d]
    others = [d for d in state["indexes"] if d not in gin]
    if gin and others:
        with psycopg.connect(conn.info.dsn, autocommit=True) as second, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-build") as pool:
            future = pool.submit(_build, second, gin, owner)
            try:
                _build(conn, others, owner)
            finally:
                future.result()
    else:
        _build(conn, gin + others, owner)
    with conn.transaction():
        _set_comment(conn, state.get("comment"), owner)
    return len(state["indexes"])


def _build(conn: psycopg.Connection, definitions: list[str], owner: str) -> None:
    conn.execute(BUILD_MEMORY)
    for definition in definitions:
        statement = definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
        with conn.transaction():
            db.set_local_role(conn, owner)
            conn.execute(statement)

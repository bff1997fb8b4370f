"""Deferring the messages indexes during an initial load (``import --defer-indexes``).

Maintaining the six secondary indexes of ``messages`` (one of them GIN full-text) row by
row costs about twice as much as building them once afterwards. For a first load into an
EMPTY ``messages`` table the import may drop them and rebuild them at the end. The
constraint indexes (primary key, unique sequence per chat) always stay: the upserts
need them.

Kill-safety: the index definitions are saved, in the same transaction as the drops, in
the table's comment (a transactional place every later import looks at). Any later
import, with or without the flag, sees the marker, keeps loading and rebuilds the
indexes (``CREATE INDEX IF NOT EXISTS``) before it removes the marker and puts the
original comment back. Never use it while the application reads the database.
"""

from __future__ import annotations

import json
import logging

import psycopg
from psycopg import sql

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
#: Index builds are faster with more memory; a session setting, no privilege needed.
BUILD_MEMORY = "SET maintenance_work_mem = '256MB'"


def pending(conn: psycopg.Connection) -> dict | None:
    """The saved state when an earlier import deferred the indexes, else None."""
    comment = conn.execute(TABLE_COMMENT).fetchone()[0]
    if comment and comment.startswith(MARKER):
        return json.loads(comment[len(MARKER):])
    return None


def _set_comment(conn: psycopg.Connection, text: str | None, owner: str) -> None:
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
    conn.execute(sql.SQL("COMMENT ON TABLE messages IS {}").format(
        sql.Literal(text) if text is not None else sql.SQL("NULL")))


def defer(conn: psycopg.Connection, owner: str) -> dict:
    """Drop the secondary messages indexes (saving them first); returns the saved state.

    :raises UsageError: ``messages`` is not empty (an incremental import into a live
        database must keep its indexes).
    """
    state = pending(conn)
    if state is not None:
        return state
    with conn.transaction():
        if not conn.execute(MESSAGES_EMPTY).fetchone()[0]:
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
    """Recreate the saved indexes (each in its own transaction), then clear the marker."""
    conn.execute(BUILD_MEMORY)
    for definition in state["indexes"]:
        statement = definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            conn.execute(statement)
    with conn.transaction():
        _set_comment(conn, state.get("comment"), owner)
    return len(state["indexes"])

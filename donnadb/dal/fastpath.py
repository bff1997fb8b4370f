"""The DAL's hottest statements on psycopg's lower layer: one libpq call per query.

A cursor's ``execute`` costs about as much client CPU as the history read's whole round
trip (query conversion, a new Transformer and its loaders per cursor, psycopg's
generator-driven protocol), so the per-message calls (history read, message append)
skip it: the statement goes out through ``PGconn.exec_params`` (one Parse/Bind/Execute
/Sync, as psycopg sends it), and after :data:`PREPARE_AFTER` runs on a connection
through ``PGconn.exec_prepared`` under a name of our own, as psycopg prepares its own
after its threshold; never through PgBouncer, whose transaction pooling would hand the
next call to a server connection that does not know the name. Rows are made by
psycopg's own C loaders, from a Transformer kept on the connection (its adapters, so
every value is the one a cursor returns) and come out as dicts, like ``dict_row``.
libpq releases the GIL while it waits for the server.

Only text parameters: the caller passes each value as ``bytes`` (or None for NULL) and
the server infers the types from the statement, as for a cursor's untyped strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import psycopg
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from psycopg.pq import ConnStatus, ExecStatus

#: Runs of a statement on one connection before it is prepared (psycopg's default).
PREPARE_AFTER = 5
_STATE = "_donnadb_fastpath"


class Statement:
    """A query of the DAL with named ``%(name)s`` parameters, as ``$n`` in ``params``'
    order, under a prepared-statement name of its own."""

    def __init__(self, name: str, query: str, params: Sequence[str]) -> None:
        text = query
        for n, param in enumerate(params, 1):
            text = text.replace(f"%({param})s", f"${n}")
        if "%(" in text:
            raise ValueError(f"{name}: a parameter of the query is not in {params}")
        self.name = f"donnadb_{name}".encode()
        self.sql = text.encode()
        self.columns: tuple[str, ...] | None = None


class _ConnState:
    """What the fast path keeps on one connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.transformer = Transformer(conn)
        self.runs: dict[bytes, int] = {}


def fetch(conn: psycopg.Connection, statement: Statement, values: Sequence[bytes | None],
          *, prepare: bool) -> list[dict[str, Any]]:
    """The rows of ``statement`` run with ``values`` on ``conn``, as dicts.

    :raises psycopg.OperationalError: the connection broke (``conn.broken`` is then true,
        as after a cursor's failure).
    :raises psycopg.Error: the server refused the statement (the class psycopg raises).
    """
    state = conn.__dict__.get(_STATE)
    if state is None:
        state = conn.__dict__[_STATE] = _ConnState(conn)
    pgconn = conn.pgconn
    runs = state.runs.get(statement.name, 0)
    if not prepare or runs < PREPARE_AFTER:
        result = pgconn.exec_params(statement.sql, values)
        if prepare:
            state.runs[statement.name] = runs + 1
    else:
        if runs == PREPARE_AFTER:
            _check(conn, pgconn.prepare(statement.name, statement.sql))
            state.runs[statement.name] = runs + 1
        result = pgconn.exec_prepared(statement.name, values)
    _check(conn, result)
    tx = state.transformer
    tx.set_pgresult(result)
    columns = statement.columns
    if columns is None or len(columns) != result.nfields:
        columns = statement.columns = tuple(
            result.fname(i).decode() for i in range(result.nfields))
    # Every row has nfields values (checked above, once): zip's strict check per row
    # would cost ~3 us of a 20-row page. map() keeps the per-row loop in C: 7 us for a
    # 20-row page against 10 us for the same dicts made in a list comprehension.
    return list(map(dict, map(zip, repeat(columns),
                              tx.load_rows(0, result.ntuples, tuple))))


def text(value: object) -> bytes:
    """``value`` as a text parameter, refusing what psycopg's str dumper refuses (libpq
    would silently cut a text parameter at a NUL).

    :raises psycopg.DataError: not text, or it holds a NUL.
    """
    if not isinstance(value, str):
        raise psycopg.DataError(f"expected text, not {type(value).__name__}")
    if "\x00" in value:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return value.encode()


def _check(conn: psycopg.Connection, result) -> None:
    if result.status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
        return
    if conn.pgconn.status == ConnStatus.BAD:
        message = (conn.pgconn.error_message or b"").decode(errors="replace").strip()
        raise psycopg.OperationalError(message or "the connection is closed")
    raise error_from_result(result, encoding=conn.info.encoding)

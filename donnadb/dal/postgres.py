"""PostgresDataAccess: the plan's tables through psycopg 3 and a psycopg_pool pool.

Connections run in autocommit; every operation of more than one statement runs inside
``conn.transaction()`` (a savepoint when the caller has opened a transaction), so each
call is all-or-nothing and a failed call does not poison the caller's transaction.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from donnadb.config import Settings, get_settings
from donnadb.dal import cache, fastpath, ranking, routing
from donnadb.dal import postgres_sql as q
from donnadb.dal.errors import (
    ConflictError,
    FailoverError,
    NotFoundError,
    TransactionError,
)
from donnadb.dal.fileio import check_file_name
from donnadb.dal.logwriter import LogWriterMixin
from donnadb.dal.protocol import (
    SESSION_FIELDS,
    USER_FIELDS,
    ChatSession,
    MemoryEntry,
    Message,
    SearchHit,
    TransactionMixin,
    User,
)
from donnadb.dal.values import (
    ESCAPE_MARKER,
    check_fields,
    check_json_object,
    check_limit,
    check_memory_key,
    check_memory_type,
    check_reserved_keys,
    check_role,
    check_search,
    check_timestamp,
    check_user_names,
    check_window,
    dump_json,
    escape_text,
    is_uuid,
    load_json,
    needs_escape,
    unescape_text,
)
from donnadb.errors import ConfigError, DatabaseError, DataError, DonnaError

log = logging.getLogger(__name__)

#: Memory types mirrored in a users column (the legacy file has one object for both).
SECTION_COLUMNS = {"profile": "profile", "preferences": "preferences"}
#: The users fields sealed with CRYPTO_ENABLED (donnadb/dal/sealed.py).
PERSONAL_USER_FIELDS = frozenset({"email", "name", "profile", "preferences"})
#: Sealed writes of one call, each reading the user's key afresh, before it gives up: a
#: key changes between the read and the write only when `keys rotate` or `users forget`
#: commits just then.
KEY_ATTEMPTS = 3

READ_ONLY = ("the database is read-only: a failover/switchover is in progress; retry "
             "(nothing was written)")
LOST = ("the database connection was lost during a write (failover/switchover or "
        "restart?): retry; it may have been applied, so retry only idempotent writes "
        "(docs/dal.md, During a failover)")

# The per-message calls, on the fast path (see fastpath.py).
HISTORY = fastpath.Statement("history", q.SELECT_HISTORY, ("chat_id", "limit", "offset"))
CALL_HISTORY = fastpath.Statement("call_history", q.CALL_HISTORY, ("chat_id", "limit", "offset"))
_APPEND_PARAMS = ("chat_id", "role", "content", "metadata", "token_count", "abuse_flagged")
APPEND = fastpath.Statement("add_message", q.ADD_MESSAGE, _APPEND_PARAMS)
APPEND_OWNER = fastpath.Statement("add_message_owner", q.ADD_MESSAGE_OWNER, _APPEND_PARAMS)


class PostgresDataAccess(TransactionMixin, LogWriterMixin):
    """The PostgreSQL store; safe to share between threads (one pool, one connection
    pinned per thread while a transaction is open)."""

    store = "postgresql"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        dbname: str | None = None,
        pool_timeout: float = 30.0,
        min_size: int = 1,
    ) -> None:
        """Open the pool, and the replicas' with DB_READ_FROM=replicas (in the
        background: a down server is reported by the first call).

        :raises CredentialsError: no password for the application role.
        :raises ConfigError: DB_READ_FROM=replicas with nowhere to read from; with
            CRYPTO_ENABLED, no usable key file (:class:`KeyFileError`).
        """
        s = settings or get_settings()
        self.settings = s
        # Field encryption (CRYPTO_ENABLED): None when off. Imported only then: the
        # cryptography library is not in the base package yet.
        self._sealer = None
        if s.crypto_enabled:
            try:
                from donnadb.dal.sealed import Sealer
            except ImportError as exc:
                raise ConfigError(f"CRYPTO_ENABLED needs the cryptography library ({exc}): "
                                  "install it beside donnadb, or turn CRYPTO_ENABLED off"
                                  ) from None
            self._sealer = Sealer(s)
        self._user_by_id_sql = q.SELECT_USER_BY_ID if self._sealer is None \
            else q.SELECT_SEALED_USER_BY_ID
        self._user_by_clerk_sql = q.SELECT_USER_BY_CLERK_ID if self._sealer is None \
            else q.SELECT_KEYED_USER_BY_CLERK_ID
        self.via_pgbouncer = s.pgbouncer_port is not None
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row,
                                  "context": dal_adapters()}
        if self.via_pgbouncer:
            # PgBouncer in transaction mode hands each transaction to any server
            # connection: server-side prepared statements would be lost between them.
            kwargs["prepare_threshold"] = None
        self._prepare = not self.via_pgbouncer
        # Through PgBouncer nothing stays prepared: the hot reads go through functions
        # whose plans the server keeps; direct, the plain statements are prepared.
        self._history = CALL_HISTORY if self.via_pgbouncer else HISTORY
        self._session_sql = q.CALL_SESSION if self.via_pgbouncer else q.SELECT_SESSION
        self._sealed_memory_sql = (q.CALL_SET_SEALED_MEMORY if self.via_pgbouncer
                                   else q.UPSERT_SEALED_MEMORY)
        self._sealed_user_sql = (q.CALL_CREATE_SEALED_USER if self.via_pgbouncer
                                 else q.INSERT_SEALED_USER)
        self.pool_timeout = pool_timeout
        self._local = threading.local()

        def pool(conninfo: str, name: str) -> ConnectionPool:
            return ConnectionPool(
                conninfo,
                min_size=min(min_size, s.db_max_connections),
                max_size=s.db_max_connections,
                max_idle=float(s.db_idle_timeout),
                timeout=pool_timeout,
                kwargs=kwargs,
                # A connection that died (server restart, idle kill) is replaced on
                # checkout instead of failing the caller's first query; without a round
                # trip per checkout (see _check_idle_connection).
                check=_check_idle_connection,
                name=name,
                open=True,
            )

        # Reads from replicas (DB_READ_FROM): None means every call uses the one pool.
        read_info = routing.read_conninfo(s, dbname) if s.db_read_from == "replicas" else None
        self._pool = pool(routing.write_conninfo(s, dbname), "donnadb-dal")
        self._router: routing.ReadRouter | None = None
        if read_info is not None:
            self._router = routing.ReadRouter(s, pool(read_info, "donnadb-dal-read"))
        # The read-through cache (CACHE_ENABLED; donnadb/dal/cache.py): None when off.
        self._cache = cache.open_cache(s, dbname or s.db_name)

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _conn(self, *, outside_tx: bool = False) -> Iterator[psycopg.Connection]:
        """The thread's transaction connection, or one from the pool (always one from the
        pool with ``outside_tx``).

        :raises DatabaseError: no connection (server down, pool exhausted) or it broke.
        """
        pinned = None if outside_tx else getattr(self._local, "conn", None)
        try:
            if pinned is not None:
                with self._leaving_old_leader(pinned):
                    yield pinned
            else:
                with _checkout(self._pool) as conn, self._leaving_old_leader(conn):
                    yield conn
        except DonnaError:
            raise
        except psycopg.Error as exc:
            raise _translate(exc, self.pool_timeout) from exc

    @contextmanager
    def _leaving_old_leader(self, conn: psycopg.Connection) -> Iterator[None]:
        """Turn a write that reached a demoted (read-only) or dead server into
        :class:`FailoverError`, never into a retry: the connection is discarded and so
        are the pool's others (they lead to the same server), so the next call connects
        afresh, through the routing layer or libpq, to the new leader.

        :raises FailoverError: SQLSTATE 25006 read_only_sql_transaction, or the
            connection broke.
        """
        try:
            yield
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            conn.close()
            self._pool.drain()
            raise FailoverError(READ_ONLY) from exc
        except psycopg.OperationalError as exc:
            if not conn.broken or isinstance(exc, DonnaError):
                raise
            self._pool.drain()
            raise FailoverError(LOST) from exc

    def _read(self, work, *, chat: str | None = None, user: str | None = None,
              clerk: str | None = None, cached: cache.Entry | None = None):
        """``work(conn)`` for a read of one statement: on the thread's transaction
        connection if one is open, else on the replicas' pool when routing allows it
        (see :mod:`donnadb.dal.routing`), else the leader's. A connection lost midway is
        retried once on a fresh one (reads have no effect to repeat).

        With ``cached`` and the cache on, outside a transaction (whose reads must see
        its own uncommitted writes), the result may come from the cache; a miss reads
        the leader: a lagging replica's older copy would be cached under the current
        version and served until the next write.

        :raises DatabaseError: no connection, or lost twice.
        """
        in_tx = getattr(self._local, "conn", None) is not None
        if cached is not None and self._cache is not None and not in_tx:
            return self._cache.read_through(cached, lambda: self._read_db(work, leader=True))
        return self._read_db(work, chat=chat, user=user, clerk=clerk)

    def _read_db(self, work, *, chat: str | None = None, user: str | None = None,
                 clerk: str | None = None, leader: bool = False):
        """:meth:`_read` without the cache; ``leader`` keeps it off the replicas."""
        if getattr(self._local, "conn", None) is not None:
            with self._conn() as conn:
                return work(conn)
        pool = self._pool
        router = self._router
        if router is not None and not leader:
            keys = [(kind, key) for kind, key in
                    (("chat", chat), ("user", user), ("clerk", clerk)) if key is not None]
            if not router.written_recently(keys) and router.replicas_usable():
                pool = router.pool
        for attempt in (1, 2):
            try:
                # _checkout's steps written out: its generator costs a few µs of the
                # hottest reads.
                conn = pool.getconn()
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
                finally:
                    pool.putconn(conn)
            except DonnaError:
                raise
            except psycopg.Error as exc:
                raise _translate(exc, self.pool_timeout) from exc
            log.warning("a read lost its database connection: retrying once on a fresh one")
        raise AssertionError("unreachable")

    def _wrote(self, *, chat: str | None = None, user: str | None = None,
               clerk: str | None = None) -> None:
        """Note a write for read-your-writes (again at commit when inside a transaction:
        the window starts when others can see it) and give what it changed new cache
        versions: now, or at commit inside a transaction (until then others still see
        the old rows, and may cache them)."""
        if self._router is None and self._cache is None:
            return
        keys = [(kind, key) for kind, key in
                (("chat", chat), ("user", user), ("clerk", clerk)) if key is not None]
        if self._router is not None:
            self._router.wrote(keys)
        if getattr(self._local, "conn", None) is not None:
            self._local.wrote = [*getattr(self._local, "wrote", []), *keys]
        elif self._cache is not None:
            self._cache.bump(keys)

    @contextmanager
    def _atomic(self) -> Iterator[psycopg.Connection]:
        """A connection inside a transaction (a savepoint within the caller's)."""
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _single(self) -> Iterator[psycopg.Connection]:
        """A connection for an operation of ONE statement: atomic by itself in autocommit,
        so no BEGIN/COMMIT round trips (through PgBouncer a server connection is held for
        the whole transaction, round trips included); inside the caller's transaction a
        savepoint as in :meth:`_atomic`, so that a failure does not abort it."""
        if getattr(self._local, "conn", None) is not None:
            with self._atomic() as conn:
                yield conn
        else:
            with self._conn() as conn:
                yield conn

    def _one(self, query: str | sql.Composed, params: Any = None) -> dict[str, Any] | None:
        with self._conn() as conn:
            return conn.execute(query, params).fetchone()

    # ------------------------------------------------------------------ users
    def create_user(self, user_data: Mapping[str, Any]) -> str:
        """:raises ConflictError: the clerk id is taken.
        :raises DataError: the clerk id or e-mail cannot name a legacy file, a reserved key."""
        check_fields(user_data, USER_FIELDS, "user")
        check_user_names(user_data)
        profile = check_json_object(user_data.get("profile"), "profile")
        preferences = check_json_object(user_data.get("preferences"), "preferences")
        params = {
            "clerk_id": user_data.get("clerk_id"),
            "email": user_data.get("email"),
            "name": user_data.get("name"),
            "profile": Jsonb(profile),
            "preferences": Jsonb(preferences),
            "status": user_data.get("status"),
            "last_active_at": check_timestamp(user_data.get("last_active_at"),
                                              "last_active_at"),
        }
        try:
            # Without profile or preferences keys to mirror: one statement.
            with self._atomic() if profile or preferences else self._single() as conn:
                if self._sealer is None:
                    user_id = conn.execute(q.INSERT_USER, params).fetchone()["id"]
                else:
                    user_id, profile, preferences = self._insert_sealed_user(conn, params)
                self._sync_section_rows(conn, user_id, "profile", profile, new_user=True)
                self._sync_section_rows(conn, user_id, "preferences", preferences,
                                        new_user=True)
        except ConflictError:
            raise ConflictError(f"user {params['clerk_id']!r} already exists") from None
        self._wrote(user=user_id, clerk=params["clerk_id"])
        return user_id

    def _insert_sealed_user(self, conn, params: dict[str, Any]) -> tuple[str, dict, dict]:
        """Insert a new user with its personal fields sealed under a new data key:
        (its id, the sealed profile and preferences for the mirror rows)."""
        user_id = str(uuid.uuid4())
        dk = self._sealer.new_key(user_id)
        cols = self._sealer.user_columns(dk, {
            "email": params["email"], "name": params["name"],
            "profile": params["profile"].obj, "preferences": params["preferences"].obj})
        conn.execute(self._sealed_user_sql, {
            **params, **cols, "id": user_id, "profile": Jsonb(cols["profile"]),
            "preferences": Jsonb(cols["preferences"]), "kek_id": dk.kek_id,
            "wrapped_key": dk.wrapped})
        return user_id, cols["profile"], cols["preferences"]

    def _open_user(self, row: dict[str, Any] | None) -> User | None:
        if self._sealer is None or row is None:
            return row
        return self._sealer.open_user(row, self._key_reader(row["id"]))

    def _key_reader(self, user_id: str):
        """Reads the user's stored data key, for a process that does not hold it yet: on
        the leader (a replica may not have a user made a moment ago)."""
        return lambda: self._read_db(
            lambda c: c.execute(q.SELECT_USER_KEY, (user_id,)).fetchone(), leader=True)

    def get_user_by_id(self, user_id: str) -> User | None:
        """:raises DecryptError: with CRYPTO_ENABLED, a sealed field does not open."""
        if not is_uuid(user_id):
            return None
        query = self._user_by_id_sql
        if self._sealer is not None and self._sealer.cached_key(user_id) is None:
            query = q.SELECT_KEYED_USER_BY_ID
        return self._open_user(self._read(
            lambda c: c.execute(query, (user_id,)).fetchone(), user=user_id))

    def get_user_by_clerk_id(self, clerk_id: str) -> User | None:
        """:raises DecryptError: with CRYPTO_ENABLED, a sealed field does not open."""
        query = self._user_by_clerk_sql
        row = self._read(lambda c: c.execute(query, (clerk_id,)).fetchone(), clerk=clerk_id)
        if row is not None and self._router is not None and \
                self._router.written_recently([("user", str(row["id"]))]):
            # Written here under another clerk id (an update renamed it): the leader's copy.
            row = self._one(query, (clerk_id,))
        return self._open_user(row)

    def update_user(self, user_id: str, updates: Mapping[str, Any]) -> bool:
        check_fields(updates, USER_FIELDS, "user")
        check_user_names(updates)
        if not is_uuid(user_id):
            return False
        values: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for field, value in updates.items():
            if field in SECTION_COLUMNS:
                sections[field] = check_json_object(value, field)
                values[field] = Jsonb(sections[field])
            elif field == "last_active_at":
                values[field] = check_timestamp(value, "last_active_at")
            elif field == "status":
                values[field] = value or "active"
            else:
                values[field] = value
        try:
            if self._sealer is not None and set(updates) & PERSONAL_USER_FIELDS:
                if not self._sealed_write(user_id, lambda conn, dk: self._update_sealed_user(
                        conn, dk, updates, values, sections), several=bool(sections)):
                    return False
            else:
                with self._atomic() as conn:
                    if not self._update_user_row(conn, user_id, values, sections):
                        return False
        except ConflictError:
            raise ConflictError(f"user {updates.get('clerk_id')!r} already exists") from None
        self._wrote(user=user_id, clerk=updates.get("clerk_id"))
        return True

    def _update_user_row(self, conn, user_id: str, values: dict[str, Any],
                         sections: dict[str, dict[str, Any]],
                         wrapped: bytes | None = None) -> bool:
        """update_user's statements; False when no row was updated (no such user; with
        ``wrapped``, also when that is not the user's stored key)."""
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(f), sql.Placeholder(f))
                       for f in values]
        assignments.append(sql.SQL("updated_at = now()"))
        guard = sql.SQL("" if wrapped is None else f" AND {q.KEY_IS_CURRENT}")
        query = sql.SQL("UPDATE users SET {} WHERE id = {}{} RETURNING id").format(
            sql.SQL(", ").join(assignments), sql.Placeholder("user_id"), guard)
        params = {**values, "user_id": user_id, "wrapped": wrapped}
        if conn.execute(query, params).fetchone() is None:
            return False
        for section, content in sections.items():
            self._sync_section_rows(conn, user_id, section, content)
        return True

    def _update_sealed_user(self, conn, dk, updates: Mapping[str, Any], values: dict[str, Any],
                            sections: dict[str, dict[str, Any]]) -> bool:
        """update_user's statements with the personal fields sealed under ``dk``."""
        cols = self._sealer.user_columns(
            dk, {f: updates[f] for f in PERSONAL_USER_FIELDS if f in updates})
        sealed_sections = {f: cols[f] for f in sections}
        sealed = {**values, **cols, **{f: Jsonb(v) for f, v in sealed_sections.items()}}
        return self._update_user_row(conn, dk.user_id, sealed, sealed_sections, dk.wrapped)

    def _sealed_write(self, user_id: str, write, *, several: bool) -> bool:
        """``write(conn, dk)`` with the user's data key ``dk``, its statements guarded by
        ``dk.wrapped`` (postgres_sql.KEY_IS_CURRENT): False when they wrote nothing.

        With the key cached, ``write`` runs at once: ONE statement outside a transaction
        unless ``several``. When it writes nothing (the key was re-wrapped, or the user
        erased, perhaps made again with a new key) the key is dropped and the write done
        as without a cache: in a transaction that reads the key first, making one for a
        user who has none yet.

        :returns: False when there is no such user.
        :raises DatabaseError: the user's key changed during every attempt.
        """
        dk = self._sealer.cached_key(user_id)
        if dk is not None:
            with self._atomic() if several else self._single() as conn:
                if write(conn, dk):
                    return True
            self._sealer.drop_key(dk)
        for _ in range(KEY_ATTEMPTS):
            with self._atomic() as conn:
                dk = self._sealer.key_for_write(conn, user_id)
                if dk is None:
                    return False
                if write(conn, dk):
                    return True
            # Re-wrapped or erased between the read of the key and the write: again.
            self._sealer.drop_key(dk)
        raise DatabaseError(f"user {user_id}'s data key changed during each of "
                            f"{KEY_ATTEMPTS} attempts to write (`keys rotate` or `users "
                            "forget` running?): retry")

    @staticmethod
    def _sync_section_rows(conn, user_id: str, memory_type: str, section: dict, *,
                           new_user: bool = False) -> None:
        """The user's mirror rows of ``memory_type`` made ``section``'s (a new user has
        none to remove: no statement for an empty section)."""
        params = {"user_id": user_id, "memory_type": memory_type, "section": Jsonb(section)}
        if not new_user:
            conn.execute(q.DELETE_SECTION_ROWS_NOT_IN, params)
        if section:
            conn.execute(q.UPSERT_SECTION_ROWS, params)

    # ------------------------------------------------------------------ chat sessions
    def create_chat_session(
        self,
        chat_id: str,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        profile: str = "general",
    ) -> str:
        """:raises ConflictError: the chat id is taken. :raises NotFoundError: no such user.
        :raises DataError: the chat id cannot be a file name (the export writes it as one)."""
        check_file_name(chat_id, "chat_id", ".json")
        if user_id is not None and not is_uuid(user_id):
            raise NotFoundError(f"no user {user_id!r}: create it first")
        params = {"chat_id": chat_id, "user_id": user_id, "title": title, "profile": profile,
                  "metadata": Jsonb(check_json_object(metadata, "metadata"))}
        try:
            with self._single() as conn:
                session_id = conn.execute(q.INSERT_SESSION, params).fetchone()["id"]
        except ConflictError:
            raise ConflictError(f"chat {chat_id!r} already exists") from None
        except NotFoundError:
            raise NotFoundError(f"no user {user_id!r}: create it first") from None
        self._wrote(chat=chat_id, user=user_id)
        return session_id

    def get_chat_session(self, chat_id: str) -> ChatSession | None:
        return self._read(lambda c: c.execute(self._session_sql, (chat_id,)).fetchone(),
                          chat=chat_id, cached=cache.Entry("chat", chat_id, ("session",)))

    def update_chat_session(self, chat_id: str, updates: Mapping[str, Any]) -> bool:
        check_fields(updates, SESSION_FIELDS, "chat session")
        user_id = updates.get("user_id")
        if user_id is not None and not is_uuid(user_id):
            raise NotFoundError(f"no user {user_id!r}: create it first")
        values: dict[str, Any] = {}
        for field, value in updates.items():
            if field == "metadata":
                values[field] = Jsonb(check_json_object(value, "metadata"))
            elif field == "profile":
                values[field] = value or "general"
            else:
                values[field] = value
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(f), sql.Placeholder(f))
                       for f in values]
        assignments.append(sql.SQL("updated_at = now()"))
        query = sql.SQL("UPDATE chat_sessions SET {} WHERE chat_id = {} RETURNING id").format(
            sql.SQL(", ").join(assignments), sql.Placeholder("chat_id"))
        try:
            with self._atomic() as conn:
                found = conn.execute(query, {**values, "chat_id": chat_id}).fetchone()
        except NotFoundError:
            raise NotFoundError(f"no user {user_id!r}: create it first") from None
        self._wrote(chat=chat_id, user=user_id)
        return found is not None

    def upsert_chat_session(self, session: Mapping[str, Any], user_id: str | None) -> str:
        """Create or overwrite a chat from another store's copy (``user_id`` is ours).

        :raises DataError: the chat id cannot be a file name, or the metadata has a
            reserved key.
        """
        check_file_name(session["chat_id"], "chat_id", ".json")
        check_reserved_keys(session.get("metadata") or {}, "chat metadata")
        params = {
            "chat_id": session["chat_id"], "user_id": user_id, "title": session.get("title"),
            "profile": session.get("profile"), "status": session.get("status"),
            "metadata": Jsonb(session.get("metadata") or {}),
            "created_at": session.get("created_at"), "updated_at": session.get("updated_at"),
        }
        with self._single() as conn:
            session_id = conn.execute(q.UPSERT_SESSION, params).fetchone()["id"]
        self._wrote(chat=session["chat_id"], user=user_id)
        return session_id

    # ------------------------------------------------------------------ messages
    def add_message(
        self,
        chat_id: str,
        role: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        token_count: int | None = None,
        abuse_flagged: bool = False,
    ) -> str:
        """:raises NotFoundError: no such chat."""
        check_role(role)
        if not isinstance(content, str):
            raise DataError(f"message content must be text, not {type(content).__name__}")
        content, meta = _escape(content, check_json_object(metadata, "metadata"))
        # Reading from replicas: also the chat's owner, whose chat list and search the
        # new message changes (read-your-writes).
        statement = APPEND if self._router is None else APPEND_OWNER
        metadata = dump_json(meta)
        with self._single() as conn:
            row = fastpath.fetch(conn, statement, (
                fastpath.text(chat_id), role.encode(), content.encode(),
                metadata if isinstance(metadata, bytes) else metadata.encode(),
                None if token_count is None else str(token_count).encode(),
                b"t" if abuse_flagged else b"f"), prepare=self._prepare)[0]
        if row["id"] is None:
            raise NotFoundError(f"no chat {chat_id!r}: create the session first")
        self._wrote(chat=chat_id, user=row.get("user_id"))
        return row["id"]

    def insert_messages(self, chat_id: str, messages: list[Message]) -> int:
        """Copy messages from another store keeping id, position and time; idempotent.

        :returns: how many were new.
        :raises NotFoundError: the chat is not in this database yet.
        :raises DataError: a position is taken by a different message.
        """
        for m in messages:
            check_reserved_keys(m.get("metadata") or {}, "message metadata")
        inserted = 0
        with self._atomic() as conn:
            for m in messages:
                content, meta = _escape(m["content"], dict(m.get("metadata") or {}))
                row = conn.execute(q.INSERT_MESSAGE_REPLICA, {
                    "id": m["id"], "chat_id": chat_id, "role": m["role"], "content": content,
                    "metadata": Jsonb(meta), "created_at": m.get("created_at"),
                    "sequence_number": m["sequence_number"], "token_count": m.get("token_count"),
                    "abuse_flagged": bool(m.get("abuse_flagged")),
                }).fetchone()
                if row is not None:
                    inserted += 1
                    continue
                if conn.execute(q.SELECT_MESSAGE_EXISTS, (m["id"],)).fetchone():
                    continue
                if conn.execute(q.SELECT_MESSAGE_COUNT, (chat_id,)).fetchone() is None:
                    raise NotFoundError(f"no chat {chat_id!r} in PostgreSQL yet")
                raise DataError(
                    f"chat {chat_id!r} position {m['sequence_number']} holds another message "
                    f"than {m['id']}; compare with `donnactl migrate-data verify`"
                )
        self._wrote(chat=chat_id)
        return inserted

    def get_chat_history(self, chat_id: str, limit: int = 20, offset: int = 0) -> list[Message]:
        check_window(limit, offset)
        # The last page only: the one every turn of a conversation reads.
        last_page = offset == 0 and limit <= self.settings.cache_history_max_limit
        rows = self._read(lambda c: fastpath.fetch(
            c, self._history, (fastpath.text(chat_id), b"%d" % limit, b"%d" % offset),
            prepare=self._prepare), chat=chat_id,
            cached=cache.Entry("chat", chat_id, ("history", limit)) if last_page else None)
        rows.reverse()  # the page comes newest first
        return _unescaped(rows)

    def get_message_count(self, chat_id: str) -> int:
        row = self._read(lambda c: c.execute(q.SELECT_MESSAGE_COUNT, (chat_id,)).fetchone(),
                         chat=chat_id)
        return 0 if row is None else row["message_count"]

    def list_chat_sessions(self, user_id: str, limit: int = 20) -> list[ChatSession]:
        check_limit(limit)
        if not is_uuid(user_id):
            return []
        params = {"user_id": user_id, "limit": limit}
        return self._read(lambda c: c.execute(q.SELECT_USER_SESSIONS, params).fetchall(),
                          user=user_id)

    def search_messages(
        self, user_id: str, query: str, *, limit: int = 20, recent_chats: int | None = None
    ) -> list[SearchHit]:
        check_search(query, limit, recent_chats)
        if not is_uuid(user_id) or needs_escape(query):
            return []  # stored text never holds NUL or a lone surrogate: nothing matches
        params = {"user_id": user_id, "query": query, "limit": limit, "chats": recent_chats,
                  "headline": ranking.HEADLINE_OPTIONS}
        rows = self._read(lambda c: c.execute(q.SEARCH_MESSAGES, params).fetchall(),
                          user=user_id)
        for row in rows:
            if row["metadata"].get(ESCAPE_MARKER):
                # The snippet of escaped text would show the escapes: mark the text as
                # written the way the file store does.
                row["snippet"] = ranking.snippet(unescape_text(row["content"]),
                                                 ranking.words(query))
        return _unescaped(rows)

    # ------------------------------------------------------------------ system logs
    def _store_log(self, line: dict[str, Any]) -> str:
        # The server's clock, as for every other row this store writes.
        return self.insert_log(line, log_id=None, at=None)

    def insert_log(self, line: Mapping[str, Any], *, log_id: str | None,
                   at: datetime | None) -> str:
        """Insert one :func:`~donnadb.dal.values.log_line` object as a system_logs row, at
        once, outside the thread's transaction if one is open.

        With ``log_id`` (dual-write's copy of a file line) an existing row is kept: a
        replay inserts nothing. ``at`` None means the server's now().
        """
        params = {"id": log_id, "level": line["level"], "message": line["message"],
                  "context": Jsonb(line["context"]), "trace_id": line["trace_id"],
                  "ip": line["ip"], "user_agent": line["user_agent"], "uri": line["uri"],
                  "ts": at}
        with self._conn(outside_tx=True) as conn:
            row = conn.execute(q.INSERT_LOG, params).fetchone()
        return row["id"] if row is not None else str(log_id)

    # ------------------------------------------------------------------ user memory
    def set_user_memory(
        self,
        user_id: str,
        memory_type: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> bool:
        """:raises NotFoundError: no such user."""
        check_memory_type(memory_type)
        check_memory_key(key)
        if not is_uuid(user_id):
            raise NotFoundError(f"no user {user_id!r}: create it first")
        params = {"user_id": user_id, "memory_type": memory_type, "key": key,
                  "value": Jsonb(value), "expires_at": check_timestamp(expires_at, "expires_at")}
        try:
            # Profile and preferences keys are mirrored in a users column: two statements.
            section = memory_type in SECTION_COLUMNS
            if self._sealer is not None:
                if not self._sealed_write(user_id, lambda conn, dk: self._set_sealed_memory(
                        conn, dk, params, value), several=section):
                    raise NotFoundError(user_id)
            else:
                with self._atomic() if section else self._single() as conn:
                    conn.execute(q.UPSERT_MEMORY, params)
                    if section:
                        conn.execute(_section_sql(q.MERGE_SECTION_KEY, memory_type), params)
        except NotFoundError:
            raise NotFoundError(f"no user {user_id!r}: create it first") from None
        self._wrote(user=user_id)
        return True

    def _set_sealed_memory(self, conn, dk, params: dict[str, Any], value: Any) -> bool:
        """set_user_memory's statements with the value sealed under ``dk``."""
        memory_type = params["memory_type"]
        sealed = {**params, "wrapped": dk.wrapped,
                  "value": Jsonb(dk.seal_value(memory_type, params["key"], value))}
        if not conn.execute(self._sealed_memory_sql, sealed).fetchone()["keyed"]:
            return False
        if memory_type in SECTION_COLUMNS:
            conn.execute(_section_sql(q.MERGE_SECTION_KEY, memory_type), sealed)
        return True

    def get_user_memory(
        self, user_id: str, memory_type: str, key: str | None = None
    ) -> dict[str, Any]:
        check_memory_type(memory_type)
        if not is_uuid(user_id):
            return {}
        params = {"user_id": user_id, "memory_type": memory_type, "key": key}
        query = q.SELECT_MEMORY if key is None else q.SELECT_MEMORY_KEY
        if self._sealer is not None and self._sealer.cached_key(user_id) is None:
            query = q.SELECT_KEYED_MEMORY if key is None else q.SELECT_KEYED_MEMORY_KEY
        # Sealed, the cache keeps the rows as read (ciphertext, perhaps the wrapped
        # key), under an item of their own: a plain store's cached rows are no sealed ones.
        item = ("memory" if self._sealer is None else "sealed-memory", memory_type, key)
        rows = self._read(lambda c: c.execute(query, params).fetchall(), user=user_id,
                          cached=cache.Entry("user", user_id, item, _first_expiry))
        if self._sealer is not None:
            rows = self._sealer.open_memory(user_id, rows, self._key_reader(user_id),
                                            memory_type)
        return {r["key"]: r["value"] for r in rows}

    def memory_entries(self, user_id: str) -> list[MemoryEntry]:
        """Every stored entry of the user, expired ones included."""
        if not is_uuid(user_id):
            return []
        rows = self._read(lambda c: c.execute(q.SELECT_ALL_MEMORY,
                                              {"user_id": user_id}).fetchall(), user=user_id)
        if self._sealer is None:
            return rows
        return self._sealer.open_memory(user_id, rows, self._key_reader(user_id))

    def delete_user_memory(self, user_id: str, memory_type: str, key: str | None = None) -> bool:
        check_memory_type(memory_type)
        if not is_uuid(user_id):
            return False
        params = {"user_id": user_id, "memory_type": memory_type, "key": key}
        with self._atomic() as conn:
            deleted = [r["key"] for r in conn.execute(
                q.DELETE_MEMORY if key is None else q.DELETE_MEMORY_KEY, params).fetchall()]
            if deleted and memory_type in SECTION_COLUMNS:
                conn.execute(_section_sql(q.REMOVE_SECTION_KEYS, memory_type),
                             {"user_id": user_id, "keys": deleted})
        self._wrote(user=user_id)
        return bool(deleted)

    def upsert_user(self, user: Mapping[str, Any], memory: list[MemoryEntry]) -> str:
        """Make this database's copy of a user (matched by clerk id) equal to ``user`` and
        its memory entries (expired ones included); return our user id. Idempotent.

        :raises DataError: a name that cannot be a file name, or a reserved key."""
        check_user_names(user)
        for section in ("profile", "preferences"):
            check_reserved_keys(user.get(section) or {}, section)
        for entry in memory:
            check_memory_key(entry["key"])
        params = {
            "clerk_id": user["clerk_id"], "email": user.get("email"), "name": user.get("name"),
            "profile": Jsonb(user.get("profile") or {}),
            "preferences": Jsonb(user.get("preferences") or {}),
            "status": user.get("status"), "created_at": user.get("created_at"),
            "updated_at": user.get("updated_at"), "last_active_at": user.get("last_active_at"),
        }
        with self._atomic() as conn:
            dk = None
            if self._sealer is None:
                user_id = conn.execute(q.UPSERT_USER, params).fetchone()["id"]
            else:
                user_id, dk = self._upsert_sealed_user(conn, user, params)
            conn.execute(q.DELETE_MEMORY_NOT_LISTED, {
                "user_id": user_id,
                "types": [e["memory_type"] for e in memory],
                "keys": [e["key"] for e in memory],
            })
            with conn.cursor() as cur:
                cur.executemany(q.UPSERT_MEMORY, [
                    {"user_id": user_id, "memory_type": e["memory_type"], "key": e["key"],
                     "value": Jsonb(e["value"] if dk is None else
                                    dk.seal_value(e["memory_type"], e["key"], e["value"])),
                     "expires_at": e["expires_at"]}
                    for e in memory
                ])
        self._wrote(user=user_id, clerk=user["clerk_id"])
        return user_id

    def _upsert_sealed_user(self, conn, user: Mapping[str, Any], params: dict[str, Any]):
        """upsert_user's row, sealed: (its id, its data key)."""
        user_id = conn.execute(q.CLAIM_USER, {**params, "id": str(uuid.uuid4())}
                               ).fetchone()["id"]
        dk = self._sealer.key_for_write(conn, user_id)
        cols = self._sealer.user_columns(dk, {
            "email": user.get("email"), "name": user.get("name"),
            "profile": user.get("profile") or {}, "preferences": user.get("preferences") or {}})
        conn.execute(q.UPDATE_SEALED_USER, {
            **params, **cols, "id": user_id, "profile": Jsonb(cols["profile"]),
            "preferences": Jsonb(cols["preferences"])})
        return user_id, dk

    def ensure_user(self, clerk_id: str) -> str:
        """Our id for ``clerk_id``, creating a bare user when there is none.

        :raises DataError: ``clerk_id`` cannot be a file name."""
        check_file_name(clerk_id, "clerk_id", ".json")
        with self._atomic() as conn:
            row = conn.execute(q.INSERT_BARE_USER, (clerk_id,)).fetchone()
            # A separate statement: it sees a row a concurrent writer just committed.
            user_id = (row or conn.execute(q.SELECT_USER_BY_CLERK_ID,
                                           (clerk_id,)).fetchone())["id"]
        self._wrote(user=user_id, clerk=clerk_id)
        return user_id

    # ------------------------------------------------------------------ transactions
    def begin_transaction(self) -> bool:
        """Pin a pool connection to this thread and open a transaction on it.

        :raises TransactionError: one is already open on this thread.
        :raises DatabaseError: no connection.
        """
        if getattr(self._local, "conn", None) is not None:
            raise TransactionError("a transaction is already open on this thread")
        try:
            conn = self._pool.getconn()
        except psycopg.Error as exc:
            raise _translate(exc, self.pool_timeout) from exc
        try:
            tx = conn.transaction()
            tx.__enter__()
        except psycopg.Error as exc:
            self._pool.putconn(conn)
            raise _translate(exc, self.pool_timeout) from exc
        self._local.conn, self._local.tx = conn, tx
        return True

    def commit(self) -> bool:
        """:raises TransactionError: none open. :raises DatabaseError: the commit failed
        (the transaction is then rolled back)."""
        conn, tx = self._end()
        wrote = self._local.__dict__.pop("wrote", [])
        try:
            tx.__exit__(None, None, None)
        except psycopg.Error as exc:
            raise _translate(exc, self.pool_timeout) from exc
        finally:
            self._pool.putconn(conn)
            if self._cache is not None:
                # Even when the commit failed: a commit whose connection broke may have
                # happened, and a needless new version costs one cache miss.
                self._cache.bump(wrote)
        if self._router is not None:
            self._router.wrote(wrote)
        return True

    def rollback(self) -> bool:
        """:raises TransactionError: no transaction is open on this thread."""
        conn, tx = self._end()
        self._local.__dict__.pop("wrote", None)
        try:
            rollback = psycopg.Rollback(tx)
            tx.__exit__(type(rollback), rollback, None)
        except psycopg.Error as exc:
            log.warning("rollback failed (the connection is discarded): %s", exc)
        finally:
            self._pool.putconn(conn)
        return True

    def _end(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise TransactionError("no transaction is open on this thread")
        tx = self._local.tx
        self._local.conn = self._local.tx = None
        return conn, tx

    # ------------------------------------------------------------------ health
    def health_check(self) -> dict[str, Any]:
        result: dict[str, Any] = {"store": self.store, "via_pgbouncer": self.via_pgbouncer}
        if self._router is not None:
            # The last lag measurement (None before the first read) and its verdict.
            result["replicas"] = {"lag_seconds": self._router.lag,
                                  "reads_to": "leader" if self._router.lagging else "replicas"}
        if self._cache is not None:
            # Informative only: a cache that is down costs speed, never an answer.
            result["cache"] = self._cache.health()
        started = time.perf_counter()
        try:
            with self._pool.connection(timeout=min(self.pool_timeout, 5.0)) as conn:
                result.update(conn.execute(q.HEALTH).fetchone())
        except DonnaError as exc:
            result.update(status="error", error=str(exc))
            return result
        except psycopg.Error as exc:
            result.update(status="error", error=str(_translate(exc, self.pool_timeout)))
            return result
        stats = self._pool.get_stats()
        result.update(
            status="ok",
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            pool={"size": stats.get("pool_size", 0), "available": stats.get("pool_available", 0),
                  "max": self._pool.max_size},
        )
        return result

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the pool holds its minimum of connections (``min_size``).

        :raises DatabaseError: they were not all open within ``timeout`` seconds.
        """
        try:
            self._pool.wait(timeout=timeout)
        except PoolTimeout:
            raise DatabaseError(
                f"the pool did not open its {self._pool.min_size} connections within "
                f"{timeout:g}s: is the server (or PgBouncer) up and its max_client_conn "
                "large enough for them?") from None

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
        if self._cache is not None:
            self._cache.close()
        self._pool.close()

    def __enter__(self) -> PostgresDataAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _checkout(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection of ``pool``, put back after use. Not ``pool.connection()``: its
    ``with conn`` commits on the way out, in autocommit a no-op that costs a few µs of
    every call; what a failure leaves open is rolled back by ``putconn``."""
    conn = pool.getconn()
    try:
        yield conn
    finally:
        pool.putconn(conn)


def dal_adapters() -> AdaptersMap:
    """The DAL's adapters: psycopg's, except that json/jsonb columns (a metadata per
    message row) are parsed by load_json, the same values as json.loads at a fraction of
    the CPU."""
    adapters = AdaptersMap(psycopg.adapters)
    set_json_loads(load_json, adapters)
    return adapters


def _unescaped(rows: list[Message]) -> list[Message]:
    """Messages as written: content stored escaped (see escape_text) is restored."""
    for row in rows:
        if row["metadata"].pop(ESCAPE_MARKER, False):
            row["content"] = unescape_text(row["content"])
    return rows


def _check_idle_connection(conn: psycopg.Connection) -> None:
    """The pool's checkout check, costing a poll (~1 us) instead of a round trip.

    An idle connection has nothing to read; its socket turns readable only when the
    server said something: it closed the connection (restart, ``pg_terminate_backend``,
    idle timeout: a goodbye message and EOF) or sent a notice. Only then is the real
    check (an empty query) run; it raises for a dead connection, which the pool then
    replaces. (``ConnectionPool.check_connection`` on every checkout measured 2,988 vs
    3,780 queries/s of the history read.)

    :raises psycopg.OperationalError: the connection is dead.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        readable = select.select([conn.fileno()], [], [], 0)[0]
    except ValueError:  # a descriptor beyond select()'s FD_SETSIZE: ask the server
        readable = True
    if readable:
        ConnectionPool.check_connection(conn)


def _first_expiry(rows: list[dict[str, Any]]) -> float | None:
    """Seconds until the first of ``rows`` (memory entries) expires: a cached copy must
    not outlive it."""
    return min((r["expires_in"] for r in rows if r["expires_in"] is not None), default=None)


def _section_sql(template: str, memory_type: str) -> sql.Composed:
    return sql.SQL(template).format(column=sql.Identifier(SECTION_COLUMNS[memory_type]))


def _escape(content: str, metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Text PostgreSQL cannot store (NUL, lone surrogates) is kept reversibly escaped."""
    if needs_escape(content):
        return escape_text(content), {**metadata, ESCAPE_MARKER: True}
    return content, metadata


def _translate(exc: psycopg.Error, pool_timeout: float) -> DonnaError:
    """One actionable line for a psycopg error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PoolTimeout):
        return DatabaseError(
            f"no database connection within {pool_timeout:g}s: is PostgreSQL running "
            "(`pg_lsclusters`)? is DB_MAX_CONNECTIONS too small for the load?"
        )
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return ConflictError(f"already exists: {text}")
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return NotFoundError(f"refers to a missing row: {text}")
    if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
        return DataError(f"the database rejected the value: {text}")
    return DatabaseError(f"database error: {text}")

"""The PostgreSQL store's field encryption (CRYPTO_ENABLED; docs/security.md).

What is sealed, each with its user's data key and the place it is bound to:

========================================  ==========================================
users.email, users.name                   ``email_sealed`` / ``name_sealed`` (bytea);
                                          the plain columns stay NULL
users.profile, users.preferences          each value, as a sealed JSON string (the keys
                                          stay plain: the mirror rows are found by them)
user_memory.value                         a sealed JSON string
========================================  ==========================================

A value of a profile or preferences key is sealed for its user_memory row's place
(user, memory type, key): the users column and the row are one value kept twice, and
the SQL that keeps them in step copies it without reading it.

A sealed read by id of a user this process has met is the plain store's query: the
data key comes from the keys it holds (donnadb/crypto/keycache.py). A user read by id
not met yet, or read by clerk id, comes with the wrapped key in its row; a memory read
of a user not met yet reads the key by one more query (:meth:`Sealer.opened`). A cached
answer holds ciphertext (and perhaps the wrapped key), never a plaintext. Imported only
when CRYPTO_ENABLED (the ``cryptography`` library is not in the base package yet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from donnadb.config import Settings
from donnadb.crypto import envelope, keyfile, kms
from donnadb.crypto.errors import DecryptError, KeyFileError
from donnadb.crypto.keycache import KeyCache
from donnadb.dal.values import dump_json, load_json
from donnadb.errors import DataError

#: users columns sealed as text, and their bytea column.
TEXT_FIELDS = {"email": "email_sealed", "name": "name_sealed"}
#: The plan's width of users.email and users.name, kept when they are sealed.
TEXT_MAX = 255
#: users JSON columns whose values are sealed one by one.
SECTIONS = ("profile", "preferences")
#: The wrapped key's columns, which the rows of a KEYED read (a user the process has not
#: met yet; postgres_sql) carry, and so may the memory rows in the cache.
KEY_COLUMNS = ("kek_id", "wrapped_key")

T = TypeVar("T")

# The user's wrapped data key, kept in the users row (a bare user has none until its
# first personal value).
SELECT_KEY = "SELECT id::text AS id, kek_id, wrapped_key FROM users WHERE id = %s"
# A key given to a user who has none: one already there (another process's) is kept.
SAVE_KEY = """
UPDATE users SET kek_id = %s, wrapped_key = %s, key_created_at = now()
 WHERE id = %s AND wrapped_key IS NULL
"""


class DataKey:
    """One user's data key, ready to seal and open that user's values."""

    def __init__(self, user_id: str, key: bytes, kek_id: str = "",
                 wrapped: bytes = b"") -> None:
        self.user_id = user_id
        self._key = AESGCM(key)  # made once: a user's values are many
        #: The wrapped form: of a key just made, what :meth:`Sealer.save_key` stores; of
        #: a key read, the row's (a cached sealed write is guarded by it).
        self.kek_id, self.wrapped = kek_id, wrapped

    def __repr__(self) -> str:
        return f"DataKey({self.user_id})"

    def seal_text(self, field: str, value: str | None) -> bytes | None:
        """:raises DataError: longer than the plan's column allows."""
        if value is None:
            return None
        if len(value) > TEXT_MAX:
            raise DataError(f"the database rejected the value: {field} is longer than "
                            f"{TEXT_MAX} characters")
        return envelope.seal(self._key, value.encode(), self._text_place(field))

    def open_text(self, field: str, sealed: bytes | None) -> str | None:
        """:raises DecryptError: altered or moved."""
        if sealed is None:
            return None
        return envelope.open_sealed(self._key, bytes(sealed), self._text_place(field),
                                    f"users.{field} of user {self.user_id}").decode()

    def seal_value(self, memory_type: str, key: str, value: Any) -> str:
        data = dump_json(value)
        data = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        return envelope.to_text(envelope.seal(self._key, data,
                                              self._value_place(memory_type, key)))

    def open_value(self, memory_type: str, key: str, stored: Any) -> Any:
        """:raises DecryptError: not sealed, altered or moved."""
        def what() -> str:
            return f"the {memory_type} value {key!r} of user {self.user_id}"

        data = envelope.open_sealed(self._key, envelope.from_text(stored, what),
                                    self._value_place(memory_type, key), what)
        return load_json(data)

    def seal_section(self, memory_type: str, section: Mapping[str, Any]) -> dict[str, str]:
        return {k: self.seal_value(memory_type, k, v) for k, v in section.items()}

    def open_section(self, memory_type: str, section: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.open_value(memory_type, k, v) for k, v in section.items()}

    def _text_place(self, field: str) -> bytes:
        return envelope.place("users", self.user_id, field)

    def _value_place(self, memory_type: str, key: str) -> bytes:
        return envelope.place("user_memory", self.user_id, memory_type, key)


class Sealer:
    """The store's keys (read once from CRYPTO_KEK_FILE) and what it does with them."""

    def __init__(self, settings: Settings) -> None:
        """:raises KeyFileError: CRYPTO_KEK_FILE unset, unreadable, open to others or
        malformed."""
        if settings.crypto_kek_file is None:
            raise KeyFileError("CRYPTO_ENABLED is on but CRYPTO_KEK_FILE is not set: point "
                               "it at the key file (`donnactl keys init` makes one)")
        self._path = settings.crypto_kek_file
        # A KMS-sealed key file is opened here, once per process (and again only for a
        # KEK added since): no sealed read or write waits on KMS.
        self._seal = kms.seal_of(settings)
        self.keys = keyfile.load(self._path, self._seal)
        # Unwrapped data keys by user (donnadb/crypto/keycache.py): a read or a write of
        # a user met lately unwraps nothing.
        self._cache: KeyCache[DataKey] = KeyCache()

    def new_key(self, user_id: str) -> DataKey:
        """A new data key for a user about to be inserted (then :meth:`save_key`)."""
        kek_id, wrapped, dek = envelope.wrap(self.keys, user_id)
        dk = DataKey(user_id, dek, kek_id, wrapped)
        # Cached before it is stored: if the insert never commits, no row carries this
        # wrapped key, so no read matches it and a write guarded by it writes nothing.
        self._cache.put(user_id, wrapped, dk)
        return dk

    def cached_key(self, user_id: str) -> DataKey | None:
        """The user's data key if this process holds it, unverified: write with it only
        guarded by its ``wrapped`` (the row may have been re-wrapped, or the user erased
        and made again with another key), and :meth:`drop_key` it when the guard fails."""
        return self._cache.get(user_id)

    def drop_key(self, dk: DataKey) -> None:
        """Forget a cached key found stale (its wrapped form is no longer the user's)."""
        self._cache.drop(dk.user_id, dk.wrapped)

    @staticmethod
    def save_key(conn, dk: DataKey) -> None:
        """Store a key of :meth:`new_key`, after its user's row, in the same transaction."""
        conn.execute(SAVE_KEY, (dk.kek_id, dk.wrapped, dk.user_id))

    def key_for_write(self, conn, user_id: str) -> DataKey | None:
        """The user's data key, made now if the user has none yet (a bare user, or one
        written before encryption was on); None when there is no such user. Call it
        inside the write's transaction."""
        row = conn.execute(SELECT_KEY, (user_id,)).fetchone()
        if row is None:
            return None
        if row["wrapped_key"] is None:
            conn.execute(SAVE_KEY, (*envelope.wrap(self.keys, user_id)[:2], user_id))
            row = conn.execute(SELECT_KEY, (user_id,)).fetchone()
            if row is None or row["wrapped_key"] is None:
                return None
        return self.key_of(user_id, row["kek_id"], row["wrapped_key"])

    def key_of(self, user_id: str, kek_id: str | None, wrapped: Any) -> DataKey:
        """The data key from a row's ``kek_id`` and ``wrapped_key`` (bytes, or hex text
        as the cached rows hold it).

        :raises DecryptError: the user has no data key (erased, or never made while the
            row holds sealed values).
        :raises KeyFileError: its KEK is not in the key file.
        """
        if wrapped is None or kek_id is None:
            self._cache.drop(user_id)  # erased by another process
            raise DecryptError(f"user {user_id} has sealed values but no data key: it "
                               "was erased (`users forget`), so they cannot be read")
        raw = bytes.fromhex(wrapped) if isinstance(wrapped, str) else bytes(wrapped)
        cached = self._cache.get(user_id, raw)
        if cached is not None:
            return cached
        try:
            dek = envelope.unwrap(self.keys, user_id, kek_id, raw)
        except KeyFileError:
            # A KEK added since this process read the file (`keys add-kek`, then `keys
            # rotate` while the application runs): read it again, once per such key.
            fresh = keyfile.load(self._path, self._seal)
            if fresh.kek(kek_id) is None:
                raise
            self.keys = fresh
            dek = envelope.unwrap(fresh, user_id, kek_id, raw)
        # Replaces a key cached from another wrapped form: the same data key re-wrapped
        # (rotation), or the old key of a user erased and made again.
        dk = DataKey(user_id, dek, kek_id, raw)
        self._cache.put(user_id, raw, dk)
        return dk

    def lookup_hash(self, email: str | None) -> bytes | None:
        return envelope.lookup_hash(self.keys, email)

    def user_columns(self, dk: DataKey, user: Mapping[str, Any]) -> dict[str, Any]:
        """The sealed columns for the personal fields present in ``user``: email and name
        go to their bytea columns (the plain ones get NULL), with email_hmac."""
        out: dict[str, Any] = {}
        for field, column in TEXT_FIELDS.items():
            if field in user:
                out[field] = None
                out[column] = dk.seal_text(field, user[field])
        if "email" in user:
            out["email_hmac"] = self.lookup_hash(user["email"])
        for section in SECTIONS:
            if section in user:
                out[section] = dk.seal_section(section, user[section] or {})
        return out

    def opened(self, user_id: str, read_key: Callable[[], Mapping[str, Any] | None],
               open_with: Callable[[DataKey], T]) -> T:
        """``open_with(dk)`` with the user's data key: the one this process holds, else
        the stored one (``read_key()``: the user's ``kek_id`` and ``wrapped_key``, or
        None).

        A held key that does not open the values is dropped and the stored key read: the
        user may have been erased and made again with a new key since it was cached (a
        re-wrapped key still opens: rotation keeps the data key).

        :raises DecryptError: a value does not open with the stored key either, or the
            user has no data key (erased).
        :raises KeyFileError: its KEK is not in the key file.
        """
        held = self._cache.get(user_id)
        if held is not None:
            try:
                return open_with(held)
            except DecryptError:
                self._cache.drop(user_id, held.wrapped)
        row = read_key()
        kek_id, wrapped = (row["kek_id"], row["wrapped_key"]) if row else (None, None)
        return open_with(self.key_of(user_id, kek_id, wrapped))

    def open_user(self, row: dict[str, Any] | None,
                  read_key: Callable[[], Mapping[str, Any] | None]) -> dict[str, Any] | None:
        """A users row read with its sealed columns (and perhaps the wrapped key), as the
        DAL returns it (those columns removed); ``read_key`` as :meth:`opened`, unless
        the row carries the key.

        :raises DecryptError: a value does not open, or a plain personal value is
            stored (written in clear, or planted).
        """
        if row is None:
            return None
        read_key = _joined_key(row, read_key)
        for column in KEY_COLUMNS:
            row.pop(column, None)
        sealed = {f: row.pop(c) for f, c in TEXT_FIELDS.items()}
        user_id = row["id"]
        for field in TEXT_FIELDS:
            if row[field] is not None:
                raise DecryptError(f"users.{field} of user {user_id} is stored in clear "
                                   "while CRYPTO_ENABLED is on")
        if all(v is None for v in sealed.values()) and not any(row[s] for s in SECTIONS):
            return row  # nothing personal stored yet (a bare user)

        def open_with(dk: DataKey) -> dict[str, Any]:
            return {**{f: dk.open_text(f, sealed[f]) for f in TEXT_FIELDS},
                    **{s: dk.open_section(s, row[s]) for s in SECTIONS}}

        row.update(self.opened(user_id, read_key, open_with))
        return row

    def open_memory(self, user_id: str, rows: list[dict[str, Any]],
                    read_key: Callable[[], Mapping[str, Any] | None],
                    memory_type: str | None = None) -> list[dict[str, Any]]:
        """Memory rows with their values opened (new dicts: cached ones stay sealed);
        ``read_key`` as :meth:`opened`, unless the rows carry the key."""
        if not rows:
            return []
        read_key = _joined_key(rows[0], read_key)

        def open_with(dk: DataKey) -> list[dict[str, Any]]:
            return [{**{k: v for k, v in row.items() if k not in KEY_COLUMNS},
                     "value": dk.open_value(memory_type or row["memory_type"], row["key"],
                                            row["value"])}
                    for row in rows]

        return self.opened(user_id, read_key, open_with)


def _joined_key(row: dict[str, Any], read_key: Callable[[], Mapping[str, Any] | None]
                ) -> Callable[[], Mapping[str, Any] | None]:
    """The row's own wrapped key when its query joined it (None there: the user has
    none), else ``read_key``."""
    if "wrapped_key" not in row:
        return read_key
    key = {c: row[c] for c in KEY_COLUMNS}
    return lambda: key if key["wrapped_key"] is not None else None


__all__ = ["DataKey", "DecryptError", "KeyFileError", "Sealer", "count_plain_users",
           "is_sealed", "seal_plain_rows"]


# Users with a personal value in clear: written with encryption off (the legacy import,
# a store before CRYPTO_ENABLED). A sealed JSON value is a string with the envelope's
# prefix; the batch's users are locked, SKIP LOCKED lets two runs share the work.
PLAIN_VALUE = ("NOT (jsonb_typeof({v}) = 'string' AND "
               f"starts_with({{v}} #>> '{{{{}}}}', '{envelope.TEXT_PREFIX}'))")
PLAIN_USER = f"""
       u.email IS NOT NULL OR u.name IS NOT NULL
    OR EXISTS (SELECT 1 FROM jsonb_each(u.profile) AS e WHERE {PLAIN_VALUE.format(v="e.value")})
    OR EXISTS (SELECT 1 FROM jsonb_each(u.preferences) AS e
                WHERE {PLAIN_VALUE.format(v="e.value")})
    OR EXISTS (SELECT 1 FROM user_memory AS m
                WHERE m.user_id = u.id AND {PLAIN_VALUE.format(v="m.value")})
"""
PLAIN_USERS_SQL = f"""
SELECT u.id::text AS id, u.email, u.name, u.profile, u.preferences
  FROM users AS u
 WHERE {PLAIN_USER}
 ORDER BY u.id
 LIMIT %s
   FOR UPDATE OF u SKIP LOCKED
"""
COUNT_PLAIN_USERS_SQL = f"SELECT count(*) FROM users AS u WHERE {PLAIN_USER}"
PLAIN_MEMORY_SQL = f"""
SELECT memory_type, key, value FROM user_memory
 WHERE user_id = %s AND {PLAIN_VALUE.format(v="value")}
"""
SEAL_USER_SQL = """
UPDATE users SET email = NULL, name = NULL,
       email_sealed = COALESCE(%(email_sealed)s, email_sealed),
       name_sealed = COALESCE(%(name_sealed)s, name_sealed),
       email_hmac = COALESCE(%(email_hmac)s, email_hmac),
       profile = %(profile)s, preferences = %(preferences)s
 WHERE id = %(id)s
"""
SEAL_MEMORY_SQL = """
UPDATE user_memory SET value = %(value)s
 WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s AND key = %(key)s
"""


def seal_plain_rows(settings: Settings, *, dbname: str | None = None, batch: int = 200,
                    sealed: Callable[[list[str]], object] | None = None) -> int:
    """Seal every personal value stored in clear (rows written with encryption off), a
    batch of users per transaction; how many users were changed. Run it again after an
    interruption. ``sealed(user_ids)`` is told after each batch's commit (the caller
    drops their cached values).

    :raises KeyFileError: no usable key file.
    :raises DatabaseError: the database cannot be reached.
    """
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb

    from donnadb import db

    sealer = Sealer(settings)
    done = 0
    with db.connection("app", settings=settings, dbname=dbname) as conn:
        conn.row_factory = dict_row
        while True:
            with conn.transaction():
                users = conn.execute(PLAIN_USERS_SQL, (batch,)).fetchall()
                for user in users:
                    _seal_user(conn, sealer, user, Jsonb)
            if not users:
                return done
            done += len(users)
            if sealed is not None:
                sealed([u["id"] for u in users])


def count_plain_users(settings: Settings, *, dbname: str | None = None) -> int:
    """How many users have a personal value in clear (what :func:`seal_plain_rows` would
    seal): the deploy seals when this is not 0, and `keys status` shows it.

    :raises DatabaseError: the database cannot be reached.
    """
    from donnadb import db

    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        return conn.execute(COUNT_PLAIN_USERS_SQL).fetchone()[0]


def _seal_user(conn, sealer: Sealer, user: dict[str, Any], jsonb) -> None:
    dk = sealer.key_for_write(conn, user["id"])
    cols = {"email_sealed": None, "name_sealed": None, "email_hmac": None}
    if user["email"] is not None or user["name"] is not None:
        cols = sealer.user_columns(dk, {f: user[f] for f in TEXT_FIELDS
                                        if user[f] is not None})
    for section in SECTIONS:
        cols[section] = jsonb({k: v if is_sealed(v) else dk.seal_value(section, k, v)
                               for k, v in user[section].items()})
    conn.execute(SEAL_USER_SQL, {"email_sealed": None, "name_sealed": None,
                                 "email_hmac": None, **cols, "id": user["id"]})
    for row in conn.execute(PLAIN_MEMORY_SQL, (user["id"],)).fetchall():
        conn.execute(SEAL_MEMORY_SQL, {
            "user_id": user["id"], "memory_type": row["memory_type"], "key": row["key"],
            "value": jsonb(dk.seal_value(row["memory_type"], row["key"], row["value"]))})


def is_sealed(value: Any) -> bool:
    """``value`` (a JSON value read from a sealed column) holds a sealed value."""
    return isinstance(value, str) and value.startswith(envelope.TEXT_PREFIX)

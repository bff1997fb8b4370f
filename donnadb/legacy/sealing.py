"""Field encryption (CRYPTO_ENABLED) on the legacy path: the import writes users and
memory sealed, verify and export open them (docs/security.md, "Field encryption").

The import seals exactly as the DAL does (:mod:`donnadb.dal.sealed`: one data key per
user, e-mail and name in their bytea columns with ``email_hmac``, each profile,
preferences and memory value a sealed JSON string), inside the batch's transaction, the
data key of a new user included: no personal value reaches a table, the WAL or a backup
in clear, and a killed batch leaves neither rows nor a key behind.

Sealing draws a random nonce, so one value sealed twice gives two ciphertexts, while the
import finds what changed by comparing the staged rows with the stored ones in SQL. So
every stored value is opened and compared with the file's first: where they are equal,
the stored ciphertext (or a value stored in clear before encryption was on) is staged
again. A replay then stages the stored rows as they are and writes nothing; a value that
differs is sealed anew and is a change, or a conflict, exactly as in clear.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from donnadb.config import Settings
from donnadb.crypto.errors import DecryptError
from donnadb.dal.sealed import SECTIONS, TEXT_FIELDS, DataKey, Sealer, is_sealed
from donnadb.errors import ConfigError, DataError
from donnadb.legacy.model import UserRow
from donnadb.legacy.normalise import canon

# The batch's users as stored, with their wrapped data key; locked, so that what was
# compared is what the upsert replaces or keeps (the app waits for the batch's commit).
STORED_USERS = """
SELECT u.id, u.clerk_id, u.email, u.name, u.email_sealed, u.name_sealed, u.email_hmac,
       u.profile, u.preferences, u.kek_id, u.wrapped_key
  FROM users AS u
 WHERE u.clerk_id = ANY(%(clerks)s::text[]) OR u.id = ANY(%(ids)s::uuid[])
 ORDER BY u.id
   FOR UPDATE OF u
"""
STORED_MEMORY = """
SELECT user_id, memory_type, key, value FROM user_memory WHERE user_id = ANY(%s::uuid[])
"""
SAVED_KEYS = "SELECT id, wrapped_key FROM users WHERE id = ANY(%s::uuid[])"

#: A stored value that does not open: never equal to the file's.
_UNREADABLE = object()


def sealer_for(settings: Settings) -> Sealer | None:
    """The key file's keys when CRYPTO_ENABLED is on, else None.

    :raises KeyFileError: CRYPTO_KEK_FILE unset, unreadable, open to others or malformed
        (checked before the import, verify or export touches anything).
    """
    return Sealer(settings) if settings.crypto_enabled else None


@dataclass
class SealedUser:
    """One user of a batch as the import stages it with encryption on."""

    #: The users columns: email and name (NULL unless kept in clear), email_sealed,
    #: name_sealed, email_hmac, profile, preferences.
    columns: dict[str, Any]
    #: The staged value of each memory row, by (memory type, key).
    memory: dict[tuple[str, str], Any]
    #: The data key made for a user who had none (saved after the user's row).
    new_key: DataKey | None = None


def seal_users(conn, sealer: Sealer, users: list[UserRow]) -> dict[uuid.UUID, SealedUser]:
    """The batch's users sealed, by their :attr:`UserRow.id`; in the batch's transaction.

    A stored user keeps its data key; a new user, or a stored one without a key, gets a
    new one, which :func:`save_new_keys` stores after the users upsert.

    :raises KeyFileError: a stored data key's KEK is not in the key file.
    :raises DecryptError: a stored data key does not unwrap (altered, or another user's).
    """
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(STORED_USERS, {
        "clerks": [u.clerk_id for u in users if u.clerk_id is not None],
        "ids": [u.id for u in users if u.clerk_id is None]}).fetchall()
    by_clerk = {r["clerk_id"]: r for r in rows if r["clerk_id"] is not None}
    by_id = {r["id"]: r for r in rows}
    memory: dict[uuid.UUID, dict[tuple[str, str], Any]] = {}
    for r in cur.execute(STORED_MEMORY, ([r["id"] for r in rows],)):
        memory.setdefault(r["user_id"], {})[(r["memory_type"], r["key"])] = r["value"]
    out = {}
    for user in users:
        stored = by_clerk.get(user.clerk_id) if user.clerk_id is not None \
            else by_id.get(user.id)
        out[user.id] = _seal_user(sealer, user, stored,
                                  memory.get(stored["id"], {}) if stored else {})
    return out


def _seal_user(sealer: Sealer, user: UserRow, stored: Mapping[str, Any] | None,
               stored_memory: Mapping[tuple[str, str], Any]) -> SealedUser:
    """Sealed for the user's id in the database: the stored row's (the app may have made
    the user first, under another id than the import's), else the import's."""
    new_key = None
    if stored is None or stored["wrapped_key"] is None:
        # A new user, or one stored without a key (bare, or written in clear): no one
        # else can give it one meanwhile, as its row is locked (STORED_USERS).
        dk = new_key = sealer.new_key(str(stored["id"] if stored else user.id))
    else:
        dk = sealer.key_of(str(stored["id"]), stored["kek_id"], stored["wrapped_key"])
    sections = {"profile": user.profile, "preferences": user.preferences}
    cols = sealer.user_columns(dk, {"email": user.email, "name": user.name, **sections})
    if stored is not None:
        _keep_equal_columns(dk, cols, user, stored)
    memory: dict[tuple[str, str], Any] = {}
    for m in user.memory:
        place = (m.memory_type, m.key)
        if place in stored_memory and \
                _same(_stored_value(dk, *place, stored_memory[place]), m.value):
            memory[place] = stored_memory[place]
        elif m.memory_type in sections and m.key in cols[m.memory_type] and \
                _same(sections[m.memory_type][m.key], m.value):
            # The users column's copy of the same value, as the DAL keeps them.
            memory[place] = cols[m.memory_type][m.key]
        else:
            memory[place] = dk.seal_value(m.memory_type, m.key, m.value)
    return SealedUser(cols, memory, new_key)


def _keep_equal_columns(dk: DataKey, cols: dict[str, Any], user: UserRow,
                        stored: Mapping[str, Any]) -> None:
    """Put back in ``cols`` the stored form of every value the file has unchanged."""
    for name, column in TEXT_FIELDS.items():
        if _same(_stored_text(dk, stored, name), getattr(user, name)):
            cols[name], cols[column] = stored[name], stored[column]
            if name == "email":
                cols["email_hmac"] = stored["email_hmac"]
    for section in SECTIONS:
        old = stored[section] or {}
        cols[section] = {
            k: old[k] if k in old and _same(_stored_value(dk, section, k, old[k]), v)
            else cols[section][k]
            for k, v in getattr(user, section).items()}


def _stored_text(dk: DataKey, stored: Mapping[str, Any], name: str) -> Any:
    if stored[name] is not None:
        return stored[name]  # stored in clear, before encryption was on
    try:
        return dk.open_text(name, stored[TEXT_FIELDS[name]])
    except DecryptError:
        return _UNREADABLE


def _stored_value(dk: DataKey, memory_type: str, key: str, value: Any) -> Any:
    if not is_sealed(value):
        return value
    try:
        return dk.open_value(memory_type, key, value)
    except DecryptError:
        return _UNREADABLE


def _same(stored: Any, incoming: Any) -> bool:
    return stored is not _UNREADABLE and canon(stored) == canon(incoming)


def save_new_keys(conn, sealer: Sealer, users: Iterable[SealedUser]) -> None:
    """Store the data keys made for the batch's users, after their rows (same
    transaction).

    :raises DataError: a user got another key meanwhile (another import of the same
        user at the same time): the batch rolls back, and a re-run resumes.
    """
    new = [u.new_key for u in users if u.new_key is not None]
    for dk in new:
        sealer.save_key(conn, dk)
    if not new:
        return
    saved = dict(conn.execute(SAVED_KEYS, ([dk.user_id for dk in new],)).fetchall())
    for dk in new:
        if bytes(saved.get(uuid.UUID(dk.user_id), b"")) != dk.wrapped:
            raise DataError(f"user {dk.user_id} was given another data key while this "
                            "batch ran (two imports at once?): run the import again")


@dataclass
class Opened:
    """A user's personal fields as verify and export compare and write them."""

    email: str | None
    name: str | None
    profile: dict[str, Any]
    preferences: dict[str, Any]
    #: A personal value is stored in clear although CRYPTO_ENABLED is on.
    in_clear: bool = False


class Opener:
    """Opens the sealed values verify and export read (rows carrying the user's
    ``kek_id`` and ``wrapped_key``). Without a sealer (CRYPTO_ENABLED off) values pass
    as they are, and a user whose values are sealed is refused."""

    def __init__(self, sealer: Sealer | None) -> None:
        self.sealer = sealer

    def user(self, user_id: Any, email: str | None, name: str | None,
             email_sealed: bytes | None, name_sealed: bytes | None,
             profile: dict[str, Any], preferences: dict[str, Any], kek_id: str | None,
             wrapped: bytes | None) -> Opened:
        """:raises DecryptError: a sealed value does not open (the user's data key was
            erased, or the value altered).
        :raises ConfigError: sealed values while CRYPTO_ENABLED is off."""
        texts = {"email": email_sealed, "name": name_sealed}
        sections = {"profile": profile or {}, "preferences": preferences or {}}
        sealed = any(v is not None for v in texts.values()) or any(
            is_sealed(v) for section in sections.values() for v in section.values())
        if self.sealer is None:
            # A plain value may start like a sealed one: with a data key it is not plain.
            if any(v is not None for v in texts.values()) or sealed and kek_id is not None:
                raise _needs_key(user_id)
            return Opened(email, name, profile, preferences)
        opened = Opened(email, name, {}, {}, in_clear=email is not None or name is not None)
        dk = self._key(user_id, kek_id, wrapped) if sealed else None
        for text, value in texts.items():
            if value is not None:
                setattr(opened, text, dk.open_text(text, value))
        for section, values in sections.items():
            for k, v in values.items():
                if is_sealed(v):
                    getattr(opened, section)[k] = dk.open_value(section, k, v)
                else:
                    getattr(opened, section)[k] = v
                    opened.in_clear = True
        return opened

    def memory(self, user_id: Any, memory_type: str, key: str, value: Any,
               kek_id: str | None, wrapped: bytes | None) -> tuple[Any, bool]:
        """(the value, whether it is stored in clear although CRYPTO_ENABLED is on).

        :raises DecryptError, ConfigError: as :meth:`user`."""
        if self.sealer is None:
            if kek_id is not None and is_sealed(value):
                raise _needs_key(user_id)
            return value, False
        if not is_sealed(value):
            return value, True
        return self._key(user_id, kek_id, wrapped).open_value(memory_type, key, value), False

    def _key(self, user_id: Any, kek_id: str | None, wrapped: bytes | None) -> DataKey:
        """:raises DecryptError: the user has no data key (erased). Unwrapped once per
        user: the Sealer keeps the keys it unwrapped (donnadb/crypto/keycache.py)."""
        return self.sealer.key_of(str(user_id), kek_id, wrapped)


def _needs_key(user_id: Any) -> ConfigError:
    return ConfigError(f"user {user_id}'s personal values are sealed (field encryption): "
                       "set CRYPTO_ENABLED=true and CRYPTO_KEK_FILE to the key file")

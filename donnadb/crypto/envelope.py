"""Sealed values and wrapped data keys: AES-256-GCM envelopes bound to their place.

Envelope (version 1)::

    0x01 | nonce (12 random bytes) | ciphertext | tag (16 bytes)

stored as it is in a bytea column, or as the JSON string ``"$dnc1$" + base64(envelope)``
in a jsonb one. The associated data (authenticated, not stored) names the value's place:
table, row and field (:func:`place`). A value copied to another row or field, or
another user's, does not open: its place differs, and so does its user's data key.

A data key (one per user, 32 random bytes) is wrapped the same way by a KEK, its
place being ``user_keys``, the user's id and the KEK's id. (``user_keys`` was the key's
table; the key is now a column of users, and the name stays in the place so that every
key wrapped before still unwraps.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from donnadb.crypto.errors import DecryptError, KeyFileError
from donnadb.crypto.keyfile import KeySet

VERSION = b"\x01"
NONCE_BYTES = 12
#: Marks a sealed value inside a JSON string (a plain string never opens as one).
TEXT_PREFIX = "$dnc1$"
WRAPPED_BYTES = 1 + NONCE_BYTES + 32 + 16


def place(*parts: str) -> bytes:
    """Associated data naming a value's place: each part length-prefixed, so no two
    lists of parts give the same bytes."""
    out = bytearray(b"donnadb-field-v1")
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def seal(key: bytes | AESGCM, plaintext: bytes, where: bytes) -> bytes:
    """``key``: the key, or an AESGCM made from it once (a data key's many values)."""
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + nonce + aead.encrypt(nonce, plaintext, where)


def open_sealed(key: bytes | AESGCM, envelope: bytes, where: bytes,
                what: str | Callable[[], str]) -> bytes:
    """The plaintext of ``envelope``; ``key`` as :func:`seal`.

    :raises DecryptError: not a version-1 envelope, or it fails authentication (altered,
        or sealed for another place or with another key); ``what`` names it (or makes
        the name, when the error happens: the hot path builds no string).
    """
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    if envelope[:1] != VERSION or len(envelope) < 1 + NONCE_BYTES + 16:
        raise DecryptError(f"{_name(what)} is not a sealed value of a known version")
    try:
        return aead.decrypt(envelope[1:1 + NONCE_BYTES], envelope[1 + NONCE_BYTES:], where)
    except InvalidTag:
        raise DecryptError(f"{_name(what)} does not decrypt with its user's data key: it "
                           "was altered or moved from another row or field") from None


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def to_text(envelope: bytes) -> str:
    return TEXT_PREFIX + base64.b64encode(envelope).decode("ascii")


def from_text(value: object, what: str | Callable[[], str]) -> bytes:
    """The envelope inside a JSON value read from a sealed column.

    :raises DecryptError: the value is not a sealed one (written in clear).
    """
    if isinstance(value, str) and value.startswith(TEXT_PREFIX):
        try:
            return base64.b64decode(value[len(TEXT_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            pass
    raise DecryptError(f"{_name(what)} is not sealed (written in clear, or altered) while "
                       "CRYPTO_ENABLED is on")


def wrap(keys: KeySet, user_id: str) -> tuple[str, bytes, bytes]:
    """A new data key for ``user_id``: (KEK id, wrapped key, the key)."""
    dek = AESGCM.generate_key(bit_length=256)
    kek = keys.current
    return kek.kek_id, seal(kek.secret, dek, place("user_keys", user_id, kek.kek_id)), dek


def unwrap(keys: KeySet, user_id: str, kek_id: str, wrapped: bytes) -> bytes:
    """The data key of ``user_id``.

    :raises KeyFileError: the key file lacks KEK ``kek_id`` (a wrong, old or rotated-away
        key file).
    :raises DecryptError: the wrapped key was altered or belongs to another user.
    """
    kek = keys.kek(kek_id)
    if kek is None:
        raise KeyFileError(f"user {user_id}'s data key is wrapped by KEK {kek_id}, which "
                           f"the key file does not hold (it has {_ids(keys)}): wrong key "
                           "file, or a KEK removed before `keys rotate` finished; restore "
                           "it from escrow")
    return open_sealed(kek.secret, bytes(wrapped), place("user_keys", user_id, kek_id),
                       f"the data key of user {user_id}")


def rewrap(keys: KeySet, user_id: str, kek_id: str, wrapped: bytes) -> tuple[str, bytes]:
    """The data key of ``user_id`` wrapped by the current KEK instead: (KEK id, wrapped).

    :raises KeyFileError, DecryptError: as :func:`unwrap`.
    """
    dek = unwrap(keys, user_id, kek_id, wrapped)
    kek = keys.current
    return kek.kek_id, seal(kek.secret, dek, place("user_keys", user_id, kek.kek_id))


def lookup_hash(keys: KeySet, email: str | None) -> bytes | None:
    """HMAC-SHA256 of an e-mail for look-ups: trimmed and case-folded first, so
    ``Ann@Example.org`` finds ``ann@example.org``."""
    if email is None:
        return None
    return hmac.new(keys.lookup, email.strip().casefold().encode("utf-8", "surrogatepass"),
                    hashlib.sha256).digest()


def _ids(keys: KeySet) -> str:
    return ", ".join(k.kek_id for k in keys.keks)

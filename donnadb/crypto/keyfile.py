"""The key file (CRYPTO_KEK_FILE): the key encryption keys and the e-mail lookup key.

A text file, mode 0600, owned by the application's OS user, never in the database or
its backups. One key a line, a purpose then 32 random bytes in base64::

    kek 3q2+7w...=        wraps new data keys: the FIRST kek line
    kek Zm9vYmFy...=      an older KEK: unwraps only (kept until `keys rotate` is done)
    lookup q83vEj...=     the HMAC key of users.email_hmac (exactly one)

A KEK is known by its id, 16 hex characters of a hash of the key (not the key): a
wrapped data key records the id of its KEK, so a missing or wrong key file is named in
one line. The lookup key is a secret of its own, not derived from a KEK, so that a KEK
rotation leaves every email_hmac valid; replacing it means recomputing the column.
Lines starting with ``#`` and blank lines are ignored.

With CRYPTO_KMS_KEY_ID set, the file is written sealed by that KMS key
(donnadb/crypto/kms.py) and every read asks KMS to open it; a sealed file is refused,
with the setting to fix named, where no KMS key is set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from donnadb.crypto import kms
from donnadb.crypto.errors import KeyFileError
from donnadb.dal.fileio import name_path, write_new

KEY_BYTES = 32
HEADER = ("# donnadb field-encryption keys (docs/security.md): keep a copy in escrow;\n"
          "# the first kek line wraps new data keys, every kek line unwraps.\n")


@dataclass(frozen=True)
class Kek:
    """A key encryption key and its id."""

    kek_id: str
    secret: bytes = b""

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Kek({self.kek_id})"


@dataclass(frozen=True)
class KeySet:
    """What a key file holds: KEKs, the current (first) one first, and the lookup key."""

    keks: tuple[Kek, ...]
    lookup: bytes
    #: The KMS key that sealed the file it was read from (None: the file is in clear).
    sealed_by: str | None = field(default=None, compare=False)

    @property
    def current(self) -> Kek:
        return self.keks[0]

    def kek(self, kek_id: str) -> Kek | None:
        return next((k for k in self.keks if k.kek_id == kek_id), None)

    def __repr__(self) -> str:
        return f"KeySet({', '.join(k.kek_id for k in self.keks)})"


def kek_id_of(secret: bytes) -> str:
    return hashlib.sha256(b"donnadb-field-kek-id:" + secret).hexdigest()[:16]


def load(path: Path, seal: kms.KmsSeal | None = None) -> KeySet:
    """The keys of ``path`` (opened through ``seal`` when the file is KMS-sealed).

    :raises KeyFileError: missing, not a regular file, readable or writable by group or
        others, malformed, no kek line, or not exactly one lookup line; sealed by KMS
        with no ``seal`` given, or KMS did not open it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"cannot open the key file {path} ({exc.strerror}): restore it "
                           "from escrow, or set CRYPTO_KEK_FILE") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(f"key file {path} is open to group or others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
        try:
            raw = fh.read(64 * 1024)
        except OSError as exc:  # a failing disk: say which file
            name_path(exc, path)
            raise
    sealed_by = kms.sealed_by(raw)
    if sealed_by is not None:
        if seal is None:
            raise KeyFileError(f"key file {path} is sealed by KMS key {sealed_by}: set "
                               "CRYPTO_KMS_KEY_ID (and CRYPTO_KMS_REGION or "
                               "CRYPTO_KMS_ENDPOINT_URL) to open it")
        raw = seal.open(raw, path)
    keks: list[Kek] = []
    lookups: list[bytes] = []
    for n, line in enumerate(raw.decode("ascii", "replace").splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        secret = _secret(words[1]) if len(words) == 2 else None
        if words[0] not in ("kek", "lookup") or secret is None:
            raise KeyFileError(f"key file {path} line {n} is not 'kek <key>' or "
                               "'lookup <key>' (32 bytes in base64)")
        if words[0] == "kek":
            keks.append(Kek(kek_id_of(secret), secret))
        else:
            lookups.append(secret)
    if not keks or len(lookups) != 1:
        raise KeyFileError(f"key file {path} needs at least one kek line and exactly one "
                           f"lookup line (has {len(keks)} and {len(lookups)})")
    return KeySet(tuple(keks), lookups[0], sealed_by)


def _secret(text: str) -> bytes | None:
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return secret if len(secret) == KEY_BYTES else None


def generate(path: Path, seal: kms.KmsSeal | None = None) -> KeySet:
    """Write a new key file (one KEK, one lookup key) at ``path``, mode 0600, sealed by
    ``seal`` when given.

    :raises KeyFileError: the file exists already (it is never overwritten), or its
        folder does not; KMS refused to seal it (nothing is written).
    :raises OSError: the write failed (a full disk): no file is left, so `keys init`
        can run again.
    """
    keys = KeySet((_new_kek(),), secrets.token_bytes(KEY_BYTES))
    _write_new_file(path, _content(keys, seal), "add a KEK with `donnactl keys add-kek`",
                    "or set CRYPTO_KEK_FILE")
    return keys


def write_clear_copy(keys: KeySet, out: Path) -> None:
    """Write ``keys`` in clear to the new file ``out``, mode 0600: the escrow copy of a
    KMS-sealed file, which opens the data without the KMS key.

    :raises KeyFileError: ``out`` exists (never overwritten) or its folder does not.
    :raises OSError: the write failed (a full disk): no file is left.
    """
    _write_new_file(out, _content(keys, None), "choose a new name", "")


def _write_new_file(path: Path, content: bytes, exists_hint: str, folder_hint: str) -> None:
    try:
        write_new(path, content, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: it is never overwritten ({exists_hint})") \
            from None
    except FileNotFoundError:
        raise KeyFileError(f"cannot create the key file {path}: its folder does not "
                           f"exist; create it (0700){' ' + folder_hint if folder_hint else ''}"
                           ) from None


def add_kek(path: Path, seal: kms.KmsSeal | None = None) -> Kek:
    """Put a new KEK on top of ``path`` (it wraps new data keys from now on; the others
    stay to unwrap). The file is replaced atomically, mode 0600, sealed by ``seal`` when
    given.

    :raises KeyFileError: as :func:`load`.
    """
    keys = load(path, seal)
    kek = _new_kek()
    _replace(path, KeySet((kek, *keys.keks), keys.lookup), seal)
    return kek


def drop_kek(path: Path, kek_id: str, seal: kms.KmsSeal | None = None) -> None:
    """Remove an old KEK from ``path`` (the caller checked that no data key needs it).

    :raises KeyFileError: no such KEK, or it is the only one.
    """
    keys = load(path, seal)
    kept = tuple(k for k in keys.keks if k.kek_id != kek_id)
    if len(kept) == len(keys.keks) or not kept:
        raise KeyFileError(f"key file {path} has no other KEK than {kek_id}, or none "
                           f"with that id")
    _replace(path, KeySet(kept, keys.lookup), seal)


def seal_with(path: Path, seal: kms.KmsSeal) -> tuple[str | None, str]:
    """Write ``path`` again sealed by ``seal``'s key, the same keys inside: a file in
    clear, or one sealed by another KMS key (read through the key its header names).
    Nothing is written when it is sealed by that key already.

    :returns: the KMS key that sealed it before (None: in clear) and the one now.
    :raises KeyFileError: as :func:`load`; KMS refused to seal (the file is unchanged).
    """
    keys = load(path, seal)
    target = seal.arn()
    if keys.sealed_by != target:
        _replace(path, keys, seal)
    return keys.sealed_by, target


def _new_kek() -> Kek:
    secret = secrets.token_bytes(KEY_BYTES)
    return Kek(kek_id_of(secret), secret)


def _text(keys: KeySet) -> str:
    lines = [f"kek {base64.b64encode(k.secret).decode()}" for k in keys.keks]
    lines.append(f"lookup {base64.b64encode(keys.lookup).decode()}")
    return HEADER + "\n".join(lines) + "\n"


def _content(keys: KeySet, seal: kms.KmsSeal | None) -> bytes:
    text = _text(keys).encode("ascii")
    return seal.seal(text) if seal is not None else text


def _replace(path: Path, keys: KeySet, seal: kms.KmsSeal | None = None) -> None:
    content = _content(keys, seal)  # KMS asked before anything is written
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

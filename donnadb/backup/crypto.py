"""Client-side encryption of backup files: AES-256-GCM in authenticated chunks.

The key never enters the repository, the manifest or S3: it lives in
BACKUP_ENCRYPTION_KEY_FILE (root, 0600), one key per line as 64 hex characters. The
FIRST line encrypts new backups; every line can decrypt, so rotating a key is
"add the new key on top, keep the old ones until their backups are pruned". Each
key has an id (a hash of the key, not the key) recorded in the manifest, so a
missing or wrong key is named in one clear error before anything is restored.

File format: ``DONNAENC2`` | key id (8 bytes) | nonce prefix (8 bytes), then chunks
``length (4 bytes) | ciphertext+tag`` of up to 1 MiB of plaintext each. Chunk ``i``
uses nonce ``prefix | i`` and authenticates the header, the file's place (backup id
and path inside the backup), ``i`` and a last-chunk flag, so reordered, dropped,
truncated or altered chunks, and whole files moved to another path or another backup,
all fail to decrypt. ``DONNAENC1`` files (no place bound) are still read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from donnadb.backup.errors import BackupCorrupt, BackupError
from donnadb.dal.fileio import write_new
from donnadb.errors import ConfigError

MAGIC = b"DONNAENC2"
MAGIC_V1 = b"DONNAENC1"
SUFFIX = ".enc"
CHUNK = 1024 * 1024
ALGORITHM = "AES-256-GCM-chunked-v2"
_HEADER_LEN = len(MAGIC) + 8 + 8
#: A sealed chunk is at most CHUNK plaintext bytes plus GCM's 16-byte tag; a length
#: field above that is damage (or an attack), refused before anything is allocated.
_MAX_SEALED = CHUNK + 16


@dataclass(frozen=True)
class Key:
    key_id: str  # 16 hex characters
    secret: bytes

    @property
    def raw_id(self) -> bytes:
        return bytes.fromhex(self.key_id)


def key_id_of(secret: bytes) -> str:
    return hashlib.sha256(b"donnadb-backup-key-id:" + secret).hexdigest()[:16]


def generate_key_file(path: Path) -> Key:
    """Write a new random key to ``path`` (0600; refuses to overwrite).

    :raises ConfigError: the file exists already.
    :raises OSError: the write failed (a full disk): no file is left.
    """
    secret = secrets.token_bytes(32)
    try:
        write_new(path, (secret.hex() + "\n").encode("ascii"), 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; add a new key as its first line to rotate") from None
    return Key(key_id_of(secret), secret)


def load_keys(path: Path) -> list[Key]:
    """Every key in the key file, the current (first) one first.

    :raises ConfigError: missing, readable by others, or malformed.
    """
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="ascii").split()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the backup key file {path} ({type(exc).__name__}); "
                          "restore it from your key escrow or set BACKUP_ENCRYPTION_KEY_FILE")\
            from None
    if mode & 0o077:
        raise ConfigError(f"backup key file {path} is readable by others; chmod 600 it")
    keys = []
    for n, line in enumerate(lines, 1):
        try:
            secret = bytes.fromhex(line)
        except ValueError:
            secret = b""
        if len(secret) != 32:
            raise ConfigError(f"{path} line {n} is not a 64-hex-character key")
        keys.append(Key(key_id_of(secret), secret))
    if not keys:
        raise ConfigError(f"backup key file {path} holds no key")
    return keys


def _aad(header: bytes, place: bytes, index: int, last: bool) -> bytes:
    if header.startswith(MAGIC_V1):
        return header + struct.pack(">I?", index, last)
    return header + struct.pack(">I", len(place)) + place + struct.pack(">I?", index, last)


def place_of(backup_id: str, rel: str) -> bytes:
    """What an encrypted file's chunks are bound to: its backup and its path in it."""
    return f"{backup_id}\0{rel}".encode()


def encrypt_file(src: Path, dest: Path, key: Key, place: bytes) -> None:
    """Encrypt ``src`` into ``dest`` (0600), bound to ``place`` (:func:`place_of`)."""
    header = MAGIC + key.raw_id + secrets.token_bytes(8)
    aes = AESGCM(key.secret)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        fout.write(header)
        index = 0
        chunk = fin.read(CHUNK)
        while True:
            following = fin.read(CHUNK)
            last = not following
            nonce = header[-8:] + struct.pack(">I", index)
            sealed = aes.encrypt(nonce, chunk, _aad(header, place, index, last))
            fout.write(struct.pack(">I", len(sealed)) + sealed)
            if last:
                break
            chunk, index = following, index + 1


def file_key_id(path: Path) -> str:
    """The key id an encrypted file was written with.

    :raises BackupCorrupt: it is not a donnadb-encrypted file.
    """
    with path.open("rb") as fh:
        header = fh.read(_HEADER_LEN)
    if len(header) != _HEADER_LEN or not header.startswith((MAGIC, MAGIC_V1)):
        raise BackupCorrupt(f"{path} is not an encrypted backup file")
    return header[len(MAGIC):len(MAGIC) + 8].hex()


def decrypt_file(src: Path, dest: Path, keys: list[Key], place: bytes) -> None:
    """Decrypt ``src`` into ``dest`` (0600); ``place`` must be the one it was sealed to.

    :raises BackupError: no key with the file's key id.
    :raises BackupCorrupt: the file was altered, truncated or moved from another place.
    """
    wanted = file_key_id(src)
    key = next((k for k in keys if k.key_id == wanted), None)
    if key is None:
        raise BackupError(f"{src.name} was encrypted with key id {wanted}; the key file has "
                          f"{', '.join(k.key_id for k in keys)}: add that key (docs/backup.md)")
    aes = AESGCM(key.secret)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        header = fin.read(_HEADER_LEN)
        index = 0
        while True:
            size_bytes = fin.read(4)
            if len(size_bytes) != 4:
                raise BackupCorrupt(f"{src} is truncated (no final chunk)")
            length = struct.unpack(">I", size_bytes)[0]
            if length > _MAX_SEALED:
                raise BackupCorrupt(f"{src} is damaged: a chunk claims {length} bytes "
                                    f"(at most {_MAX_SEALED})")
            sealed = fin.read(length)
            nonce = header[-8:] + struct.pack(">I", index)
            last = fin.peek(1) == b""  # nothing follows: this must be the final chunk
            try:
                fout.write(aes.decrypt(nonce, sealed, _aad(header, place, index, last)))
            except InvalidTag:
                raise BackupCorrupt(f"{src} fails authentication: altered, truncated, moved "
                                    "from another backup or path, or not written with this "
                                    "key") from None
            if last:
                return
            index += 1


def encrypt_tree(backup_dir: Path, sub: str, key: Key, backup_id: str) -> None:
    """Replace every file under ``backup_dir/sub`` by its encrypted ``.enc`` twin, each
    bound to ``backup_id`` and its path in the backup (``sub/NAME.enc``)."""
    for path in sorted(p for p in (backup_dir / sub).rglob("*") if p.is_file()):
        enc = path.with_name(path.name + SUFFIX)
        encrypt_file(path, enc, key, place_of(backup_id, enc.relative_to(backup_dir).as_posix()))
        path.unlink()


def decrypt_tree(backup_dir: Path, sub: str, dest: Path, keys: list[Key],
                 backup_id: str) -> None:
    """Decrypt every ``.enc`` file under ``backup_dir/sub`` into the same layout under
    ``dest``, each checked against the place it was sealed to."""
    src = backup_dir / sub
    for path in sorted(p for p in src.rglob("*" + SUFFIX) if p.is_file()):
        rel = path.relative_to(src)
        out = dest / rel.parent / rel.name[: -len(SUFFIX)]
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        decrypt_file(path, out, keys,
                     place_of(backup_id, path.relative_to(backup_dir).as_posix()))

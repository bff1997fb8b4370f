"""Encryption of backup files to public keys with age (https://age-encryption.org).

The database host holds only the recipients (BACKUP_AGE_RECIPIENTS_FILE: ``age1...``
public keys, one a line): it can write encrypted backups but cannot read them. The
private key (BACKUP_AGE_IDENTITY_FILE or ``--identity``, 0600) stays with the operator
and is needed only to restore. Every dump file ``NAME`` becomes ``NAME.age``, a plain
age file the stock tool decrypts (``age -d -i key.txt -o NAME NAME.age``).

The ``age`` binary (Debian's ``age`` package) does the work, streaming through pipes:
no key ever reaches argv, only the paths of the recipients and identity files. A file
swapped for another age file is caught by the manifest's hashes and signature before
anything is decrypted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from donnadb.backup.errors import BackupError
from donnadb.backup.manifest import AGE_RECIPIENT_RE
from donnadb.errors import ConfigError, DiskWriteError, PreconditionError

ALGORITHM = "age"
SUFFIX = ".age"
#: The first line of every age file.
HEADER = b"age-encryption.org/v1"
#: An X25519 recipient: "age1" and 58 bech32 characters.
RECIPIENT_RE = AGE_RECIPIENT_RE
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
IDENTITY_HINT = "pass --identity FILE or set BACKUP_AGE_IDENTITY_FILE"
#: How age (Go) words the errnos of a disk that refused its output: the C library's
#: text in lower case ("age: error: write /dev/stdout: no space left on device").
GO_DISK_ERRORS = {os.strerror(code).lower(): code for code in DiskWriteError.ERRNOS}


def binary(name: str = "age") -> str:
    """The path of ``age`` (or ``age-keygen``).

    :raises PreconditionError: the package is not installed.
    """
    found = shutil.which(name)
    if not found:
        raise PreconditionError(f"{name} is not installed; apt-get install age (the deploy "
                                "installs it when group_data backup_age_recipients is set)")
    return found


def load_recipients(path: Path) -> list[str]:
    """The public keys in the recipients file (blank lines and ``#`` comments skipped).

    :raises ConfigError: missing, unreadable, empty, or a line is not an age1 key.
    """
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the age recipients file {path} "
                          f"({type(exc).__name__}); set BACKUP_AGE_RECIPIENTS_FILE") from None
    recipients = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not RECIPIENT_RE.match(line):
            raise ConfigError(f"{path} line {n} is not an age public key (age1...)")
        recipients.append(line)
    if not recipients:
        raise ConfigError(f"age recipients file {path} holds no public key")
    return recipients


def identity_recipients(path: Path) -> list[str]:
    """The public keys of the private keys in identity file ``path``.

    :raises ConfigError: missing, readable by others, or no age private key in it.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the age identity file {path} "
                          f"({type(exc).__name__}); {IDENTITY_HINT}") from None
    if mode & 0o077:
        raise ConfigError(f"age identity file {path} is readable by others; chmod 600 it")
    out = subprocess.run([binary("age-keygen"), "-y", str(path)], capture_output=True,
                         text=True, check=False)
    keys = [k for k in out.stdout.split() if RECIPIENT_RE.match(k)]
    if out.returncode != 0 or not keys:
        raise ConfigError(f"{path} holds no age private key ({IDENTITY_PREFIX}...): "
                          f"{_first_line(out.stderr)}")
    return keys


def check_identity(path: Path | None, recipients: list[str], backup_id: str) -> Path:
    """``path``, once it is known to hold a key of one of the backup's ``recipients``.

    :raises ConfigError: no identity file, or one that may not or cannot be used.
    :raises BackupError: none of its keys is a recipient of the backup.
    """
    if path is None:
        raise ConfigError(f"backup {backup_id} is encrypted with age to a public key; "
                          f"its private key is needed: {IDENTITY_HINT}")
    mine = identity_recipients(path)
    if not set(mine) & set(recipients):
        raise BackupError(f"backup {backup_id} is encrypted to {', '.join(recipients)}; "
                          f"the identity {path} is {', '.join(mine)}: use the matching key")
    return path


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "no output").strip()


def _run(cmd: list[str], src: Path, dest: Path, what: str) -> None:
    """``cmd`` reading ``src`` on stdin and writing ``dest`` (0600) on stdout."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        done = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                              check=False)
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        stderr = done.stderr.decode(errors="replace")
        # Its output is our file: a full disk is named as any other writer's would be.
        code = next((c for text, c in GO_DISK_ERRORS.items() if text in stderr), None)
        if code is not None:
            raise DiskWriteError.of(OSError(code, os.strerror(code), str(dest)))
        raise BackupError(f"{what} {src.name} failed: {_first_line(stderr)}")


def encrypt_tree(backup_dir: Path, sub: str, recipients_file: Path) -> None:
    """Replace every file under ``backup_dir/sub`` by ``NAME.age``, encrypted to every
    key of ``recipients_file``."""
    cmd = [binary(), "--encrypt", "-R", str(recipients_file)]
    for path in sorted(p for p in (backup_dir / sub).rglob("*") if p.is_file()):
        _run(cmd, path, path.with_name(path.name + SUFFIX), "age encryption of")
        path.unlink()


def decrypt_tree(backup_dir: Path, sub: str, dest: Path, identity_file: Path) -> None:
    """Decrypt every ``.age`` file under ``backup_dir/sub`` into the same layout under
    ``dest``.

    :raises BackupError: a file does not decrypt with ``identity_file``.
    """
    cmd = [binary(), "--decrypt", "-i", str(identity_file)]
    src = backup_dir / sub
    for path in sorted(p for p in src.rglob("*" + SUFFIX) if p.is_file()):
        rel = path.relative_to(src)
        out = dest / rel.parent / rel.name[: -len(SUFFIX)]
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(cmd, path, out, f"age decryption (identity {identity_file}) of")


def generate_identity(path: Path) -> str:
    """A new age key pair: the private key in ``path`` (0600, refuses to overwrite);
    returns the public key."""
    if path.exists():
        raise ConfigError(f"{path} exists; choose another file for the new key")
    done = subprocess.run([binary("age-keygen"), "-o", str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"age-keygen -o {path} failed: {_first_line(done.stderr)}")
    path.chmod(0o600)
    return identity_recipients(path)[0]

"""``SHA256SUMS`` beside the manifest: a backup anyone can check with coreutils alone.

``cd <backup dir> && sha256sum -c SHA256SUMS`` re-hashes every file of the backup
without donnadb, an S3 client's copy as much as the local repository's. The file is
derived from the manifest (one ``<sha256>  <path>`` line per file, in the manifest's
order, paths relative to the backup directory) and lists the same files: the dump's,
encrypted ones as they are stored. It lists neither itself nor ``manifest.json``: the
manifest is authenticated by its own signature (signing.py), which a checksum beside it
could not add to, and ``backup verify`` checks that SHA256SUMS agrees with that signed
manifest. Backups made before SHA256SUMS existed have none; that is not a problem.
"""

from __future__ import annotations

import re
from pathlib import Path

from donnadb.backup import manifest as mf
from donnadb.backup.errors import BackupCorrupt

NAME = mf.SUMS_NAME
#: One line of ``sha256sum`` output: hash, a space, " " (text) or "*" (binary), the path.
_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
#: How many disagreements a problem list names before it says "and N more".
SHOWN = 5


def render(manifest: mf.Manifest) -> str:
    """The SHA256SUMS text for ``manifest``: what ``sha256sum`` prints for its files.

    Paths are safe to print unescaped: the manifest's layout check allows only
    ``dump/NAME`` with letters, digits, ``.``, ``_`` and ``-``.
    """
    return "".join(f"{entry.sha256}  {entry.path}\n" for entry in manifest.files)


def write(backup_dir: Path, manifest: mf.Manifest) -> Path:
    """Write ``backup_dir/SHA256SUMS`` for ``manifest`` (atomically, 0600)."""
    path = backup_dir / NAME
    mf.write_private(path, render(manifest))
    return path


def disagreements(text: str, manifest: mf.Manifest) -> list[str]:
    """How SHA256SUMS ``text`` differs from ``manifest``: one line per difference."""
    if text == render(manifest):
        return []
    listed: dict[str, str] = {}
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        found = _LINE_RE.match(line)
        if not found:
            problems.append(f"line {n} is not '<sha256>  <path>'")
        elif found[2] in listed:
            problems.append(f"{found[2]} is listed twice")
        else:
            listed[found[2]] = found[1]
    for entry in manifest.files:
        digest = listed.pop(entry.path, None)
        if digest is None:
            problems.append(f"{entry.path} is missing")
        elif digest != entry.sha256:
            problems.append(f"{entry.path} has another sha256 than the manifest")
    problems.extend(f"{path} is not in the manifest" for path in sorted(listed))
    # Same entries, other bytes (order, line endings): sha256sum -c still passes, but
    # the file is not the one the backup wrote.
    return problems or ["it lists the manifest's files but differs from what donnadb "
                        "writes (order or spacing)"]


def check(backup_dir: Path, manifest: mf.Manifest) -> list[str]:
    """Problems of ``backup_dir``'s SHA256SUMS against its manifest, for ``backup verify``.

    None when it agrees, or when there is none (a backup made before it existed).
    """
    path = backup_dir / NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{NAME}: unreadable ({type(exc).__name__}); check its owner and mode"]
    found = disagreements(text, manifest)
    if not found:
        return []
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return [f"{NAME} disagrees with the manifest: {'; '.join(found[:SHOWN])}{more}"]


def require(text: str, manifest: mf.Manifest, *, where: str) -> None:
    """Accept SHA256SUMS ``text`` only if it agrees with ``manifest``.

    :raises BackupCorrupt: it does not.
    """
    found = disagreements(text, manifest)
    if found:
        raise BackupCorrupt(f"{where} disagrees with its manifest ({found[0]}): the backup "
                            "was altered; use another (`donnactl backup list`)")

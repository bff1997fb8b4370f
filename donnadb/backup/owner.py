"""Backups are made and managed as the repository's owner, whoever starts the command.

The deploy gives the repository to the cluster's owner (``postgres``) and the scheduled
backup jobs run as that user, not as root. An operator's ``donnactl backup ...`` run as
root would otherwise leave root-owned backups that the jobs could neither prune nor
verify, so a root process first becomes the repository's owner (its uid, gid and
groups), with that user's own passfile and log. A repository owned by root (a test's,
a hand-made one) changes nothing.
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

log = logging.getLogger(__name__)

#: Where the deploy puts each consumer's passfile and job log (provision/consumers.py).
PASSFILE_DIR = Path("/etc/donnadb/pgpass.d")
LOG_DIR = Path("/var/log/donnadb")


def log_file_of(user: str) -> Path:
    return LOG_DIR / f"{user}-backup.jsonl"


def become_repository_owner(repo: Path) -> str | None:
    """Switch a root process to the owner of ``repo``; the user's name, or None if the
    process stays as it is (not root, no repository yet, or root owns it)."""
    if os.geteuid() != 0:
        return None
    try:
        owner = repo.stat().st_uid
    except OSError:
        return None
    if owner == 0:
        return None
    user = pwd.getpwuid(owner)
    passfile = PASSFILE_DIR / user.pw_name
    if "DB_PASSFILE" not in os.environ and passfile.exists():
        os.environ["DB_PASSFILE"] = str(passfile)
    os.environ.setdefault("OPS_LOG_FILE", str(log_file_of(user.pw_name)))
    os.environ["HOME"] = user.pw_dir
    os.initgroups(user.pw_name, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    log.info("running as %s, the owner of %s", user.pw_name, repo)
    return user.pw_name

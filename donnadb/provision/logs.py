"""Rotation of the logs under /var/log/donnadb (logrotate, Debian's package).

Each log there has its own writer (root's donnactl, the ops jobs' user, the backup
jobs' user), owner and mode, so rotation copies then truncates in place
(``copytruncate``): a writer keeps appending to the same file, and no file changes
hands. The writers append whole lines, so at worst a line written during the copy
lands in the next generation.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from donnadb.provision.settings import DeploySettings

LOG_DIR = "/var/log/donnadb"
CONFIG = "/etc/logrotate.d/donnadb"
#: Weeks of history kept (compressed, but for the newest).
KEEP_WEEKS = 8


def config_text() -> str:
    return f"""# Managed by the donnadb deploy (donnadb/provision/logs.py).
{LOG_DIR}/*.log {LOG_DIR}/*.jsonl {{
    weekly
    rotate {KEEP_WEEKS}
    maxsize 100M
    compress
    delaycompress
    copytruncate
    missingok
    notifempty
    su root root
}}
"""


def log_directory() -> None:
    """/var/log/donnadb: others may enter it, not list it; each log is its writer's.

    The ops and the backup jobs both call this, so the directory is declared once.
    """
    files.directory(name=f"Create {LOG_DIR}", path=LOG_DIR, user="root", group="root",
                    mode="711")


@deploy("Log rotation")
def rotate_logs(settings: DeploySettings) -> None:
    """Install logrotate (its own timer or cron.daily runs it) and our policy."""
    installed = host.get_fact(DebPackages) or {}
    apt.packages(name="Install logrotate", packages=["logrotate"],
                 update="logrotate" not in installed, cache_time=settings.pg_apt_cache_time)
    files.put(name=f"Rotate {LOG_DIR} weekly ({CONFIG})", src=StringIO(config_text()),
              dest=CONFIG, user="root", group="root", mode="644")

"""Dual-write's copy figures on a host that runs the DAL (docs/monitoring.md): where the
host's settings lines put some entity in dual-write, MIGRATION_MIRROR_STATS_DIR in its
settings file and that folder, the application's user's own.

The folder is ``app user:donnadb 2750``: only the application writes its processes'
files there (0640, the folder's group by its setgid bit), and `donnactl metrics`, run by
the ops jobs' user (a member of the group), reads them. The files hold counts per
entity, nothing personal and no secret.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from donnadb import config
from donnadb.provision import consumers
from donnadb.provision.settings import DeploySettings

#: MIGRATION_MIRROR_STATS_DIR the deploy writes.
STATS_DIR = "/var/lib/donnadb/mirror-stats"
#: The settings naming one entity's phase (DATA_STORAGE_USERS ...), from config.
ENTITY_SETTINGS = tuple(name.upper() for name in config.Settings.model_fields
                        if name.startswith("data_storage_") and name != "data_storage_type")
#: How pydantic reads a true MIGRATION_ENABLE_DUAL_WRITE.
TRUE = ("1", "true", "t", "yes", "y", "on")


def dual_anywhere(settings: DeploySettings) -> bool:
    """Whether the settings lines the deploy writes (group_data ops_env, then
    donnadb_env_extra, which is written last and wins) put some entity in dual-write,
    as donnadb.dal.factory.entity_phases reads them."""
    lines = {str(k).upper(): str(v).strip()
             for k, v in {**settings.ops_env, **settings.donnadb_env_extra}.items()}
    dual = lines.get("MIGRATION_ENABLE_DUAL_WRITE", "").lower() in TRUE
    default = "dual" if dual else lines.get("DATA_STORAGE_TYPE") or "file"
    return any((lines.get(name) or default) == "dual" for name in ENTITY_SETTINGS)


def stats_dir(settings: DeploySettings) -> str | None:
    """MIGRATION_MIRROR_STATS_DIR for the host's settings file; None: no line (off)."""
    return STATS_DIR if dual_anywhere(settings) else None


@deploy("Dual-write copy figures")
def make_stats_dir(settings: DeploySettings, owner: str) -> None:
    """The folder, ``owner``'s (the application's user), when dual-write is on."""
    folder = stats_dir(settings)
    if folder is None:
        return
    files.directory(name=f"Create {folder} (the application's dual-write figures)",
                    path=folder, user=owner, group=consumers.GROUP, mode="2750")

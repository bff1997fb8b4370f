"""postgresql.conf settings from the host's memory and cores (conf.d drop-in).

The formulas live in group_data/all.py; this module feeds them pyinfra's hardware
facts and writes the result to ``conf.d/donna.conf``, which Debian's postgresql.conf
includes last, so the package's own file is never edited.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import files

from donnadb.provision.service import cluster_created
from donnadb.provision.settings import DeploySettings
from donnadb.provision.tls import SERVER_CERT, SERVER_KEY

TEMPLATES = Path(__file__).resolve().parent / "templates"


class MemTotalMb(FactBase[int]):
    """Total RAM in MB from /proc/meminfo (minimal images lack vmstat for ``Memory``)."""

    def command(self) -> str:
        return "awk '/^MemTotal:/ {print $2}' /proc/meminfo"

    def process(self, output):
        return int(round(int(output[0]) / 1024))


def host_resources(settings: DeploySettings) -> tuple[int, int]:
    """(memory in MB, CPUs) the formulas size for: the host's budget from the inventory
    (a host sharing its machine with others), else its RAM and online CPUs."""
    memory_mb = settings.host_memory_mb or host.get_fact(Memory) or host.get_fact(MemTotalMb)
    cpus = settings.host_cpus or host.get_fact(Cpus) or 1
    return int(memory_mb), int(cpus)


@deploy("Configure postgresql.conf")
def configure_postgresql(settings: DeploySettings) -> OperationMeta:
    """Write conf.d/donna.conf; returns the operation (restart when it changed)."""
    memory_mb, cpus = host_resources(settings)
    if settings.ha is None:
        cluster_created(name=f"Create cluster {settings.pg_version}/{settings.pg_cluster}",
                        version=settings.pg_version, cluster=settings.pg_cluster,
                        port=settings.pg_port)
    else:
        # Patroni makes the cluster; its settings directory is the deploy's to fill first.
        for path in (settings.conf_dir, f"{settings.conf_dir}/conf.d"):
            files.directory(name=f"Create {path}", path=path, user="postgres",
                            group="postgres", mode="755")
    return files.template(
        name="Write conf.d/donna.conf (tuning, preload libraries, logging)",
        src=str(TEMPLATES / "donna.conf.j2"),
        dest=f"{settings.conf_dir}/conf.d/donna.conf",
        user="postgres",
        group="postgres",
        mode="640",
        cfg=settings,
        tune=settings.tuning(memory_mb, cpus),
        memory_mb=memory_mb,
        cpus=cpus,
        tls_cert=SERVER_CERT,
        tls_key=SERVER_KEY,
    )

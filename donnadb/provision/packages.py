"""Debian packages: PostgreSQL (with contrib: pg_stat_statements), pg_partman and pgaudit
for group_data's pg_version."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from donnadb.provision.settings import DeploySettings

NO_MAIN_CLUSTER = "/etc/postgresql-common/createcluster.d/donnadb-cluster.conf"


@deploy("Install PostgreSQL")
def install_postgresql(settings: DeploySettings) -> None:
    """Install the packages; refresh the apt lists only when something is missing."""
    installed = host.get_fact(DebPackages) or {}
    if settings.ha is not None:
        # In a cluster Patroni makes the cluster; the package must not make its own.
        files.directory(name="Create /etc/postgresql-common/createcluster.d",
                        path="/etc/postgresql-common/createcluster.d", user="root",
                        group="root", mode="755")
        files.put(name="No cluster from the package (Patroni makes it)",
                  src=StringIO("create_main_cluster = false\n"), dest=NO_MAIN_CLUSTER,
                  user="root", group="root", mode="644")
    missing = [p for p in settings.pg_packages if p not in installed]
    apt.packages(
        name=f"Install PostgreSQL {settings.pg_version}, pg_partman and pgaudit",
        packages=list(settings.pg_packages),
        # An `apt-get update` with nothing to install would be reported as a change.
        update=bool(missing),
        cache_time=settings.pg_apt_cache_time,
    )

"""The cluster's service: created, running, restarted/reloaded when its config changed.

systemd is used when it is PID 1. Containers and CI often run without it, so there
the Debian cluster tools (pg_ctlcluster) start, restart and reload the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import systemd

from donnadb.provision.facts import PgClusters, SystemdRunning
from donnadb.provision.settings import DeploySettings


def _online(version: int, cluster: str) -> bool | None:
    """True/False for a known cluster, None when it does not exist (yet)."""
    info = (host.get_fact(PgClusters) or {}).get(f"{version}/{cluster}")
    if info is None:
        return None
    return info["status"].startswith("online")


@operation()
def cluster_created(version: int, cluster: str, port: int):
    """Create the Debian cluster if the package did not (create_main_cluster = false)."""
    if _online(version, cluster) is None:
        yield f"pg_createcluster {int(version)} {cluster} -p {int(port)}"
    else:
        host.noop(f"cluster {version}/{cluster} exists")


@operation()
def cluster_started(version: int, cluster: str):
    """Start the cluster when it is down."""
    if _online(version, cluster):
        host.noop(f"cluster {version}/{cluster} is running")
    else:
        yield f"pg_ctlcluster {int(version)} {cluster} start"


@operation()
def cluster_signalled(version: int, cluster: str, action: str):
    """``restart`` or ``reload`` a running cluster; a stopped one is started later anyway."""
    if action not in ("restart", "reload"):
        raise ValueError(f"action must be restart or reload, not {action!r}")
    if _online(version, cluster):
        yield f"pg_ctlcluster {int(version)} {cluster} {action}"
    else:
        host.noop(f"cluster {version}/{cluster} is down: nothing to {action}")


@deploy("PostgreSQL service")
def ensure_running(
    settings: DeploySettings,
    *,
    restart_if: Callable[[], bool] | None = None,
    reload_if: Callable[[], bool] | None = None,
) -> None:
    """Running at the end; restarted when ``restart_if()``, reloaded when ``reload_if()``."""
    v, c = settings.pg_version, settings.pg_cluster
    never = lambda: False  # noqa: E731 - a condition that never holds
    restart_if = restart_if or never
    reload_if = reload_if or never
    if host.get_fact(SystemdRunning):
        unit = f"postgresql@{v}-{c}"
        systemd.service(name=f"Restart {unit} (postgresql.conf changed)", service=unit,
                        restarted=True, _if=restart_if)
        systemd.service(name=f"Reload {unit} (pg_hba.conf changed)", service=unit,
                        reloaded=True, _if=reload_if)
        # The same name as the pg_ctlcluster path: "Start cluster" on every kind of host.
        systemd.service(name=f"Start cluster {v}/{c} now and at boot (systemd: {unit})",
                        service=unit, running=True, enabled=True)
        return
    cluster_signalled(name=f"Restart cluster {v}/{c} (postgresql.conf changed)",
                      version=v, cluster=c, action="restart", _if=restart_if)
    cluster_signalled(name=f"Reload cluster {v}/{c} (pg_hba.conf changed)",
                      version=v, cluster=c, action="reload", _if=reload_if)
    cluster_started(name=f"Start cluster {v}/{c} (no systemd: pg_ctlcluster)", version=v,
                    cluster=c)

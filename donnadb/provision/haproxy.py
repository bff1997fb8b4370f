"""HAProxy on every host of a cluster deploy: the leader and the replicas under one name.

Applications dial ``ha_service_name`` (an /etc/hosts line sends it to this host's
HAProxy; every member's certificate carries it, so ``sslmode=verify-full`` holds
whichever member answers) on ``ha_write_port`` for the leader and ``ha_read_port``
for replicas. HAProxy asks each member's Patroni which it is (``/primary``,
``/replica?lag=``) every second, over HTTPS verified against the deploy's CA.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.operations import apt, files, systemd

from donnadb.provision import bootstrap, ha, tls
from donnadb.provision.settings import DeploySettings

CONFIG = "/etc/haproxy/haproxy.cfg"
MAXCONN = 4096


def render_config(settings: DeploySettings, target: Host, address: str) -> str:
    return bootstrap.render("haproxy.cfg.j2", ha=settings.ha, members=ha.members(target),
                            address=address, ca=tls.CA_FILE, maxconn=MAXCONN)


@deploy("HAProxy (the cluster's router)")
def install_router(settings: DeploySettings, target: Host, address: str) -> None:
    """HAProxy listening on ``address`` (this host's); :func:`name_this_host` points the
    service name at it."""
    apt.packages(name="Install haproxy", packages=["haproxy"])
    conf = files.put(name=f"Write {CONFIG}",
                     src=StringIO(render_config(settings, target, address)), dest=CONFIG,
                     user="root", group="haproxy", mode="640")
    systemd.service(name="Reload haproxy (its settings changed)", service="haproxy",
                    reloaded=True, _if=conf.did_change)
    systemd.service(name="Start haproxy now and at boot", service="haproxy", running=True,
                    enabled=True)


def name_this_host(settings: DeploySettings, address: str) -> None:
    """/etc/hosts: the cluster's name is this host's address (its router listens there)."""
    ha.hosts_entry(settings.ha.service_name, address, "this host's router")

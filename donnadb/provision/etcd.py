"""etcd on every cluster member: Patroni's consensus store, TLS on both ports.

The settings file and the ``etcd`` user exist before the package is installed: the
package starts its service at once, and with Debian's defaults it would make a
one-member cluster on localhost whose data would then refuse to join ours.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.host import Host
from pyinfra.facts.server import Hostname
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from donnadb.provision import bootstrap, consumers, ha, tls
from donnadb.provision.settings import DeploySettings

ENV_FILE = "/etc/default/etcd"
DATA_DIR = "/var/lib/etcd/donna"
#: etcd's own copies (it re-reads them on every connection, as the etcd user, who may not
#: enter /etc/donnadb).
TLS_DIR = "/etc/etcd/tls"
CA = f"{TLS_DIR}/ca.crt"
CERT = f"{TLS_DIR}/etcd.crt"
KEY = f"{TLS_DIR}/etcd.key"


def render_env(settings: DeploySettings, target: Host) -> str:
    return bootstrap.render("etcd.env.j2", ha=settings.ha, me=ha.me(settings, target),
                            members=ha.members(target), data_dir=DATA_DIR, cert=CERT,
                            key=KEY, ca=CA)


@deploy("etcd (the cluster's consensus store)")
def install_etcd(settings: DeploySettings, target: Host) -> None:
    """The etcd user, its certificate copy, /etc/default/etcd, the package, the service."""
    server.group(name="Group etcd", group="etcd", system=True)
    server.user(name="User etcd (runs etcd)", user="etcd", group="etcd", system=True,
                home="/var/lib/etcd", shell=consumers.NOLOGIN, ensure_home=False)  # noqa: S604
    files.directory(name="Create /var/lib/etcd (etcd only)", path="/var/lib/etcd",
                    user="etcd", group="etcd", mode="700")
    # etcd runs as its own user: it gets its own copy of the host's certificate.
    for path in ("/etc/etcd", TLS_DIR):
        files.directory(name=f"Create {path} (root:etcd 0750)", path=path, user="root",
                        group="etcd", mode="750")
    ca_op = files.put(name=f"Write {CA}", src=StringIO(tls.authority(settings).cert_pem),
                      dest=CA, user="root", group="etcd", mode="644")
    names = tls.server_names(settings, target.name, target.get_fact(Hostname))
    cert_op, key_op = tls.put_certificate(settings, names, CERT, KEY, "etcd")
    env = files.put(name=f"Write {ENV_FILE}", src=StringIO(render_env(settings, target)),
                    dest=ENV_FILE, user="root", group="root", mode="644")
    package = apt.packages(name="Install etcd-server and curl",
                           packages=["etcd-server", "curl"])
    # A fresh install started etcd with these files already.
    changed = any_changed(env, ca_op, cert_op, key_op)
    systemd.service(name="Restart etcd (its settings or certificate changed)", service="etcd",
                    restarted=True, _if=lambda: changed() and not package.did_change())
    systemd.service(name="Start etcd now and at boot", service="etcd", running=True,
                    enabled=True)

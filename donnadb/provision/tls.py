"""TLS on the hosts: the CA certificate everywhere, a server certificate on database hosts.

The CA and the certificates are made on the machine running the deploy
(provision/ca.py); this module uploads them:

* every host: ``/etc/donnadb/tls/ca.crt`` (the CA certificate only), which clients
  use to verify the server (``DB_SSLROOTCERT``, ``sslmode=verify-full``);
* database hosts: ``server.crt`` and ``server.key`` (root:postgres 0640: PostgreSQL
  accepts a root-owned key readable by its group, and PgBouncer runs as postgres).

The certificate's subjectAltName holds every name a client may dial: the inventory
name, the host's hostname, localhost, 127.0.0.1, ::1, the IPs and names of
``pg_listen_addresses``, ``db_host``, ``pgbouncer_listen_addr``, ``cache_listen_addr``
and group_data ``tls_server_names``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Hostname
from pyinfra.operations import files
from pyinfra.operations.util import any_changed

from donnadb import config
from donnadb.provision import ca
from donnadb.provision.settings import DeploySettings

TLS_DIR = str(config.DEFAULT_TLS_DIR)
CA_FILE = str(config.DEFAULT_SSLROOTCERT)
SERVER_CERT = str(config.DEFAULT_TLS_SERVER_CERT_FILE)
SERVER_KEY = f"{TLS_DIR}/server.key"
#: listen_addresses values that are not one address a client could dial.
WILDCARDS = ("*", "0.0.0.0", "::", "")  # noqa: S104 - recognised, never bound


@functools.cache
def _authority(ca_dir: str, cert_file: str | None, key_file: str | None) -> ca.Authority:
    if cert_file and key_file:
        return ca.load_ca(Path(cert_file), Path(key_file))
    return ca.ensure_ca(Path(ca_dir))


def authority(settings: DeploySettings) -> ca.Authority:
    """The operator's CA when group_data names one, else the deploy's own (made once).

    :raises ConfigError: the operator's CA files cannot be read or do not match.
    """
    return _authority(settings.tls_ca_dir, settings.tls_ca_cert_file, settings.tls_ca_key_file)


def listen_names(listen_addresses: str) -> list[str]:
    """The addresses and names of a ``listen_addresses`` value, wildcards left out."""
    return [a.strip() for a in listen_addresses.split(",") if a.strip() not in WILDCARDS]


def listen_ip_networks(listen_addresses: str) -> list[str]:
    """Every IP literal of ``listen_addresses`` as a one-address network (/32 or /128)."""
    networks = []
    for name in listen_names(listen_addresses):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            continue
        networks.append(f"{ip}/{ip.max_prefixlen}")
    return networks


def server_names(settings: DeploySettings, inventory_name: str, hostname: str | None) -> list[str]:
    """The certificate's subjectAltName entries, first the name clients should use."""
    names = [settings.db_host]
    if not inventory_name.startswith("@"):  # @local, @docker/...: connectors, not names
        names.append(inventory_name)
    if hostname:
        names.append(hostname)
    names += ["localhost", "127.0.0.1", "::1", *listen_names(settings.pg_listen_addresses)]
    if settings.pgbouncer_listen_addr.strip() not in WILDCARDS:
        names += [a.strip() for a in settings.pgbouncer_listen_addr.split(",")
                  if a.strip() not in WILDCARDS]
    names += list(settings.tls_server_names)
    if settings.cache is not None and settings.cache.listen_addr:
        # The cache host's Redis serves this certificate too (provision/cacheserver.py).
        names.append(settings.cache.listen_addr)
    if settings.ha is not None:
        names.append(settings.ha.service_name)
    canonical = []
    for name in names:
        try:
            canonical.append(str(ipaddress.ip_address(name)))
        except ValueError:
            canonical.append(name.lower())
    return list(dict.fromkeys(canonical))


@deploy("TLS: the CA certificate")
def install_ca(settings: DeploySettings):
    """``/etc/donnadb/tls/ca.crt`` (0644): what every client verifies the server with.

    :raises ConfigError: the operator's CA files cannot be read or do not match.
    """
    files.directory(name=f"Create {TLS_DIR}", path=TLS_DIR, user="root", group="root",
                    mode="755")
    return files.put(name=f"Write {CA_FILE} (the CA certificate)",
                     src=StringIO(authority(settings).cert_pem), dest=CA_FILE,
                     user="root", group="root", mode="644")


@deploy("TLS: the server certificate")
def install_server_cert(settings: DeploySettings) -> Callable[[], bool]:
    """The CA file, then this database host's certificate and key (issued or renewed on
    the control machine when needed). Returns "did any of them change" (reload/restart
    the servers that read them).

    Runs after the PostgreSQL package: the key's group is postgres.
    """
    ca_op = install_ca(settings)
    names = server_names(settings, host.name, host.get_fact(Hostname))
    cert_op, key_op = put_certificate(settings, names, SERVER_CERT, SERVER_KEY, "postgres")
    return any_changed(ca_op, cert_op, key_op)


def put_certificate(settings: DeploySettings, names: list[str], cert: str, key: str,
                    group: str):
    """This host's certificate and key (issued or renewed on the control machine when
    needed) at ``cert`` (0644) and ``key`` (root:``group`` 0640); the two operations."""
    issued = ca.server_certificate(authority(settings), Path(settings.tls_ca_dir), host.name,
                                   names)
    cert_op = files.put(name=f"Write {cert} ({', '.join(names[:3])} ...)",
                        src=StringIO(issued.cert_pem), dest=cert,
                        user="root", group=group, mode="644")
    # The key file exists, 0640, before its content is copied in: never readable by all.
    files.file(name=f"Create {key} (root:{group} 0640)", path=key,
               user="root", group=group, mode="640")
    key_op = files.put(name=f"Write {key} (root:{group} 0640)",
                       src=StringIO(issued.key_pem), dest=key,
                       user="root", group=group, mode="640")
    return cert_op, key_op

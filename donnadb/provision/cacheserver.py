"""The DAL's cache: Debian's redis-server on one host, and the ``CACHE_*`` settings of
every host that uses it (group_data ``cache_*``; docs/deploy.md, "Cache").

With ``cache_enabled = True``:

* the cache host (``cache_server``, else the first application host, else the first
  database host) gets the redis-server package, installed with its service held back
  (a policy-rc.d for that one apt run), so Debian's passwordless default never runs;
  then /etc/redis/redis.conf from templates/redis.conf.j2: a cache (LRU eviction within
  ``cache_maxmemory_mb``, nothing on disk); loopback only when every client is on this
  host, else TLS only (no plain port) on the host's address (``cache_listen_addr``, else
  its inventory name), which its own clients dial too, with the host's certificate from
  the deploy's CA. Its ACL turns the ``default`` user off and
  lets in one user for the DAL (:data:`USER`, limited to
  :data:`donnadb.config.CACHE_REDIS_ACL`), whose password is generated on the cache
  host by files/filecopies.py and kept in the ACL file as a SHA-256 only;
* every host using it (database hosts, for `donnactl users forget`; application hosts):
  root's copy of the password (copied from the cache host over the deploy's own
  connections, like the application's passfile: never argv, a log or the control
  machine), one 0600 copy per consumer that runs the DAL, and CACHE_* lines in its
  settings file (:func:`client_env`).

Running it again changes nothing; a changed redis.conf, ACL file or certificate
restarts Redis (it holds only a cache). Turning the cache off writes
CACHE_ENABLED=false lines no more and leaves Redis installed.
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.host import Host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Command, Hostname
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from donnadb.config import CACHE_PASSWORD_DIR, CACHE_REDIS_ACL
from donnadb.errors import ConfigError
from donnadb.provision import bootstrap, sharedfile, tls
from donnadb.provision.facts import PidfileRunning, SystemdRunning
from donnadb.provision.settings import (
    APP_GROUP,
    DB_GROUP,
    DeploySettings,
    load_deploy_settings,
)

#: The Redis ACL user the DAL logs in as (CACHE_USERNAME).
USER = "donnadb"
CONF = "/etc/redis/redis.conf"
ACL_FILE = "/etc/redis/users.acl"
PIDFILE = "/run/redis/redis-server.pid"
#: Redis's own copies of the TLS files: it cannot enter /etc/donnadb (root:donnadb 0750).
CERT = "/etc/redis/tls.crt"
KEY = "/etc/redis/tls.key"
CA = "/etc/redis/ca.crt"
#: Debian's policy-rc.d protocol: 101 = "action forbidden" for every service.
POLICY_RC_D = "/usr/sbin/policy-rc.d"


def held_back_install(package: str) -> str:
    """The shell command installing ``package`` while its maintainer scripts may start
    no service: a policy-rc.d for that apt run, removed again unless the host had one."""
    return (f"own=; [ -e {POLICY_RC_D} ] || {{ printf '#!/bin/sh\\nexit 101\\n' > "
            f"{POLICY_RC_D} && chmod 755 {POLICY_RC_D} && own=1; }}; "
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {shlex.quote(package)}; rc=$?; "
            f'[ -z "$own" ] || rm -f {POLICY_RC_D}; exit $rc')


def cache_host(settings: DeploySettings, target: Host) -> Host:
    """The host that runs Redis for ``target``'s inventory.

    :raises ConfigError: ``cache_server`` names no database or application host.
    """
    assert settings.cache is not None
    if settings.cache.server is not None:
        for candidate in sharedfile.dal_hosts(target):
            if candidate.name == settings.cache.server:
                return candidate
        raise ConfigError(f"group_data cache_server={settings.cache.server!r} is not a host "
                          f"of the inventory's {DB_GROUP} or {APP_GROUP}")
    return sharedfile.default_origin(target, "cache_enabled")


def is_cache_host(settings: DeploySettings, target: Host) -> bool:
    """``target`` runs Redis (by name: deploy.py's ``host`` is pyinfra's context proxy,
    never the inventory's Host object itself)."""
    return settings.cache is not None and cache_host(settings, target).name == target.name


def uses_tls(target: Host) -> bool:
    """Other hosts than the cache host use it: TLS only."""
    return len(sharedfile.dal_hosts(target)) > 1


def dial_address(server: Host) -> str:
    """The name other hosts dial: the cache host's ``cache_listen_addr`` (its own,
    validated settings), else its inventory name (both are in its certificate)."""
    cache = load_deploy_settings(server.data).cache
    return (cache.listen_addr if cache is not None else None) or server.name


def password_file(settings: DeploySettings, user: str = sharedfile.ROOT_COPY) -> str:
    """``user``'s copy of the password (root's by default)."""
    return sharedfile.secret_path(settings, CACHE_PASSWORD_DIR, user)


def client_env(settings: DeploySettings, target: Host, user: str = sharedfile.ROOT_COPY
               ) -> dict[str, str]:
    """The CACHE_* lines of ``target``'s settings file, for ``user``'s password copy
    (none when the cache is off)."""
    if settings.cache is None:
        return {}
    server = cache_host(settings, target)
    env = {"CACHE_ENABLED": "true",
           "CACHE_URL": f"redis://127.0.0.1:{settings.cache.port}/0",
           "CACHE_USERNAME": USER, "CACHE_PASSWORD_FILE": password_file(settings, user),
           "CACHE_TTL_SECONDS": str(settings.cache.ttl_seconds)}
    if uses_tls(target):
        env["CACHE_URL"] = f"rediss://{dial_address(server)}:{settings.cache.tls_port}/0"
        env["CACHE_SSLROOTCERT"] = tls.CA_FILE
    return env


@operation()
def package_held_back(package: str):
    """``package`` installed without letting its maintainer scripts start its service."""
    if package in (host.get_fact(DebPackages) or {}):
        host.noop(f"{package} is installed")
    else:
        yield held_back_install(package)


@operation()
def redis_signalled(action: str):
    """Without systemd: ``start`` Redis when it is not running, ``restart`` it when it is."""
    running = host.get_fact(PidfileRunning, pidfile=PIDFILE)
    if action == "start" and running:
        host.noop("redis-server is running")
    elif action == "restart" and not running:
        host.noop("redis-server is not running: it starts next")
    else:
        yield f"/etc/init.d/redis-server {action}"


@operation()
def unit_unmasked(unit: str):
    """``unit`` is not masked (the test suite masks the package's service until a deploy
    configures it: Makefile)."""
    state = host.get_fact(Command, command=f"systemctl is-enabled {unit} 2>/dev/null || true")
    if state.strip() == "masked":
        yield f"systemctl unmask {unit}"
    else:
        host.noop(f"{unit} is not masked")


@deploy("Cache server (Redis)")
def install_cache_server(settings: DeploySettings) -> None:
    """Redis on this host, the cache host; see the module docstring."""
    assert settings.cache is not None
    package_held_back(name="Install redis-server (its service held back until configured)",
                      package="redis-server")
    sharedfile.upload_helper(settings)
    sharedfile.secret_dir(settings, CACHE_PASSWORD_DIR)
    args = (f"ensure --password-file {password_file(settings)} --acl-file {ACL_FILE} "
            f"--user {USER} --acl {shlex.quote(CACHE_REDIS_ACL)}")
    acl = sharedfile.helper_converged(
        name=f"Redis users: default off, {USER} with a password made here",
        helper=sharedfile.helper_path(settings), args=args)
    changes = [acl]
    tls_addr = None
    if uses_tls(host):
        tls_addr = dial_address(host)
        names = tls.server_names(settings, host.name, host.get_fact(Hostname))
        if tls_addr not in names:
            raise ConfigError(f"cache host {host.name}: cache_listen_addr={tls_addr!r} must "
                              "be in its certificate; set it in this host's inventory data")
        ca_op = files.put(name=f"Write {CA} (the deploy's CA certificate)",
                          src=StringIO(tls.authority(settings).cert_pem), dest=CA,
                          user="root", group="redis", mode="644")
        changes += [ca_op, *tls.put_certificate(settings, names, CERT, KEY, "redis")]
    conf = bootstrap.render("redis.conf.j2", cache=settings.cache, tls_addr=tls_addr,
                            cert=CERT, key=KEY, ca=CA, aclfile=ACL_FILE,
                            pidfile=PIDFILE)
    changes.append(files.put(name=f"Write {CONF}", src=StringIO(conf), dest=CONF, user="root",
                             group="redis", mode="640"))
    restart_if = any_changed(*changes)
    if host.get_fact(SystemdRunning):
        unit_unmasked(name="Unmask redis-server (configured now)", unit="redis-server.service")
        systemd.service(name="Restart redis-server (settings, users or certificate changed)",
                        service="redis-server", restarted=True, _if=restart_if)
        systemd.service(name="Run redis-server now and at boot", service="redis-server",
                        running=True, enabled=True)
        return
    redis_signalled(name="Restart redis-server (settings, users or certificate changed)",
                    action="restart", _if=restart_if)
    redis_signalled(name="Start redis-server (no systemd: its init script)", action="start")


@deploy("Cache password")
def hand_over_cache_password(settings: DeploySettings, target: Host,
                             users: list[str]) -> None:
    """Root's copy of the cache password from the cache host, and ``users``' copies
    (deploy.py: every host, from one line, after every host's own steps)."""
    origin = cache_host(settings, target) if settings.cache is not None else None
    sharedfile.hand_over(settings, target, origin=origin, folder=CACHE_PASSWORD_DIR,
                         what="The cache password", users=users)

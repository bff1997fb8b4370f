"""PgBouncer in front of PostgreSQL: transaction pooling, SCRAM logins via auth_query.

What the deploy converges (every setting is a ``pgbouncer_*`` key of group_data):

* the Debian package (PgBouncer 1.18 on Debian 12);
* (in every database, by its bootstrap: provision/bootstrap.py and database.py) a
  lookup role (``pgbouncer_auth_user``) and the SECURITY DEFINER function
  ``pgbouncer.user_lookup`` that hands PgBouncer the SCRAM verifier of the roles
  allowed through it (templates/pgbouncer_auth.sql.j2), so no application password is
  ever copied into a file;
* the lookup role's password, generated on the host by the deploy's password helper
  into the passfile, and the auth_file (0600 postgres) written from it on the host by
  files/pgbouncer_authfile.py, which also holds the stats users' SCRAM verifiers;
* /etc/pgbouncer/pgbouncer.ini from templates/pgbouncer.ini.j2 (TLS required of
  clients over TCP, verify-full towards PostgreSQL, with provision/tls.py's files);
* the daemon: systemd's unit when systemd is PID 1, else ``pgbouncer -d`` as postgres
  (``setpriv``) with its open-file limit raised, when not running (a running one below
  that limit is restarted). A changed ini or auth_file reloads it (SIGHUP); a changed
  listen address or port restarts it, since a reload cannot rebind.

Running it again changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from donnadb.errors import ConfigError
from donnadb.provision import bootstrap
from donnadb.provision.facts import (
    PassfileRoles,
    PidfileRunning,
    StalePasswords,
    SystemdRunning,
)
from donnadb.provision.passwords import helper_path as password_helper_path
from donnadb.provision.psql import guarded
from donnadb.provision.settings import IDENT_RE, DeploySettings, load_deploy_settings
from donnadb.provision.tls import CA_FILE, SERVER_CERT, SERVER_KEY

TEMPLATES = Path(__file__).resolve().parent / "templates"
FILES = Path(__file__).resolve().parent / "files"
CONF_DIR = "/etc/pgbouncer"
INI = f"{CONF_DIR}/pgbouncer.ini"
AUTH_FILE = f"{CONF_DIR}/userlist.txt"
PIDFILE = "/var/run/postgresql/pgbouncer.pid"
LOGFILE = "/var/log/postgresql/pgbouncer.log"
#: systemd drop-in for Debian's pgbouncer.service (read only where systemd runs).
DROPIN = "/etc/systemd/system/pgbouncer.service.d/donna.conf"

#: group_data keys and their defaults (group_data/all.py documents each).
DEFAULTS: dict[str, Any] = {
    "pgbouncer_port": 6432,
    "pgbouncer_listen_addr": "127.0.0.1",
    "pgbouncer_auth_user": bootstrap.AUTH_USER,
    "pgbouncer_auth_user_connlimit": bootstrap.AUTH_USER_CONNLIMIT,
    "pgbouncer_lookup_kinds": bootstrap.LOOKUP_KINDS,
    "pgbouncer_stats_kinds": ("readonly",),
    "pgbouncer_admin_users": (),
    "pgbouncer_default_pool_size": 20,
    "pgbouncer_min_pool_size": 0,
    "pgbouncer_reserve_pool_size": 5,
    "pgbouncer_reserve_pool_timeout": 3,
    "pgbouncer_max_client_conn": 2000,
    "pgbouncer_max_db_connections": 60,
    "pgbouncer_server_idle_timeout": 600,
    "pgbouncer_query_wait_timeout": 30,
    "pgbouncer_idle_transaction_timeout": 60,
    "pgbouncer_fallback_database": True,
}

@dataclass(frozen=True)
class PgBouncerSettings:
    """What pgbouncer.ini.j2 and the operations need, validated."""

    port: int
    listen_addr: str
    auth_user: str
    auth_user_connlimit: int
    lookup_roles: tuple[str, ...]
    stats_users: tuple[str, ...]
    admin_users: tuple[str, ...]
    default_pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    reserve_pool_timeout: int
    max_client_conn: int
    max_db_connections: int
    server_idle_timeout: int
    query_wait_timeout: int
    idle_transaction_timeout: int
    fallback_database: bool
    db_name: str
    server_host: str
    server_port: int
    auth_file: str = AUTH_FILE
    pidfile: str = PIDFILE
    logfile: str = LOGFILE
    tls_cert_file: str = SERVER_CERT
    tls_key_file: str = SERVER_KEY
    tls_ca_file: str = CA_FILE

    @property
    def nofile(self) -> int:
        """Open files PgBouncer needs: every client and server socket, plus slack."""
        return self.max_client_conn + 2 * max(self.max_db_connections, 100) + 100


def load_pgbouncer_settings(data: Any, settings: DeploySettings) -> PgBouncerSettings:
    """``pgbouncer_*`` keys of group_data (defaults: :data:`DEFAULTS`).

    :raises ConfigError: a value is malformed (the message names the key).
    """

    def get(key: str) -> Any:
        value = data.get(key, None)
        return DEFAULTS[key] if value is None else value

    def kinds(key: str) -> tuple[str, ...]:
        names = []
        for kind in get(key):
            if kind not in settings.roles:
                raise ConfigError(f"group_data {key}: unknown role kind {kind!r}; "
                                  f"use {', '.join(settings.roles)}")
            names.append(settings.role(kind))
        return tuple(names)

    auth_user = get("pgbouncer_auth_user")
    if not isinstance(auth_user, str) or not IDENT_RE.match(auth_user):
        raise ConfigError(f"group_data pgbouncer_auth_user={auth_user!r} is not a plain "
                          "lower-case SQL name")
    port = int(get("pgbouncer_port"))
    if not 1 <= port <= 65535 or port == settings.pg_port:
        raise ConfigError(f"group_data pgbouncer_port={port} must be a free TCP port other "
                          f"than PostgreSQL's {settings.pg_port}")
    ints = {k: int(get(f"pgbouncer_{k}")) for k in (
        "auth_user_connlimit", "default_pool_size", "min_pool_size", "reserve_pool_size",
        "reserve_pool_timeout", "max_client_conn", "max_db_connections",
        "server_idle_timeout", "query_wait_timeout", "idle_transaction_timeout")}
    if ints["default_pool_size"] < 1 or ints["max_client_conn"] < 1:
        raise ConfigError("group_data pgbouncer_default_pool_size and "
                          "pgbouncer_max_client_conn must be at least 1")
    admins = tuple(get("pgbouncer_admin_users"))
    for name in admins:
        if not IDENT_RE.match(name):
            raise ConfigError(f"group_data pgbouncer_admin_users: {name!r} is not a role name")
    return PgBouncerSettings(
        port=port,
        listen_addr=str(get("pgbouncer_listen_addr")),
        auth_user=auth_user,
        lookup_roles=kinds("pgbouncer_lookup_kinds"),
        stats_users=kinds("pgbouncer_stats_kinds"),
        admin_users=admins,
        fallback_database=bool(get("pgbouncer_fallback_database")),
        db_name=settings.db_name,
        server_host=settings.db_host,
        server_port=settings.pg_port,
        **ints,
    )


def render_ini(cfg: PgBouncerSettings) -> str:
    return bootstrap.render("pgbouncer.ini.j2", cfg=cfg)


def dropin_text(cfg: PgBouncerSettings) -> str:
    # Debian's unit runs pgbouncer in the foreground with systemd's default open-file
    # limit (1024 soft): too few for max_client_conn. Without systemd, _start_command's
    # ulimit does the same.
    return ("# Managed by the donnadb deploy (group_data pgbouncer_max_client_conn).\n"
            f"[Service]\nLimitNOFILE={cfg.nofile}\n")


# --- facts ----------------------------------------------------------------------------
class PgBouncerOpenFiles(FactBase):
    """The running PgBouncer's soft open-file limit; None when it does not run."""

    def command(self, pidfile: str) -> str:
        return (f'if [ -f {pidfile} ] && kill -0 "$(cat {pidfile})" 2>/dev/null; then '
                f'awk \'/^Max open files/ {{print $4}}\' "/proc/$(cat {pidfile})/limits"; '
                "else echo none; fi")

    def process(self, output):
        value = output[0].strip() if output else "none"
        if value == "none":
            return None
        return 10**9 if value == "unlimited" else int(value)


class PgBouncerListen(FactBase[str]):
    """``listen_addr``/``listen_port`` lines of the current ini ("" when absent)."""

    def command(self, ini: str) -> str:
        return f"grep -E '^listen_(addr|port) *=' {ini} 2>/dev/null || true"

    def process(self, output):
        return "\n".join(line.strip() for line in output)

    @staticmethod
    def default():
        return ""


class AuthFileProblems(FactBase):
    """The auth_file helper's check output (one line per problem); None when unknown."""

    def command(self, helper: str, passfile: str, auth_file: str, port: int,
                auth_user: str, stats_users: list[str]) -> str:
        run = (f"python3 {helper} check --passfile {passfile} --auth-file {auth_file} "
               f"--port {int(port)} {auth_user} " + " ".join(stats_users))
        return guarded(f"if [ -f {helper} ]; then {run}; else echo 'helper missing'; fi", port)

    def process(self, output):
        lines = [line.strip() for line in output]
        if "#donnadb:end" not in lines:
            return None
        return [line for line in lines if line and line != "#donnadb:end"]


# --- operations -----------------------------------------------------------------------
@operation()
def auth_password_present(helper: str, passfile: str, role: str):
    """Generate the lookup role's password on the host (the deploy's password helper)."""
    if role in set(host.get_fact(PassfileRoles, path=passfile)):
        host.noop(f"{role} has a password in {passfile}")
    else:
        yield f"python3 {helper} ensure --passfile {passfile} {role}"


@operation()
def auth_password_applied(helper: str, passfile: str, port: int, role: str):
    """Store the lookup role's SCRAM verifier in PostgreSQL when it differs."""
    stale = host.get_fact(StalePasswords, helper=helper, passfile=passfile, port=port,
                          role_names=[role])
    if stale == []:
        host.noop(f"{role}'s stored verifier matches the passfile")
    else:
        yield f"python3 {helper} apply --passfile {passfile} --port {int(port)} {role}"


@operation()
def auth_file_written(helper: str, passfile: str, auth_file: str, port: int,
                      auth_user: str, stats_users: list[str]):
    """(Re)write the auth_file on the host when the helper's check reports a problem."""
    problems = host.get_fact(AuthFileProblems, helper=helper, passfile=passfile,
                             auth_file=auth_file, port=port, auth_user=auth_user,
                             stats_users=stats_users)
    if problems == []:
        host.noop(f"{auth_file} is up to date")
    else:
        yield (f"python3 {helper} write --passfile {passfile} --auth-file {auth_file} "
               f"--port {int(port)} {auth_user} " + " ".join(stats_users))


def _start_command(ini: str, nofile: int) -> str:
    # PgBouncer forks into the background (-d) once it listens, so the port is bound when
    # this returns. The pidfile's directory is PostgreSQL's socket directory (a tmpfs).
    # The open-file limit is raised (soft and hard) or the start fails saying so; setpriv
    # (not runuser, whose PAM session resets the soft limit) then drops to postgres.
    n = int(nofile)
    return (f"install -d -o postgres -g postgres -m 2775 /var/run/postgresql && cd / && "
            f"(ulimit -n {n} || {{ echo 'cannot raise the open-file limit to {n} for "
            f"pgbouncer: raise the hard limit (ulimit -Hn) or lower pgbouncer_max_client_conn'"
            f" >&2; exit 1; }}; exec setpriv --reuid=postgres --regid=postgres --init-groups "
            f"pgbouncer -d {ini})")


def _stop_command(pidfile: str) -> str:
    # SIGTERM: immediate shutdown; wait (10 s at most) until the process has gone.
    return (f'pid="$(cat {pidfile})"; kill -TERM "$pid"; '
            f'for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; '
            f'! kill -0 "$pid" 2>/dev/null')


@operation()
def daemon_started(ini: str, pidfile: str, nofile: int):
    """Start PgBouncer as postgres (no systemd) unless it runs."""
    if host.get_fact(PidfileRunning, pidfile=pidfile):
        host.noop("pgbouncer is running")
    else:
        yield _start_command(ini, nofile)


@operation()
def daemon_limit_applied(ini: str, pidfile: str, nofile: int):
    """Restart a running PgBouncer whose open-file limit is below ``nofile`` (started
    before the limit was raised, or by hand)."""
    limit = host.get_fact(PgBouncerOpenFiles, pidfile=pidfile)
    if limit is None or limit >= nofile:
        host.noop(f"pgbouncer's open-file limit is {limit}")
        return
    yield _stop_command(pidfile)
    yield _start_command(ini, nofile)


@operation()
def daemon_signalled(ini: str, pidfile: str, nofile: int, action: str):
    """``reload`` (SIGHUP: re-read ini and auth_file) or ``restart`` a running PgBouncer."""
    if action not in ("reload", "restart"):
        raise ValueError(f"action must be reload or restart, not {action!r}")
    if not host.get_fact(PidfileRunning, pidfile=pidfile):
        host.noop(f"pgbouncer is not running: nothing to {action}")
    elif action == "reload":
        yield f'kill -HUP "$(cat {pidfile})"'
    else:
        yield _stop_command(pidfile)
        yield _start_command(ini, nofile)


@deploy("Install PgBouncer")
def converge_auth_password(settings: DeploySettings) -> None:
    """The lookup role's password in the root passfile and its verifier in PostgreSQL (on
    a cluster's leader; the other members copy the passfile and replicate the role)."""
    cfg = load_pgbouncer_settings(host.data, settings)
    pw_helper = password_helper_path(settings)
    auth_password_present(name=f"Generate {cfg.auth_user}'s password on the host",
                          helper=pw_helper, passfile=settings.db_passfile, role=cfg.auth_user)
    auth_password_applied(name=f"Apply {cfg.auth_user}'s SCRAM verifier", helper=pw_helper,
                          passfile=settings.db_passfile, port=settings.pg_port,
                          role=cfg.auth_user)


@deploy("Install PgBouncer")
def install_pgbouncer(settings: DeploySettings | None = None, *,
                      tls_changed: Callable[[], bool] | None = None,
                      own_password: bool = True) -> None:
    """PgBouncer in front of PostgreSQL; see the module docstring for what it converges.

    ``tls_changed()`` true (a new certificate, key or CA: provision/tls.py) restarts it,
    so the new files are certainly the ones it serves. ``own_password`` False: the
    lookup role's password is already converged (a cluster's leader did it).

    :raises ConfigError: a ``pgbouncer_*`` (or other) group_data setting is invalid.
    """
    s = settings or load_deploy_settings(host.data)
    cfg = load_pgbouncer_settings(host.data, s)
    lib = s.donnadb_lib_dir
    port = s.pg_port

    apt.packages(name="Install the pgbouncer package", packages=["pgbouncer"],
                 cache_time=s.pg_apt_cache_time, update=True)

    if own_password:
        converge_auth_password(s)
    af_helper = f"{lib}/pgbouncer_authfile.py"
    files.put(name="Upload the auth_file helper", src=str(FILES / "pgbouncer_authfile.py"),
              dest=af_helper, user="root", group="root", mode="700")
    authfile = auth_file_written(name=f"Write {cfg.auth_file} (0600 postgres)",
                                 helper=af_helper, passfile=s.db_passfile,
                                 auth_file=cfg.auth_file, port=port,
                                 auth_user=cfg.auth_user, stats_users=list(cfg.stats_users))

    # Read before the template changes it: a new listen address/port needs a restart.
    old_listen = host.get_fact(PgBouncerListen, ini=INI)
    new_listen = f"listen_addr = {cfg.listen_addr}\nlisten_port = {cfg.port}"
    ini = files.put(name=f"Write {INI}", src=_as_file(render_ini(cfg)), dest=INI,
                    user="postgres", group="postgres", mode="640")
    rebind = bool(old_listen) and old_listen != new_listen
    changed = any_changed(ini, authfile)
    # A restart re-reads everything: no reload on top of it.
    reload_if = (lambda: changed() and not ini.did_change()) if rebind else changed

    # Installed always, like the other unit files; systemd reads it where it runs.
    dropin = files.put(name=f"Write {DROPIN} (open-file limit)", src=_as_file(dropin_text(cfg)),
                       dest=DROPIN, user="root", group="root", mode="644")

    new_tls = tls_changed or (lambda: False)
    if host.get_fact(SystemdRunning):
        # A new limit applies only to a new process: restart, as for a new listen address.
        def restart_if() -> bool:
            return dropin.did_change() or (rebind and ini.did_change()) or new_tls()

        systemd.daemon_reload(name="Reload systemd (pgbouncer drop-in changed)",
                              _if=dropin.did_change)
        systemd.service(name="Restart pgbouncer (listen address or open-file limit changed)",
                        service="pgbouncer", restarted=True, _if=restart_if)
        systemd.service(name="Reload pgbouncer (config or auth_file changed)",
                        service="pgbouncer", reloaded=True,
                        _if=lambda: changed() and not restart_if())
        systemd.service(name="Run pgbouncer now and at boot", service="pgbouncer",
                        running=True, enabled=True)
        return
    if rebind:
        daemon_signalled(name="Restart pgbouncer (listen address changed)", ini=INI,
                         pidfile=cfg.pidfile, nofile=cfg.nofile, action="restart",
                         _if=ini.did_change)
    daemon_signalled(name="Restart pgbouncer (TLS certificate, key or CA changed)", ini=INI,
                     pidfile=cfg.pidfile, nofile=cfg.nofile, action="restart", _if=new_tls)
    daemon_signalled(name="Reload pgbouncer (config or auth_file changed)", ini=INI,
                     pidfile=cfg.pidfile, nofile=cfg.nofile, action="reload",
                     _if=reload_if)
    daemon_limit_applied(name=f"Restart pgbouncer (open-file limit below {cfg.nofile})",
                         ini=INI, pidfile=cfg.pidfile, nofile=cfg.nofile)
    daemon_started(name="Start pgbouncer (no systemd: setpriv postgres, -d)", ini=INI,
                   pidfile=cfg.pidfile, nofile=cfg.nofile)


def _as_file(text: str) -> StringIO:
    return StringIO(text)

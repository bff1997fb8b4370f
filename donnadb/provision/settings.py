"""The deploy's settings for one host: group_data (and inventory overrides), validated.

Every @deploy function takes a :class:`DeploySettings` instead of reading ``host.data``
itself, so a missing or malformed setting is one clear error before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donnadb import config
from donnadb.errors import ConfigError
from donnadb.provision import bootstrap

#: Inventory groups (deploy.py): what each host runs.
DB_GROUP = "db_servers"
APP_GROUP = "app_servers"
MONITOR_GROUP = "monitor_servers"
#: Role and database names are pasted into SQL as identifiers; keep them boring.
IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: The kinds of role the deploy manages, in creation order (the owner first).
ROLE_KINDS = ("owner", "migrator", "app", "readonly", "backup", "monitor")
LOGIN_KINDS = ("migrator", "app", "readonly", "backup", "monitor")
#: Tuning formulas group_data must define: f(memory_mb, cpus, max_connections).
FORMULAS = (
    "pg_shared_buffers_mb",
    "pg_effective_cache_size_mb",
    "pg_work_mem_mb",
    "pg_maintenance_work_mem_mb",
    "pg_max_worker_processes",
    "pg_max_parallel_workers_per_gather",
    "pg_max_parallel_workers",
)
CHECKOUT = Path(__file__).resolve().parents[2]
#: The deploy's own CA on the control machine, unless group_data says otherwise.
DEFAULT_TLS_CA_DIR = "~/.local/share/donnadb/ca"
#: The Debian packages for group_data's pg_version: the server (contrib modules such as
#: pg_stat_statements are part of it), pg_partman and pgaudit.
PG_PACKAGES = ("postgresql-{v}", "postgresql-{v}-partman", "postgresql-{v}-pgaudit")


@dataclass(frozen=True)
class RoleSpec:
    """What one managed role must look like."""

    kind: str
    name: str
    login: bool
    connlimit: int = -1
    member_of: tuple[str, ...] = ()
    #: Server settings the role always gets (ALTER ROLE ... SET), e.g. statement_timeout.
    settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HaSettings:
    """group_data ``ha_*``: the Patroni + etcd cluster of the db_servers hosts
    (provision/ha.py). Ports are the field's defaults (Patroni's REST API, etcd, and
    HAProxy's leader/replica ports as autobase and Patroni's own examples use them)."""

    scope: str = "donna"
    #: The name clients dial on every host: HAProxy there, in every node's certificate.
    service_name: str = "donna-db"
    write_port: int = 5000
    read_port: int = 5001
    rest_port: int = 8008
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    #: HAProxy's read port sends a replica no reads once it lags more than this.
    read_max_lag_bytes: int = 1024 * 1024
    #: Patroni's failover candidate limit (``maximum_lag_on_failover``).
    max_lag_on_failover_bytes: int = 1024 * 1024
    synchronous_mode_strict: bool = False
    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10


@dataclass(frozen=True)
class CacheSettings:
    """group_data ``cache_*``: the DAL's Redis cache (provision/cacheserver.py), present
    when ``cache_enabled``. Every host reads its own copy; ``listen_addr`` is the cache
    host's own (an inventory override), ``server`` the same on every host."""

    #: Inventory name of the host running Redis (None: the first application host,
    #: else the first database host).
    server: str | None = None
    #: Plain port on loopback, used when every client is on the cache host itself.
    port: int = 6379
    #: TLS port, used (by every client, local ones too) when other hosts use the cache.
    tls_port: int = 6380
    #: The cache host's address other hosts dial (None: its inventory name).
    listen_addr: str | None = None
    maxmemory_mb: int = 256
    #: CACHE_TTL_SECONDS of every host (the staleness bound; docs/dal.md, "Cache").
    ttl_seconds: int = 60


@dataclass(frozen=True)
class DeploySettings:
    pg_version: int
    pg_cluster: str
    pg_port: int
    pg_apt_cache_time: int
    pg_listen_addresses: str
    pg_hba_networks: tuple[str, ...]
    pg_max_connections: int
    pg_log_min_duration_statement_ms: int
    pg_partman_bgw_interval_s: int
    pg_partman_bgw_role: str
    pg_wal: dict[str, Any]
    pg_random_page_cost: float
    pg_effective_io_concurrency: int
    pg_extra_settings: dict[str, Any]
    roles: dict[str, RoleSpec]
    db_host: str
    db_name: str
    db_passfile: str
    donnadb_env_file: str
    donnadb_env_extra: dict[str, str]
    donnadb_lib_dir: str
    #: The source tree the deploy ships (the checkout running it); not a setting.
    donnadb_checkout: str
    formulas: dict[str, Any] = field(repr=False)
    #: PgBouncer: the app role's default path (PGBOUNCER_PORT in donnadb.env); every
    #: database's bootstrap installs the lookup for auth_user (see provision/bootstrap.py).
    pgbouncer_port: int = 6432
    pgbouncer_auth_user: str = bootstrap.AUTH_USER
    pgbouncer_auth_user_connlimit: int = bootstrap.AUTH_USER_CONNLIMIT
    pgbouncer_lookup_kinds: tuple[str, ...] = bootstrap.LOOKUP_KINDS
    #: pgaudit.log: the statement classes audited (provision/tuning.py writes it).
    pg_audit_log: str = "role, ddl"
    #: Role kinds allowed over TCP from loopback only (provision/hba.py).
    pg_hba_local_only_kinds: tuple[str, ...] = ("migrator", "backup", "app", "monitor")
    #: Networks the application role may still connect from directly, bypassing PgBouncer.
    pg_app_direct_networks: tuple[str, ...] = ()
    #: OS user -> the role kinds its own passfile holds (provision/consumers.py).
    db_consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Root-owned home of the shipped code: venv/, schema/migrations/, bin/ (install.py).
    donnadb_install_dir: str = "/opt/donnadb"
    #: group_data ops_env: more NAME=value lines for donnadb.env (config.Settings fields).
    ops_env: dict[str, str] = field(default_factory=dict)
    #: The host's budget for the tuning formulas (None: its RAM and CPUs, from facts).
    host_memory_mb: int | None = None
    host_cpus: int | None = None
    #: Application hosts: the extras installed beside the DAL ("loadtest" for a host that
    #: runs the load test), and the inventory name of their database host (None: the
    #: only host of the db_servers group).
    app_extras: tuple[str, ...] = ()
    app_db_server: str | None = None
    #: Where PgBouncer listens (also a name in the server certificate).
    pgbouncer_listen_addr: str = "127.0.0.1"
    #: TLS (provision/tls.py, provision/ca.py): the CA's directory on the machine running
    #: the deploy (~ expanded), an operator's CA instead, extra names for the certificate.
    tls_ca_dir: str = str(Path(DEFAULT_TLS_CA_DIR).expanduser())
    tls_ca_cert_file: str | None = None
    tls_ca_key_file: str | None = None
    tls_server_names: tuple[str, ...] = ()
    #: The high-availability cluster (group_data ``ha = True``), None on a single host.
    ha: HaSettings | None = None
    #: The DAL's Redis cache (group_data ``cache_enabled = True``), None when off.
    cache: CacheSettings | None = None
    #: Field encryption's key file on every host running the DAL (provision/fieldkeys.py).
    crypto_enabled: bool = False
    #: The KMS key that seals that key file, its region and endpoint (None: in clear).
    crypto_kms_key_id: str | None = None
    crypto_kms_region: str | None = None
    crypto_kms_endpoint_url: str | None = None

    @property
    def pg_packages(self) -> tuple[str, ...]:
        """The Debian packages of :data:`PG_PACKAGES` for ``pg_version``."""
        return tuple(name.format(v=self.pg_version) for name in PG_PACKAGES)

    @property
    def conf_dir(self) -> str:
        return f"/etc/postgresql/{self.pg_version}/{self.pg_cluster}"

    def role(self, kind: str) -> str:
        return self.roles[kind].name

    @property
    def login_roles(self) -> list[str]:
        return [self.roles[k].name for k in LOGIN_KINDS]

    def tuning(self, memory_mb: int, cpus: int) -> dict[str, int]:
        """Each formula of group_data evaluated for this host (name without ``pg_``)."""
        return {
            name.removeprefix("pg_"): int(fn(memory_mb, cpus, self.pg_max_connections))
            for name, fn in self.formulas.items()
        }


def _ident(what: str, value: object) -> str:
    if not isinstance(value, str) or not IDENT_RE.match(value):
        raise ConfigError(
            f"group_data {what}={value!r} is not a plain lower-case SQL name; "
            "use letters, digits and _ (max 63)"
        )
    return value


#: The per-role settings group_data may set (and the deploy resets when left out).
ROLE_SETTING_NAMES = ("statement_timeout", "lock_timeout",
                      "idle_in_transaction_session_timeout", "idle_session_timeout")
_SETTING_VALUE = re.compile(r"^[0-9]+\s*(us|ms|s|min|h|d)?$")


def _role_settings(raw: Any) -> dict[str, tuple[tuple[str, str], ...]]:
    """group_data ``pg_role_settings`` ({kind: {name: value}}), checked.

    :raises ConfigError: an unknown role kind, setting name or value (names which).
    """
    if not isinstance(raw, dict):
        raise ConfigError("group_data pg_role_settings must be {role kind: {setting: value}}")
    checked = {}
    for kind, values in raw.items():
        if kind not in ROLE_KINDS or not isinstance(values, dict):
            raise ConfigError(f"group_data pg_role_settings: {kind!r} is not one of "
                              f"{', '.join(ROLE_KINDS)} with a dict of settings")
        for name, value in values.items():
            if name not in ROLE_SETTING_NAMES or not _SETTING_VALUE.match(str(value)):
                raise ConfigError(f"group_data pg_role_settings[{kind!r}]: {name} = {value!r} "
                                  f"is not one of {', '.join(ROLE_SETTING_NAMES)} with a "
                                  "duration such as '30s'")
        checked[kind] = tuple(sorted((n, str(v).replace(" ", "")) for n, v in values.items()))
    return checked


def load_deploy_settings(data: Any) -> DeploySettings:
    """Build settings from pyinfra's ``host.data``.

    :raises ConfigError: a setting is missing or invalid (the message names it).
    """
    _refuse_retired(data)
    roles = _roles(data)
    return DeploySettings(
        **_server_fields(data, roles),
        roles=roles,
        **_host_fields(data),
        formulas=_formulas(data),
        **_pgbouncer_fields(data),
        **_tls_fields(data),
        ha=_ha(data),
        cache=_cache(data),
    )


def _ha(data: Any) -> HaSettings | None:
    """``ha`` and its ``ha_*`` settings, checked; None when ``ha`` is off.

    :raises ConfigError: a value of the wrong kind (the message names it).
    """
    if not data.get("ha"):
        return None
    values = {}
    for name, default in HaSettings.__dataclass_fields__.items():
        value = data.get(f"ha_{name}")
        if value is None:
            continue
        kind = type(default.default)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"group_data ha_{name}={value!r} must be a positive whole number")
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"group_data ha_{name}={value!r} must be True or False")
        if kind is str and not re.match(r"^[a-z0-9][a-z0-9.-]{0,62}$", str(value)):
            raise ConfigError(f"group_data ha_{name}={value!r} must be a lower-case DNS label "
                              "(a-z, 0-9, . and -)")
        values[name] = value
    return HaSettings(**values)


def _cache(data: Any) -> CacheSettings | None:
    """``cache_enabled`` and its ``cache_*`` settings, checked; None when it is off.

    :raises ConfigError: a value of the wrong kind (the message names it).
    """
    if not _flag(data, "cache_enabled"):
        return None
    values: dict[str, Any] = {}
    for name in ("server", "listen_addr"):
        value = data.get(f"cache_{name}")
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$",
                                              str(value)):
            raise ConfigError(f"group_data cache_{name}={value!r} must be a host name or "
                              "an address")
        values[name] = value
    for name in ("port", "tls_port", "maxmemory_mb", "ttl_seconds"):
        value = data.get(f"cache_{name}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or \
                (name.endswith("port") and value > 65535):
            raise ConfigError(f"group_data cache_{name}={value!r} must be a positive whole "
                              "number" + (" up to 65535" if name.endswith("port") else ""))
        values[name] = value
    cache = CacheSettings(**values)
    if cache.port == cache.tls_port:
        raise ConfigError(f"group_data cache_port and cache_tls_port are both {cache.port}; "
                          "give them different ports")
    return cache


def _required(data: Any, key: str) -> Any:
    value = data.get(key, _MISSING)
    if value is _MISSING:
        raise ConfigError(
            f"setting {key} is missing from group_data/all.py; "
            "run pyinfra from the repository root so group_data/ is found"
        )
    return value


def _refuse_retired(data: Any) -> None:
    """Settings that no longer exist: refused, so an inventory's override is not ignored."""
    if data.get("pg_packages") is not None:
        raise ConfigError("group_data pg_packages is not a setting: the packages follow "
                          "pg_version (postgresql-{v}, -partman, -pgaudit); remove it")
    if data.get("donnadb_checkout"):
        raise ConfigError("group_data donnadb_checkout is no longer used: the deploy ships "
                          "its own checkout's code to donnadb_install_dir; remove it")


def _roles(data: Any) -> dict[str, RoleSpec]:
    """Every managed role: its name, LOGIN, connection limit, membership and settings."""
    names = {kind: _ident(f"db_role_{kind}", data.get(f"db_role_{kind}",
                                                      getattr(config, f"ROLE_{kind.upper()}")))
             for kind in ROLE_KINDS}
    limits = data.get("pg_role_connection_limits", {}) or {}
    role_settings = _role_settings(data.get("pg_role_settings", {}) or {})
    return {
        kind: RoleSpec(
            kind=kind,
            name=names[kind],
            login=kind != "owner",
            connlimit=int(limits.get(kind, -1)),
            member_of=(names["owner"],) if kind == "migrator" else (),
            settings=role_settings.get(kind, ()),
        )
        for kind in ROLE_KINDS
    }


def _server_fields(data: Any, roles: dict[str, RoleSpec]) -> dict[str, Any]:
    """The ``pg_*`` settings of the cluster itself."""
    bgw_role = data.get("pg_partman_bgw_role") or roles["migrator"].name
    return {
        "pg_version": _pg_version(_required(data, "pg_version")),
        "pg_cluster": _ident("pg_cluster", _required(data, "pg_cluster")),
        "pg_port": int(_required(data, "pg_port")),
        "pg_apt_cache_time": int(_required(data, "pg_apt_cache_time")),
        "pg_listen_addresses": str(_required(data, "pg_listen_addresses")),
        "pg_hba_networks": tuple(_required(data, "pg_hba_networks")),
        "pg_max_connections": int(_required(data, "pg_max_connections")),
        "pg_log_min_duration_statement_ms": int(_required(data,
                                                          "pg_log_min_duration_statement_ms")),
        "pg_partman_bgw_interval_s": int(_required(data, "pg_partman_bgw_interval_s")),
        "pg_partman_bgw_role": _ident("pg_partman_bgw_role", bgw_role),
        "pg_wal": dict(_required(data, "pg_wal")),
        "pg_random_page_cost": float(_required(data, "pg_random_page_cost")),
        "pg_effective_io_concurrency": int(_required(data, "pg_effective_io_concurrency")),
        "pg_extra_settings": dict(data.get("pg_extra_settings") or {}),
        "pg_audit_log": _audit_classes(data.get("pg_audit_log")),
        "pg_hba_local_only_kinds": _kinds("pg_hba_local_only_kinds",
                                          data.get("pg_hba_local_only_kinds"),
                                          ("migrator", "backup", "app")),
        "pg_app_direct_networks": tuple(str(n) for n in data.get("pg_app_direct_networks")
                                        or ()),
    }


def _host_fields(data: Any) -> dict[str, Any]:
    """Where the deploy puts its files on the host and who may read the passwords."""
    install_dir = str(data.get("donnadb_install_dir") or "/opt/donnadb")
    if not install_dir.startswith("/") or ".." in install_dir.split("/"):
        raise ConfigError(f"group_data donnadb_install_dir={install_dir!r} must be an "
                          "absolute path without '..'")
    env_extra = data.get("donnadb_env_extra") or {}
    return {
        "db_host": str(_required(data, "db_host")),
        "db_name": _ident("db_name", _required(data, "db_name")),
        "db_passfile": str(_required(data, "db_passfile")),
        "db_consumers": _consumers(data.get("db_consumers") or {}),
        "donnadb_env_file": str(_required(data, "donnadb_env_file")),
        "donnadb_env_extra": {str(k): str(v) for k, v in env_extra.items()},
        "donnadb_lib_dir": str(_required(data, "donnadb_lib_dir")),
        "donnadb_checkout": str(CHECKOUT),
        "donnadb_install_dir": install_dir.rstrip("/") or "/",
        "ops_env": _env_lines("ops_env", data.get("ops_env") or {}),
        "host_memory_mb": _budget("host_memory_mb", data.get("host_memory_mb"), 256),
        "host_cpus": _budget("host_cpus", data.get("host_cpus"), 1),
        "app_extras": _app_extras(data.get("app_extras") or ()),
        "app_db_server": data.get("app_db_server") or None,
        "crypto_enabled": _flag(data, "crypto_enabled"),
        **{key: _word(data, key) for key in ("crypto_kms_key_id", "crypto_kms_region",
                                             "crypto_kms_endpoint_url")},
    }


def _word(data: Any, key: str) -> str | None:
    """A one-word text setting (unset or empty: None): it goes into a settings file line.

    :raises ConfigError: not text, or it holds white space.
    """
    value = data.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or value.split() != [value]:
        raise ConfigError(f"group_data {key}={value!r} must be one word of text, or None")
    return value


def _flag(data: Any, key: str) -> bool:
    """A True/False setting (unset: False).

    :raises ConfigError: any other value.
    """
    value = data.get(key)
    if not isinstance(value, bool | None):
        raise ConfigError(f"group_data {key}={value!r} must be True or False")
    return bool(value)


#: What an application host may install beside the DAL (requirements/<name>.lock).
APP_EXTRAS = ("loadtest",)


def _budget(what: str, value: Any, least: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"group_data {what}={value!r} must be a whole number of at least "
                          f"{least}, or None to use the host's own")
    return value


def _app_extras(value: Any) -> tuple[str, ...]:
    extras = tuple(value)
    unknown = [e for e in extras if e not in APP_EXTRAS]
    if unknown:
        raise ConfigError(f"group_data app_extras: {unknown[0]!r} is not one of "
                          f"{', '.join(APP_EXTRAS)}")
    return extras


def _formulas(data: Any) -> dict[str, Any]:
    """The tuning formulas of :data:`FORMULAS`, each a function."""
    formulas = {}
    for name in FORMULAS:
        fn = _required(data, name)
        if not callable(fn):
            raise ConfigError(
                f"group_data {name} must be a function (memory_mb, cpus, max_connections)"
            )
        formulas[name] = fn
    return formulas


def _pgbouncer_fields(data: Any) -> dict[str, Any]:
    """What the database bootstrap and donnadb.env need of PgBouncer."""
    lookup_kinds = tuple(data.get("pgbouncer_lookup_kinds") or bootstrap.LOOKUP_KINDS)
    for kind in lookup_kinds:
        if kind not in ROLE_KINDS:
            raise ConfigError(f"group_data pgbouncer_lookup_kinds: unknown role kind {kind!r}; "
                              f"use {', '.join(ROLE_KINDS)}")
    connlimit = data.get("pgbouncer_auth_user_connlimit")
    return {
        "pgbouncer_port": int(data.get("pgbouncer_port") or 6432),
        "pgbouncer_auth_user": _ident("pgbouncer_auth_user",
                                      data.get("pgbouncer_auth_user") or bootstrap.AUTH_USER),
        "pgbouncer_auth_user_connlimit": int(bootstrap.AUTH_USER_CONNLIMIT if connlimit is None
                                             else connlimit),
        "pgbouncer_lookup_kinds": lookup_kinds,
        "pgbouncer_listen_addr": str(data.get("pgbouncer_listen_addr") or "127.0.0.1"),
    }


def _tls_fields(data: Any) -> dict[str, Any]:
    """``tls_*`` of group_data: the CA's place on the control machine and extra names.

    :raises ConfigError: only one of the operator's CA files is set, or a name is empty.
    """
    ca_dir = Path(str(data.get("tls_ca_dir") or DEFAULT_TLS_CA_DIR)).expanduser()
    if not ca_dir.is_absolute():
        raise ConfigError(f"group_data tls_ca_dir={str(ca_dir)!r} must be an absolute path "
                          "(or start with ~)")
    cert, key = data.get("tls_ca_cert_file"), data.get("tls_ca_key_file")
    if bool(cert) != bool(key):
        raise ConfigError("group_data tls_ca_cert_file and tls_ca_key_file go together: set "
                          "both (the operator's CA) or neither (the deploy's own CA)")
    names = data.get("tls_server_names") or ()
    if isinstance(names, str) or any(not str(n).strip() or "," in str(n) for n in names):
        raise ConfigError("group_data tls_server_names must be a list of host names or IP "
                          "addresses, e.g. [\"db1.example.com\", \"10.0.0.5\"]")
    return {
        "tls_ca_dir": str(ca_dir),
        "tls_ca_cert_file": str(Path(str(cert)).expanduser()) if cert else None,
        "tls_ca_key_file": str(Path(str(key)).expanduser()) if key else None,
        "tls_server_names": tuple(str(n).strip() for n in names),
    }


def _pg_version(value: Any) -> int:
    # Major versions are plain integers since 10; the value becomes package and path names.
    if isinstance(value, bool) or not isinstance(value, int) or value < 10:
        raise ConfigError(f"group_data pg_version={value!r} must be a PostgreSQL major "
                          "version as an integer, e.g. 15")
    return value


#: pgaudit.log classes (pgaudit's README).
AUDIT_CLASSES = ("read", "write", "function", "role", "ddl", "misc", "misc_set", "all", "none")


def _audit_classes(value: Any) -> str:
    text = "role, ddl" if value is None else str(value)
    classes = [c.strip().lstrip("-") for c in text.split(",") if c.strip()]
    bad = [c for c in classes if c not in AUDIT_CLASSES]
    if bad or not classes:
        raise ConfigError(f"group_data pg_audit_log={text!r}: use a comma-separated list of "
                          f"{', '.join(AUDIT_CLASSES)}")
    return ", ".join(c.strip() for c in text.split(",") if c.strip())


def _kinds(what: str, value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    kinds = tuple(default if value is None else value)
    unknown = [k for k in kinds if k not in LOGIN_KINDS]
    if unknown:
        raise ConfigError(f"group_data {what}: unknown role kind {unknown[0]!r}; "
                          f"use {', '.join(LOGIN_KINDS)}")
    return kinds


#: A system user name as Debian's adduser accepts it.
OS_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _consumers(value: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """group_data db_consumers, checked: ``{os_user: (role kind, ...)}``."""
    consumers = {}
    for user, kinds in value.items():
        if not isinstance(user, str) or not OS_USER_RE.match(user) or user == "root":
            raise ConfigError(f"group_data db_consumers: {user!r} is not a system user name "
                              "for a consumer (a-z, 0-9, _ and -; not root)")
        kinds = tuple(kinds or ())
        unknown = [k for k in kinds if k not in LOGIN_KINDS]
        if unknown or not kinds:
            raise ConfigError(f"group_data db_consumers[{user!r}] must list login role kinds "
                              f"from {', '.join(LOGIN_KINDS)}")
        consumers[user] = kinds
    return consumers


def _env_lines(what: str, values: dict[str, Any]) -> dict[str, str]:
    """NAME=value lines for donnadb.env; every NAME must be a runtime setting.

    :raises ConfigError: a name donnadb/config.py does not read (a typo would otherwise
        be ignored silently), or a value with a line break.
    """
    known = {name.upper() for name in config.Settings.model_fields}
    lines = {}
    for name, value in values.items():
        if str(name).upper() not in known:
            raise ConfigError(f"group_data {what}: {name} is not a setting of "
                              "donnadb/config.py; check the spelling (e.g. HEALTH_BLOAT_WARN_PCT)")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "\n" in text or "\r" in text:
            raise ConfigError(f"group_data {what}: {name}'s value must be one line")
        lines[str(name).upper()] = text
    return lines


_MISSING = object()

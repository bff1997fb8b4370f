"""The deploy of the DAL's secrets (provision/cacheserver.py, fieldkeys.py): where Redis
runs and what every host's settings say, and the real steps on this host — Redis
configured before it first starts, the default user off, the DAL's user limited to its
keys and commands, its password only in 0600 files and as a SHA-256 in the ACL file;
the field-encryption key file made once, private, copied to each consumer, and the
DAL sealing with it; a second run changing nothing. Fresh hosts with systemd, a remote
client and TLS: tests/fleet/test_cache.py."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import redis
from pyinfra.api import Inventory

from donnadb.config import Settings
from donnadb.dal.cache import open_cache
from donnadb.errors import ConfigError
from donnadb.provision import cacheserver, tls
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data, run_deploy
from tests.support import superuser_psql


def settings_of(**data):
    return load_deploy_settings({**load_group_data(), **data})


def inventory(db: list[str], app: list[str]) -> Inventory:
    """Hosts carrying group_data, as pyinfra gives it to a deploy."""
    data = {k: v for k, v in load_group_data().items() if not k.startswith("__")}
    return Inventory((db + app, data), db_servers=(db, {}), app_servers=(app, {}))


def test_off_by_default_and_no_lines_in_the_settings_file():
    settings = settings_of()
    assert settings.cache is None
    assert cacheserver.client_env(settings, inventory(["db1"], []).get_host("db1")) == {}


def test_a_single_host_serves_itself_on_loopback_without_tls():
    settings = settings_of(cache_enabled=True)
    db1 = inventory(["db1"], []).get_host("db1")
    assert cacheserver.cache_host(settings, db1) is db1
    env = cacheserver.client_env(settings, db1)
    assert env["CACHE_URL"] == "redis://127.0.0.1:6379/0"
    assert env["CACHE_PASSWORD_FILE"] == "/etc/donnadb/cache.d/root"
    assert "CACHE_SSLROOTCERT" not in env


def test_with_app_hosts_the_first_runs_it_and_everyone_uses_tls():
    settings = settings_of(cache_enabled=True)
    inv = inventory(["db1"], ["app1", "app2"])
    app1, app2, db1 = (inv.get_host(n) for n in ("app1", "app2", "db1"))
    assert cacheserver.cache_host(settings, db1) is app1
    assert cacheserver.client_env(settings, app1)["CACHE_URL"] == "rediss://app1:6380/0"
    remote = cacheserver.client_env(settings, app2, "donna-app")
    assert remote["CACHE_URL"] == "rediss://app1:6380/0"
    assert remote["CACHE_SSLROOTCERT"] == tls.CA_FILE
    assert remote["CACHE_PASSWORD_FILE"] == "/etc/donnadb/cache.d/donna-app"
    conf = _render(settings, "10.0.0.7")
    assert "port 0\n" in conf and "tls-port 6380" in conf and "bind 10.0.0.7\n" in conf


def test_a_named_cache_server_must_be_in_the_inventory():
    settings = settings_of(cache_enabled=True, cache_server="cache9")
    with pytest.raises(ConfigError, match="cache_server='cache9'"):
        cacheserver.cache_host(settings, inventory(["db1"], ["app1"]).get_host("db1"))


@pytest.mark.parametrize(("key", "value"), [("cache_port", 0), ("cache_tls_port", 70000),
                                            ("cache_maxmemory_mb", "lots"),
                                            ("cache_enabled", "yes"),
                                            ("cache_listen_addr", "a b")])
def test_malformed_settings_are_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=key):
        settings_of(**{"cache_enabled": True, key: value})


def _render(settings, tls_addr):
    from donnadb.provision import bootstrap

    return bootstrap.render("redis.conf.j2", cache=settings.cache, tls_addr=tls_addr,
                            cert="c", key="k", ca="a", aclfile="u", pidfile="p")


# --- the real steps on this host ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


@pytest.fixture(scope="module")
def cache_deploy(tmp_path_factory):
    """Two runs of tests/provision/cache_deploy.py; Redis stopped again at the end."""
    env_file = tmp_path_factory.mktemp("cache-env") / "donnadb.env"
    port = _free_port()
    data = {"cache_enabled": True, "crypto_enabled": True, "cache_port": port,
            "donnadb_env_file": str(env_file)}
    deploy = "tests/provision/dal_deploy.py"
    first = run_deploy(deploy_file=deploy, data=data, timeout=600)
    second = run_deploy(deploy_file=deploy, data=data, timeout=300)
    try:
        yield first, second, port, env_file
    finally:
        if _systemd():
            subprocess.run(["systemctl", "stop", "redis-server"], check=False)
        else:
            subprocess.run(["/etc/init.d/redis-server", "stop"], check=False,
                           capture_output=True)


def _password(user: str = "root") -> str:
    return Path(f"/etc/donnadb/cache.d/{user}").read_text().splitlines()[0]


def test_the_deploy_runs_redis_with_our_settings_and_a_second_run_changes_nothing(
        cache_deploy):
    first, second, port, _ = cache_deploy
    assert first.returncode == 0, first.output[-3000:]
    assert second.returncode == 0, second.output[-3000:]
    assert second.changed_operations() == [], second.output[-3000:]
    client = redis.Redis(host="127.0.0.1", port=port, username=cacheserver.USER,
                         password=_password())
    assert client.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("CONFIG", "GET", "maxmemory")


def test_the_default_user_is_off_and_a_wrong_password_is_refused(cache_deploy):
    port = cache_deploy[2]
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).set("donnadb:x", "1")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, username=cacheserver.USER,
                    password="not-it").ping()


def test_the_dal_user_reaches_its_own_keys_only_and_no_dangerous_command(cache_deploy):
    port = cache_deploy[2]
    client = redis.Redis(host="127.0.0.1", port=port, username=cacheserver.USER,
                         password=_password())
    client.set("donnadb:probe", "1", px=1000)
    for attack in (("SET", "other:key", "1"), ("FLUSHALL",), ("KEYS", "*"),
                   ("SHUTDOWN",), ("ACL", "LIST"), ("EVAL", "return 1", "0")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*attack)


def test_the_password_is_in_private_files_and_hashed_in_the_acl_file(cache_deploy):
    first, second, _, _ = cache_deploy
    password = _password()
    for user, owner in (("root", "root"), ("donna-app", "donna-app")):
        info = os.stat(f"/etc/donnadb/cache.d/{user}")
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert Path(f"/etc/donnadb/cache.d/{user}").owner() == owner
        assert _password(user) == password
    acl = Path(cacheserver.ACL_FILE).read_text()
    assert password not in acl
    assert hashlib.sha256(password.encode()).hexdigest() in acl
    assert "user default off" in acl
    assert stat.S_IMODE(os.stat(cacheserver.ACL_FILE).st_mode) & 0o007 == 0
    assert stat.S_IMODE(os.stat(cacheserver.CONF).st_mode) & 0o007 == 0
    assert password not in first.output + second.output


def test_the_dal_uses_the_cache_the_settings_file_describes(cache_deploy):
    env_file = cache_deploy[3]
    lines = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                 if line.startswith("CACHE_"))
    assert lines["CACHE_ENABLED"] == "true"
    settings = Settings(**{k.lower(): v for k, v in lines.items()})
    cache = open_cache(settings, "donna")
    try:
        assert cache.health()["status"] == "ok"
    finally:
        cache.close()


def test_the_cache_host_is_known_by_name_not_by_object():
    # deploy.py passes pyinfra's `host` proxy: an identity test would never match it.
    settings = settings_of(cache_enabled=True)
    inv = inventory(["db1"], ["app1"])
    twin = Inventory((["app1"], {}), app_servers=(["app1"], {})).get_host("app1")
    assert cacheserver.is_cache_host(settings, inv.get_host("app1"))
    assert not cacheserver.is_cache_host(settings, inv.get_host("db1"))
    assert cacheserver.cache_host(settings, twin).name == "app1"
    assert not cacheserver.is_cache_host(settings_of(), inv.get_host("app1"))


def test_the_package_installs_with_every_service_start_forbidden(tmp_path):
    # A stand-in apt-get records what Debian's invoke-rc.d would be told by policy-rc.d.
    if Path(cacheserver.POLICY_RC_D).exists():
        pytest.skip("this host has a policy-rc.d of its own (the command keeps it)")
    fake = tmp_path / "apt-get"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = update ] && exit 0\n"
                    f"{cacheserver.POLICY_RC_D} redis-server start; echo $? > {tmp_path}/rc\n")
    fake.chmod(0o755)
    done = subprocess.run(["sh", "-c", cacheserver.held_back_install("redis-server")],
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rc").read_text().strip() == "101"
    assert not Path(cacheserver.POLICY_RC_D).exists()


def test_the_key_file_is_made_once_private_and_the_dal_seals_with_it(cache_deploy, settings,
                                                                   scratch_db):
    from donnadb.crypto import keyfile
    from donnadb.dal.postgres import PostgresDataAccess

    first, second, _, env_file = cache_deploy
    root = Path("/etc/donnadb/keys.d/root")
    keyfile.load(root)  # a valid key file
    for user in ("root", "donna-app", "donna-ops"):
        copy = Path(f"/etc/donnadb/keys.d/{user}")
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600 and copy.owner() == user
        assert copy.read_bytes() == root.read_bytes()
    secret = root.read_text()
    assert all(line.split()[-1] not in first.output + second.output
               for line in secret.splitlines() if line and not line.startswith("#"))
    lines = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                 if line.startswith("CRYPTO_"))
    assert lines == {"CRYPTO_ENABLED": "true", "CRYPTO_KEK_FILE": str(root)}
    sealed = settings.model_copy(update={"crypto_enabled": True, "crypto_kek_file": root})
    dal = PostgresDataAccess(sealed, dbname=scratch_db)
    try:
        user_id = dal.create_user({"clerk_id": "sealed-1", "email": "ada@example.org",
                                   "name": "Ada"})
        assert dal.get_user_by_id(user_id)["email"] == "ada@example.org"
    finally:
        dal.close()
    row = superuser_psql("SELECT coalesce(email, '-') || ' ' || (email_sealed IS NOT NULL)"
                         " FROM users", scratch_db)
    assert row == "- true"

"""The DAL's cache as deployed on fresh hosts (group_data cache_enabled): Redis on the
application host, TLS only on its address, the database host's donnactl a remote client
with its own copy of the password; nothing readable on the wire, no way in without the
password, and the application's reads served from the cache."""

from __future__ import annotations

import json
import shlex
import uuid

from tests.fleet.conftest import Fleet
from tests.fleet.test_app import run_contract
from tests.wirecapture import Capture

TLS_PORT = 6380
#: Run on a host with its shipped venv: what a client of the cache sees (one JSON line).
PROBE = """
import json, socket
import redis
from donnadb.config import load_settings
from donnadb.dal.cache import open_cache
settings = load_settings()
cache = open_cache(settings, settings.db_name)
out = {"url": settings.cache_url, "health": cache.health()}
host, port = settings.cache_url.split("//")[1].split("/")[0].rsplit(":", 1)
try:
    socket.create_connection((host, 6379), timeout=3).close()
    out["plain"] = "open"
except OSError as exc:
    out["plain"] = type(exc).__name__
anonymous = redis.Redis(host=host, port=int(port), ssl=True, ssl_cert_reqs="required",
                        ssl_ca_certs=str(settings.cache_sslrootcert), socket_timeout=3)
try:
    anonymous.set("donnadb:x", "1")
    out["anonymous"] = "allowed"
except redis.exceptions.RedisError as exc:
    out["anonymous"] = type(exc).__name__
unverified = redis.Redis(host=host, port=int(port), ssl=True, ssl_cert_reqs="required",
                         ssl_ca_certs="/etc/ssl/certs/ca-certificates.crt", socket_timeout=3)
try:
    unverified.ping()
    out["stranger_ca"] = "accepted"
except redis.exceptions.RedisError as exc:
    out["stranger_ca"] = type(exc).__name__
print(json.dumps(out, default=str))
"""


def probe(host) -> dict:
    done = host.run(f"/opt/donnadb/venv/bin/python -c {shlex.quote(PROBE)}", cwd="/")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_both_hosts_dial_the_app_hosts_redis_over_verified_tls_with_a_password(fleet: Fleet):
    for host in (fleet.db, fleet.app):
        seen = probe(host)
        assert seen["url"] == f"rediss://{fleet.app.address}:{TLS_PORT}/0", seen
        assert seen["health"]["status"] == "ok", seen
        # No plain-text port, no anonymous login, no server the deploy's CA did not sign.
        assert seen["plain"] == "ConnectionRefusedError", seen
        assert seen["anonymous"] == "AuthenticationError", seen
        assert seen["stranger_ca"] == "ConnectionError", seen


def test_the_application_reads_through_the_cache(fleet: Fleet):
    result = run_contract(fleet, f"m{uuid.uuid4().hex[:10]}")
    assert result["cache"]["status"] == "ok", result
    assert result["cache"]["hits"] >= 1, result


def test_the_password_is_private_on_each_host(fleet: Fleet):
    for host, users in ((fleet.app, ("root", "donna-app")), (fleet.db, ("root", "donna-app"))):
        for user in users:
            listing = host.run(f"stat -c '%U %a' /etc/donnadb/cache.d/{user}").stdout.split()
            assert listing == [user, "600"], (host.name, user, listing)
    acl = fleet.app.run("cat /etc/redis/users.acl").stdout
    password = fleet.app.run("cat /etc/donnadb/cache.d/root").stdout.strip()
    assert password and password not in acl
    assert fleet.db.run("cat /etc/donnadb/cache.d/root").stdout.strip() == password


def test_a_sniffed_wire_shows_no_password_and_no_cached_value(fleet: Fleet, tmp_path):
    marker = f"sniff{uuid.uuid4().hex[:12]}"
    password = fleet.app.run("cat /etc/donnadb/cache.d/root").stdout.strip()
    with Capture(tmp_path / "cache.pcap", [(fleet.app.address, TLS_PORT)]) as wire:
        result = run_contract(fleet, marker)
    assert result["cache"]["hits"] >= 1
    seen = wire.data()
    assert len(seen) > 2000, "the capture saw nothing: it proves nothing"
    for clear in (marker.encode(), password.encode(), b"AUTH", b"EVALSHA"):
        assert clear not in seen, f"{clear!r} crossed the wire in clear"


"""The deploy's CA and server certificates: what the control machine keeps, the names a
certificate holds, when it is reissued; on the deployed host, the files, what the
servers serve, and renewal by a deploy run."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from donnadb.errors import ConfigError
from donnadb.provision import ca, hba, tls
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data, run_deploy
from tests.support import GroupData

NAMES = ["db1", "127.0.0.1", "localhost"]


def _settings(**overrides):
    return load_deploy_settings(GroupData({**load_group_data(), **overrides}))


def _load(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


# --- the control machine ----------------------------------------------------------------
def test_the_ca_is_created_private_once_and_reused(tmp_path):
    ca_dir = tmp_path / "ca"
    first = ca.ensure_ca(ca_dir)
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    again = ca.ensure_ca(ca_dir)
    assert again.cert_pem == first.cert_pem
    assert first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_kept_certificate_is_reused_until_it_must_be_reissued(tmp_path):
    authority = ca.ensure_ca(tmp_path)
    first = ca.server_certificate(authority, tmp_path, "db1", NAMES)
    assert ca.server_certificate(authority, tmp_path, "db1", list(reversed(NAMES))) == first
    cert = _load(first.cert_pem)
    cert.verify_directly_issued_by(authority.cert)
    assert sorted(ca.san_names(cert)) == sorted(NAMES)
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=390)
    # Another name, another CA, or fewer than 30 days left: issued again.
    renamed = ca.server_certificate(authority, tmp_path, "db1", [*NAMES, "10.0.0.5"])
    assert renamed != first and "10.0.0.5" in ca.san_names(_load(renamed.cert_pem))
    other = ca.new_ca("another")
    assert ca.needs_reissue(_load(renamed.cert_pem), other, [*NAMES, "10.0.0.5"]) == \
        "the CA changed"
    short = ca.issue(authority, NAMES, days=20)
    assert ca.needs_reissue(_load(short.cert_pem), authority, NAMES) == \
        "fewer than 30 days left"


def test_an_operators_ca_is_used_and_a_mismatched_key_refused(tmp_path):
    own = ca.new_ca("operator CA")
    cert_file, key_file = tmp_path / "op.crt", tmp_path / "op.key"
    cert_file.write_text(own.cert_pem)
    key_file.write_bytes(ca.key_pem(own.key))
    assert ca.load_ca(cert_file, key_file).cert_pem == own.cert_pem
    key_file.write_bytes(ca.key_pem(ca.new_ca().key))
    with pytest.raises(ConfigError, match="does not belong to"):
        ca.load_ca(cert_file, key_file)
    with pytest.raises(ConfigError, match="go together"):
        _settings(tls_ca_cert_file=str(cert_file))


def test_the_certificate_names_every_address_a_client_may_dial():
    s = _settings(pg_listen_addresses="localhost,127.0.0.11", db_host="127.0.0.11",
                  pgbouncer_listen_addr="127.0.0.11", tls_server_names=["db.example.com"])
    names = tls.server_names(s, "db1", "db1-host")
    assert names[0] == "127.0.0.11"
    for name in ("db1", "db1-host", "localhost", "127.0.0.1", "::1", "db.example.com"):
        assert name in names
    assert len(names) == len(set(names))
    # pyinfra's connectors are not names; wildcards are not addresses.
    anywhere = "0.0.0.0"  # noqa: S104 - a value to recognise, never bound
    local = tls.server_names(replace(s, pg_listen_addresses="*", pgbouncer_listen_addr=anywhere),
                             "@local", None)
    assert "@local" not in local and "*" not in local and anywhere not in local


def test_from_this_host_only_covers_its_own_listen_addresses():
    s = _settings(pg_listen_addresses="localhost,127.0.0.11,db1.internal,::1")
    assert hba.own_addresses(s) == ["127.0.0.1/32", "::1/128", "127.0.0.11/32"]


def test_tls_settings_are_validated(tmp_path):
    for bad in ({"tls_server_names": "db1"}, {"tls_server_names": [""]},
                {"tls_ca_dir": "relative/ca"}, {"tls_ca_key_file": str(tmp_path / "k")}):
        with pytest.raises(ConfigError):
            _settings(**bad)
    assert _settings(tls_ca_dir="~/x").tls_ca_dir == str(Path("~/x").expanduser())


# --- the deployed host ------------------------------------------------------------------
def served_certificate(port: int, host: str = "127.0.0.1") -> bytes:
    """The DER certificate a PostgreSQL-protocol server presents after an SSLRequest."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"S", "the server refused TLS"
        with context.wrap_socket(sock) as tls_sock:
            return tls_sock.getpeercert(binary_form=True)


def _host_cert() -> x509.Certificate:
    return _load(Path(tls.SERVER_CERT).read_bytes())


@pytest.mark.deploy
def test_the_host_has_the_ca_and_a_private_key_and_both_servers_serve_the_certificate(
        deployed, deploy_settings, settings):
    authority = tls.authority(deploy_settings)
    assert Path(tls.CA_FILE).read_text() == authority.cert_pem
    key = Path(tls.SERVER_KEY).stat()
    assert stat.S_IMODE(key.st_mode) == 0o640 and key.st_uid == 0
    cert = _host_cert()
    cert.verify_directly_issued_by(authority.cert)
    assert settings.db_host in ca.san_names(cert)
    der = cert.public_bytes(Encoding.DER)
    assert served_certificate(settings.db_port) == der
    assert served_certificate(settings.pgbouncer_port) == der


@pytest.mark.deploy
def test_a_certificate_close_to_expiry_is_renewed_by_the_next_deploy_run(
        deployed, deploy_settings, settings):
    authority = tls.authority(deploy_settings)
    kept = Path(deploy_settings.tls_ca_dir) / "hosts" / "@local"
    names = ca.san_names(_load((kept / "server.crt").read_bytes()))
    # What the control machine keeps now expires in 10 days, as a year later it would.
    short = ca.issue(authority, names, days=10)
    (kept / "server.crt").write_text(short.cert_pem)
    (kept / "server.key").write_text(short.key_pem)

    run = run_deploy()
    assert run.returncode == 0, run.output[-4000:]
    assert f"Write {tls.SERVER_CERT}" in " ".join(run.changed_operations())
    renewed = _host_cert()
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=390)
    assert renewed.public_bytes(Encoding.DER) != \
        _load(short.cert_pem).public_bytes(Encoding.DER)
    assert short.key_pem not in run.output and Path(tls.SERVER_KEY).read_text() not in run.output
    # Both servers picked the new certificate up (reload / restart).
    der = renewed.public_bytes(Encoding.DER)
    assert served_certificate(settings.db_port) == der
    assert served_certificate(settings.pgbouncer_port) == der

    again = run_deploy()
    assert again.returncode == 0, again.output[-4000:]
    assert again.totals["changed"] == 0, again.changed_operations()

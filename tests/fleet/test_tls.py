"""TLS between the application host and the database host: verified, required, and
nothing readable on the wire."""

from __future__ import annotations

import datetime
import json
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fleet.conftest import Fleet
from tests.fleet.test_app import run_as_app, run_contract
from tests.wirecapture import Capture

WRONG_CA = "/usr/local/lib/donnadb-fleet/wrong-ca.crt"


def a_stranger_ca() -> bytes:
    """A self-signed CA certificate the deploy never saw (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the donnadb CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def attempt(fleet: Fleet, **overrides: str) -> dict:
    return run_as_app(fleet, "app_connect.py", json.dumps(overrides))


def test_the_app_host_speaks_verified_tls_to_pgbouncer(fleet: Fleet):
    wire = run_contract(fleet, f"m{uuid.uuid4().hex[:10]}")["wire"]
    assert wire["ssl_in_use"] is True
    env = fleet.app.run("cat /etc/donnadb/donnadb.env").stdout
    assert "DB_SSLMODE=verify-full" in env


def test_plain_text_a_stranger_ca_and_a_wrong_host_name_are_refused(fleet: Fleet):
    assert attempt(fleet)["ok"] is True  # the same login, as deployed, works
    plain = attempt(fleet, sslmode="disable")
    assert plain["ok"] is False
    stranger = fleet.app.root / WRONG_CA.lstrip("/")
    stranger.parent.mkdir(parents=True, exist_ok=True)
    stranger.write_bytes(a_stranger_ca())
    stranger.chmod(0o644)
    wrong_ca = attempt(fleet, sslrootcert=WRONG_CA)
    assert wrong_ca["ok"] is False and "certificate verify failed" in wrong_ca["error"]
    wrong_name = attempt(fleet, host="wrong.example", hostaddr=fleet.db.address)
    assert wrong_name["ok"] is False and "does not match host name" in wrong_name["error"]


def test_a_sniffed_wire_shows_no_password_exchange_and_no_query(fleet: Fleet, tmp_path):
    marker = f"sniff{uuid.uuid4().hex[:12]}"
    with Capture(tmp_path / "tls.pcap", [(fleet.db.address, 6432)]) as tls:
        run_contract(fleet, marker)
    seen = tls.data()
    assert len(seen) > 2000, "the capture saw nothing: it proves nothing"
    for clear in (marker.encode(), b"SCRAM-SHA-256", b"n,,n=", b"donna_app"):
        assert clear not in seen, f"{clear!r} crossed the wire in clear"
    # The same capture shows a plain-text attempt's startup packet (user name in clear):
    # had the DAL's traffic been readable, it would have been seen.
    with Capture(tmp_path / "plain.pcap", [(fleet.db.address, 6432)]) as plain:
        attempt(fleet, sslmode="disable")
        plain.wait_for(b"donna_app")
    assert b"donna_app" in plain.data()

"""The deploy's certificate authority, on the machine that runs the deploy.

A small CA (``ca.key`` 0600 and ``ca.crt`` in ``tls_ca_dir``, the directory 0700) is
created on the first run, unless group_data names an operator's own CA
(``tls_ca_cert_file`` / ``tls_ca_key_file``). Each database host's server certificate
and key are kept beside it (``<tls_ca_dir>/hosts/<inventory name>/``) and reused on the
next run, so a deploy that changes nothing uploads the same bytes. A certificate is
issued again when its subjectAltName list changes, when the CA changes, or when fewer
than :data:`RENEW_DAYS` days remain: renewal is a deploy run.

No pyinfra here: the tests make short-lived certificates with the same code.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from donnadb.errors import ConfigError

CA_DAYS = 3650
CERT_DAYS = 397
#: A certificate with fewer days left than this is reissued by the next deploy run.
RENEW_DAYS = 30
CA_NAME = "donnadb deploy CA"
#: A host's certificate serves TLS and, in a cluster, also presents it to its peers
#: (etcd's peer and client authentication, Patroni's etcd client).
USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key, as PEM and as objects."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Issued:
    """A server certificate (PEM) and its private key (PEM)."""

    cert_pem: str
    key_pem: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (never readable by others first)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def new_ca(common_name: str = CA_NAME, *, days: int = CA_DAYS) -> Authority:
    """A fresh self-signed CA (EC P-256) valid for ``days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def load_ca(cert_file: Path, key_file: Path) -> Authority:
    """An existing CA (the operator's, or the one :func:`ensure_ca` made).

    :raises ConfigError: a file is missing, unreadable, or the key does not match.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the TLS CA {cert_file} / {key_file}: {exc}; set "
                          "group_data tls_ca_cert_file/tls_ca_key_file to a PEM certificate "
                          "and its unencrypted key, or None for the deploy's own CA") from None
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise ConfigError(f"the TLS CA key {key_file} does not belong to {cert_file}; "
                          "point tls_ca_key_file at the certificate's own key")
    return Authority(cert, key)  # type: ignore[arg-type]


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def ensure_ca(ca_dir: Path) -> Authority:
    """The deploy's own CA in ``ca_dir``, created (0700 directory, 0600 key) when missing."""
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    cert_file, key_file = ca_dir / "ca.crt", ca_dir / "ca.key"
    if not cert_file.exists() and not key_file.exists():
        ca = new_ca()
        write_private(key_file, key_pem(ca.key))
        write_private(cert_file, ca.cert_pem.encode(), 0o644)
        return ca
    return load_ca(cert_file, key_file)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: Authority, names: list[str], *, days: int = CERT_DAYS,
          not_before: dt.datetime | None = None) -> Issued:
    """A server certificate for ``names`` (the first is the subject CN) signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(USAGES)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(),
                  key_pem(key).decode())


def san_names(cert: x509.Certificate) -> list[str]:
    """The subjectAltName entries of ``cert`` as strings (DNS names and IPs)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in ext.get_values_for_type(x509.IPAddress)]


def needs_reissue(cert: x509.Certificate, ca: Authority, names: list[str], *,
                  now: dt.datetime | None = None) -> str | None:
    """Why ``cert`` must be issued again, or None when it can stay."""
    now = now or _now()
    if cert.issuer != ca.cert.subject:
        return "the CA changed"
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (InvalidSignature, ValueError, TypeError):
        return "the CA changed"
    if sorted(san_names(cert)) != sorted(_canonical(names)):
        return "the subjectAltName list changed"
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    if not set(USAGES) <= usages:
        return "its key usages changed"
    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS):
        return f"fewer than {RENEW_DAYS} days left"
    return None


def _canonical(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(str(ipaddress.ip_address(name)))
        except ValueError:
            out.append(name)
    return out


def server_certificate(ca: Authority, ca_dir: Path, host_name: str, names: list[str]) -> Issued:
    """The kept certificate of ``host_name`` under ``ca_dir/hosts``, issued anew when
    :func:`needs_reissue` says so."""
    host_dir = ca_dir / "hosts" / _safe_dir_name(host_name)
    host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_file, key_file = host_dir / "server.crt", host_dir / "server.key"
    if cert_file.exists() and key_file.exists():
        kept = Issued(cert_file.read_text(), key_file.read_text())
        try:
            cert = x509.load_pem_x509_certificate(kept.cert_pem.encode())
        except ValueError:
            cert = None
        if cert is not None and needs_reissue(cert, ca, names) is None:
            return kept
    fresh = issue(ca, names)
    write_private(key_file, fresh.key_pem.encode())
    write_private(cert_file, fresh.cert_pem.encode(), 0o644)
    return fresh


def _safe_dir_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-@" else "_" for c in name)
    return cleaned.lstrip(".") or "host"


def not_after(cert_pem: str | bytes) -> dt.datetime:
    """The notAfter of a PEM certificate (UTC)."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return x509.load_pem_x509_certificate(data).not_valid_after_utc

"""moto's S3 server behind TLS, for clients that speak S3 over TLS only (pgBackRest).

moto's ThreadedMotoServer has no TLS, and werkzeug's server (behind moto_server --ssl)
closes every connection without TLS's close_notify, which OpenSSL 3 clients such as
pgBackRest report as "unexpected eof while reading" and retry without end. Here the
same moto application runs in werkzeug's threaded server with our own certificate, and
each connection ends with a proper TLS shutdown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from donnadb.provision import ca as tls_ca

HOST = "127.0.0.1"


@dataclass(frozen=True)
class TlsS3:
    url: str
    host: str
    port: int
    ca_file: Path


def _certificate(work: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate naming 127.0.0.1 both as an IP address (Python's
    check) and as a DNS name (pgBackRest 2.45 compares host names with DNS entries only)."""
    authority = tls_ca.new_ca("donnadb test S3 CA", days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(authority.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName(HOST)]),
            critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = work / "s3-ca.crt", work / "s3.crt", work / "s3.key"
    ca_file.write_text(authority.cert_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls_ca.write_private(key_file, tls_ca.key_pem(key))
    return ca_file, cert_file, key_file


class Server:
    """Start with :meth:`start`; :meth:`stop` shuts it down. ``work`` holds the CA
    file, which clients need (make it readable by the user they run as)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> TlsS3:
        ca_file, cert_file, key_file = _certificate(self.work)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        app = DomainDispatcherApplication(create_backend_app)
        server = make_server(HOST, 0, app, threaded=True, ssl_context=context)

        def shutdown_request(request) -> None:
            with contextlib.suppress(OSError, ValueError):
                request.unwrap()  # close_notify before the socket closes
            server.close_request(request)

        server.shutdown_request = shutdown_request
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        port = server.server_address[1]
        return TlsS3(f"https://{HOST}:{port}", HOST, port, ca_file)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

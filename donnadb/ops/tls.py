"""The database host's server certificate: when it expires (`status`, `health`, metrics).

The deploy renews it (a deploy run reissues a certificate with fewer than 30 days
left), so a warning here means no deploy has run for a long while. A host without the
file (an application server) reports "not configured", which is not a problem.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509


def certificate(path: Path, *, now: datetime | None = None) -> dict[str, Any]:
    """``{"configured", "file", "subject", "not_after", "days_left", "error"}`` of the
    PEM certificate at ``path``; ``configured`` is False when the file does not exist."""
    now = now or datetime.now(UTC)
    doc: dict[str, Any] = {"configured": False, "file": str(path), "subject": None,
                           "not_after": None, "days_left": None, "error": None}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return doc
    except OSError as exc:
        return {**doc, "configured": True, "error": f"cannot read {path}: {exc.strerror}"}
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return {**doc, "configured": True, "error": f"{path} is not a PEM certificate"}
    left = (cert.not_valid_after_utc - now).total_seconds() / 86400
    return {**doc, "configured": True, "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc, "days_left": round(left, 2)}

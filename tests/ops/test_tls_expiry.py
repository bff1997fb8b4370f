"""The server certificate's expiry on `donnactl status` and `health` (and its metric),
read from certificates made here with the deploy's CA code."""

from __future__ import annotations

import datetime as dt
import json
import re

from donnadb.config import Settings
from donnadb.ops import health, tls
from donnadb.ops.checks import Severity
from donnadb.provision import ca
from tests.ops.test_health import CALM

NAMES = ["127.0.0.1", "localhost"]


def _cert(tmp_path, days: float, started_days_ago: float = 0):
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=started_days_ago)
    issued = ca.issue(ca.new_ca(), NAMES, days=days, not_before=start)
    path = tmp_path / "server.crt"
    path.write_text(issued.cert_pem)
    return path


def test_a_certificate_close_to_expiry_warns_in_health_and_shows_in_status(cli, tmp_path):
    path = _cert(tmp_path, days=10)
    env = {**CALM, "TLS_SERVER_CERT_FILE": str(path)}
    done = cli("health", "--json", env=env)
    assert done.returncode == 1, done.stdout
    check = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["tls_expiry"]
    assert check["severity"] == "WARNING" and 9 < check["value"] <= 10
    assert "run the deploy" in check["summary"]
    nagios = cli("health", env=env)
    assert nagios.returncode == 1 and nagios.stdout.startswith("DONNADB WARNING - tls_expiry")
    status = cli("status", env=env)
    assert status.returncode == 0, status.stderr
    [line] = [ln for ln in status.stdout.splitlines() if "tls certificate" in ln]
    assert "days left" in line and "WARNING" in line
    doc = json.loads(cli("status", "--json", env=env).stdout)
    assert doc["tls"]["configured"] and 9 < doc["tls"]["days_left"] <= 10
    metrics = cli("metrics", env=env)
    left = re.search(r"^donnadb_tls_cert_remaining_seconds (\S+)$", metrics.stdout, re.M)
    assert left and 9 * 86400 < float(left.group(1)) <= 10 * 86400, metrics.stdout
    assert 'donnadb_health_status{check="tls_expiry"} 1.0' in metrics.stdout


def test_an_expired_certificate_is_critical(cli, tmp_path):
    path = _cert(tmp_path, days=5, started_days_ago=6)
    done = cli("health", "--json", env={**CALM, "TLS_SERVER_CERT_FILE": str(path)})
    assert done.returncode == 2, done.stdout
    check = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["tls_expiry"]
    assert check["severity"] == "CRITICAL" and check["value"] < 0


def test_a_fresh_certificate_is_ok_and_none_is_not_configured(tmp_path):
    settings = Settings.model_construct()
    fresh = tls.certificate(_cert(tmp_path, days=397))
    assert health.tls_expiry(fresh, settings).severity is Severity.OK
    absent = tls.certificate(tmp_path / "none.crt")
    assert absent["configured"] is False
    check = health.tls_expiry(absent, settings)
    assert check.severity is Severity.OK and "not a database host" in check.summary
    (tmp_path / "junk.crt").write_text("not a certificate")
    junk = health.tls_expiry(tls.certificate(tmp_path / "junk.crt"), settings)
    assert junk.severity is Severity.WARNING and "not a PEM certificate" in junk.summary

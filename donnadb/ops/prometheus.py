"""A small client of Prometheus's HTTP API (``/api/v1/query``, ``/api/v1/query_range``):
stdlib only, a timeout on every request, one error naming the URL and the fix."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from donnadb.errors import DonnaError


class PrometheusError(DonnaError):
    """Prometheus did not answer; the message names the URL and the fix."""


class QueryRefused(PrometheusError):
    """Prometheus answered a query with an error (bad PromQL, a timeout of its own)."""


@dataclass(frozen=True)
class Series:
    """One time series of a result: its labels and its (unix time, value) samples."""

    labels: dict[str, str]
    samples: list[tuple[float, float]]


class Prometheus:
    """``Prometheus("http://127.0.0.1:9090").query_range(expr, start, end, step)``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """The instant vector of ``expr`` (at ``at``, default now).

        :raises PrometheusError: Prometheus did not answer (:class:`QueryRefused`: it
            refused ``expr``).
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        result = self._get("query", params)
        return [Series(r["metric"], [_sample(r["value"])]) for r in result]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """The range vector of ``expr`` from ``start`` to ``end`` (unix seconds).

        :raises PrometheusError: Prometheus did not answer (:class:`QueryRefused`: it
            refused ``expr``).
        """
        result = self._get("query_range", {"query": expr, "start": f"{start:.3f}",
                                           "end": f"{end:.3f}", "step": f"{step:g}"})
        return [Series(r["metric"], [_sample(v) for v in r["values"]]) for r in result]

    def _get(self, endpoint: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:  # noqa: S310
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            raise QueryRefused(f"Prometheus at {self.url} refused the query "
                                  f"{params['query']!r}: {_reason(exc)}") from exc
        except (OSError, ValueError) as exc:
            raise PrometheusError(
                f"Prometheus at {self.url} did not answer ({_why(exc)}): start it "
                "(systemctl start prometheus) or point PROMETHEUS_URL / --prometheus "
                "at the one that scrapes this host") from exc
        return body["data"]["result"]


def _sample(pair: list) -> tuple[float, float]:
    return float(pair[0]), float(pair[1])


def _why(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc)


def _reason(exc: urllib.error.HTTPError) -> str:
    """Prometheus's own error text (a 400 or 422 carries JSON), else the HTTP status."""
    try:
        return str(json.loads(exc.read())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}"

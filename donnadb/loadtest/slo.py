"""The SLO gate: reads Locust's final stats CSV and says pass or fail, and why.

The plan's targets: p95 under 100 ms for every query and overall, no failed request,
and a pool efficiency over 90% (see :mod:`loadtest.serverstats` for its definition).
Locust runs with ``--reset-stats`` and the locustfile's ``--donna-warmup``, so its final
CSV covers only the time after the ramp-up and the warm-up: PgBouncer opening its server
connections for the first burst does not count against the verdict.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from donnadb.errors import DataError, DonnaError

P95_LIMIT_MS = 100.0
POOL_EFFICIENCY_MIN = 0.90
AGGREGATED = "Aggregated"


class SloViolation(DonnaError):
    """The load test ran but missed an SLO (the verdict lists which)."""

    exit_code = 9


@dataclass(frozen=True)
class QueryStats:
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float


@dataclass(frozen=True)
class Check:
    what: str
    value: float | int | str | None
    limit: str
    ok: bool


@dataclass
class Verdict:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    queries: list[QueryStats] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "queries": [asdict(q) for q in self.queries]}


def _num(text: str) -> float | None:
    return None if text in ("", "N/A") else float(text)


def read_stats(path: Path) -> list[QueryStats]:
    """Rows of Locust's ``*_stats.csv`` (the Aggregated row last).

    :raises DataError: the file is missing or not a Locust stats file.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"cannot read the Locust stats {path}: {exc.strerror}") from None
    try:
        return [QueryStats(name=r["Name"], requests=int(r["Request Count"]),
                           failures=int(r["Failure Count"]), p50_ms=_num(r["50%"]),
                           p95_ms=_num(r["95%"]), p99_ms=_num(r["99%"]),
                           rps=float(r["Requests/s"]))
                for r in rows]
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a Locust stats CSV ({exc}); rerun the load test") \
            from None


def evaluate(
    stats: list[QueryStats],
    *,
    expected_names: tuple[str, ...] | list[str] = (),
    p95_limit_ms: float = P95_LIMIT_MS,
    pool_efficiency: float | None = None,
    pool_efficiency_min: float = POOL_EFFICIENCY_MIN,
) -> Verdict:
    """The verdict on ``stats``: every check, and passed only if all hold.

    A p95 equal to the limit fails (the SLO is "under 100 ms"). A missing expected
    query name fails: a scenario that never ran proves nothing.
    """
    checks: list[Check] = []
    by_name = {s.name: s for s in stats}
    total = by_name.get(AGGREGATED)
    if total is None or total.requests == 0:
        checks.append(Check("requests after ramp-up", 0, "> 0", False))
        return Verdict(False, checks, stats)
    for s in stats:
        label = "overall" if s.name == AGGREGATED else s.name
        ok = s.p95_ms is not None and s.p95_ms < p95_limit_ms
        checks.append(Check(f"p95 {label} (ms)", s.p95_ms, f"< {p95_limit_ms:g}", ok))
    checks.append(Check("failed requests", total.failures, "= 0", total.failures == 0))
    for name in expected_names:
        n = by_name[name].requests if name in by_name else 0
        checks.append(Check(f"requests {name}", n, "> 0", n > 0))
    if pool_efficiency is not None:
        checks.append(Check("pool efficiency", round(pool_efficiency, 4),
                            f">= {pool_efficiency_min:g}",
                            pool_efficiency >= pool_efficiency_min))
    return Verdict(all(c.ok for c in checks), checks, stats)

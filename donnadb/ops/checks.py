"""Severity grading shared by `donnactl health`, `metrics` and the alert rules.

Severities follow the Nagios/Icinga plugin convention so any monitor can call
``donnactl health``: the process exit code is the worst severity found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    """A check's state; the value is the Nagios exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Check:
    """One graded figure: ``name`` is stable (metrics labels and alert rules use it)."""

    name: str
    severity: Severity
    value: float | str | None
    summary: str

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["severity"] = self.severity.name
        return doc


def grade_high(value: float, warn: float, crit: float) -> Severity:
    """Severity of a figure where higher is worse (``value >= crit`` is CRITICAL)."""
    if value >= crit:
        return Severity.CRITICAL
    if value >= warn:
        return Severity.WARNING
    return Severity.OK


def grade_low(value: float, warn: float, crit: float) -> Severity:
    """Severity of a figure where lower is worse (``value <= crit`` is CRITICAL)."""
    if value <= crit:
        return Severity.CRITICAL
    if value <= warn:
        return Severity.WARNING
    return Severity.OK


def worst(checks: list[Check]) -> Severity:
    """The overall state: the worst severity, OK for no checks."""
    return max((c.severity for c in checks), default=Severity.OK)

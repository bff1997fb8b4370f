"""Nagios/Icinga plugin output: ``STATE - summary | perfdata`` then one line per check."""

from __future__ import annotations

from donnadb.ops.checks import Check, Severity


def perfdata(checks: list[Check], thresholds: dict[str, tuple[float, float]]) -> str:
    """``name=value;warn;crit`` for every numeric check (thresholds where known)."""
    items = []
    for check in checks:
        if isinstance(check.value, int | float) and check.name != "database":
            warn, crit = thresholds.get(check.name, ("", ""))
            items.append(f"{check.name}={check.value:g};{warn};{crit}")
    return " ".join(items)


def plugin_output(checks: list[Check], overall: Severity,
                  thresholds: dict[str, tuple[float, float]]) -> str:
    """The full plugin text: the first line is what a monitor shows in its overview."""
    bad = [c for c in checks if c.severity is not Severity.OK]
    summary = ("; ".join(f"{c.name}: {c.summary}" for c in bad) if bad
               else f"{len(checks)} checks OK")
    lines = [f"DONNADB {overall.name} - {summary} | {perfdata(checks, thresholds)}"]
    lines += [f"{c.severity.name:<8} {c.name}: {c.summary}" for c in checks]
    return "\n".join(lines)


def unreachable(message: str) -> str:
    """The one line a monitor shows when the database cannot be checked at all."""
    return f"DONNADB {Severity.CRITICAL.name} - {message}"

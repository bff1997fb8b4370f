"""The PNG of a run: latency percentiles and users over time (from Locust's history CSV).

Locust writes one ``Aggregated`` row per second with the percentiles of the last few
seconds' requests; with ``--csv-full-history`` also one row per query name. The plot
shows overall p50/p95/p99, each query's p95, the user count, the SLO line and where
the ramp-up ended (the verdict counts only what comes after it).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a server

import matplotlib.pyplot as plt  # noqa: E402

from donnadb.dal.fileio import name_path  # noqa: E402
from donnadb.loadtest.slo import AGGREGATED, P95_LIMIT_MS  # noqa: E402


def _num(text: str) -> float | None:
    return None if text in ("", "N/A") else float(text)


def read_history(path: Path) -> dict[str, list[tuple[int, int, float | None, float | None,
                                                       float | None]]]:
    """``{name: [(timestamp, users, p50, p95, p99), ...]}`` from ``*_stats_history.csv``."""
    series: dict[str, list] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            series[r["Name"]].append((int(r["Timestamp"]), int(r["User Count"]),
                                      _num(r["50%"]), _num(r["95%"]), _num(r["99%"])))
    return dict(series)


def ramp_end(series: list[tuple], target_users: int) -> int | None:
    """Timestamp at which the user count first reached ``target_users``."""
    return next((t for t, users, *_ in series if users >= target_users), None)


def plot(history_csv: Path, png: Path, *, target_users: int,
         p95_limit_ms: float = P95_LIMIT_MS) -> Path:
    """Draw ``png`` from ``history_csv``; returns ``png``."""
    series = read_history(history_csv)
    total = series.get(AGGREGATED, [])
    t0 = total[0][0] if total else 0
    fig, (ax, ax_users) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    for idx, label in ((2, "p50"), (3, "p95"), (4, "p99")):
        pts = [(t - t0, row[idx]) for row in total if (t := row[0]) and row[idx] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"overall {label}",
                    linewidth=2 if label == "p95" else 1)
    for name, rows in sorted(series.items()):
        if name == AGGREGATED:
            continue
        pts = [(r[0] - t0, r[3]) for r in rows if r[3] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"{name} p95", linewidth=0.6, alpha=0.6)
    ax.axhline(p95_limit_ms, color="red", linestyle="--", label=f"SLO p95 < {p95_limit_ms:g} ms")
    end = ramp_end(total, target_users)
    if end is not None:
        for a in (ax, ax_users):
            a.axvline(end - t0, color="grey", linestyle=":")
        ax.text(end - t0, p95_limit_ms, " ramp-up ends", color="grey", va="bottom")
    ax.set_ylabel("response time (ms)")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    ax.set_title("Donna load test: latency percentiles over time")
    ax_users.plot([r[0] - t0 for r in total], [r[1] for r in total], color="black")
    ax_users.set_ylabel("users")
    ax_users.set_xlabel("seconds since start")
    fig.tight_layout()
    try:
        fig.savefig(png, dpi=100)
    except OSError as exc:  # a full disk: matplotlib's write names no file
        name_path(exc, png)
        raise
    plt.close(fig)
    return png

"""Rich rendering of a status report (one screen) and of health checks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from donnadb.ops import backups
from donnadb.ops.checks import Check, Severity

STYLE = {Severity.OK: "green", Severity.WARNING: "yellow", Severity.CRITICAL: "bold red"}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return str(timedelta(seconds=int(s)))


def _day(d: datetime | None) -> str:
    return d.strftime("%Y-%m-%d") if d else "-"


def _activity(row: dict[str, Any] | None) -> str:
    if not row:
        return "none"
    query = " ".join((row["query"] or "").split())[:60]
    return f"{human_seconds(row['seconds'])}  pid {row['pid']} {row['usename']}: {query}"


def _certificate(cert: dict[str, Any]) -> str:
    if not cert["configured"]:
        return "not configured"
    return cert["error"] or (f"expires {cert['not_after']:%Y-%m-%d %H:%M} UTC "
                             f"({cert['days_left']:.0f} days left)")


def _pools(bouncer: dict[str, Any]) -> str:
    return bouncer["error"] or "; ".join(
        f"{p['database']}/{p['user']} cl {p['cl_active']}+{p['cl_waiting']}w "
        f"sv {p['sv_active']}+{p['sv_idle']}i" for p in bouncer["pools"]) or "no pools"


def _cluster(view: dict[str, Any]) -> str:
    if view.get("error"):
        return view["error"]
    members = ", ".join(
        f"{m['name']} {m['role']} {m['state']}"
        + ("" if m["role"] == "leader" or m["lag_bytes"] is None
           else f" lag {human_bytes(m['lag_bytes'])}") for m in view["members"])
    return (f"{view['cluster']}: leader {view['leader'] or 'NONE'}, timeline "
            f"{view['timeline']}{', PAUSED' if view['paused'] else ''}; {members}")


def render_status(report: dict[str, Any], checks: list[Check] | None = None) -> Group:
    """The `donnactl status` screen; ``checks`` adds a coloured health column."""
    by_name = {c.name: c for c in checks or []}

    def mark(name: str) -> Text:
        check = by_name.get(name)
        if check is None:
            return Text("")
        return Text(check.severity.name, style=STYLE[check.severity])

    s, c = report["server"], report["connections"]
    parts, bloat, backup = report["partitions"], report["bloat"], report["backup"]
    stamp = f"{report['collected_at']:%Y-%m-%d %H:%M:%S} UTC"
    table = Table(title=f"donna @ {s['database']}  ({stamp})",
                  show_header=False, box=None, pad_edge=False, title_justify="left")
    table.add_column("what", style="bold cyan", no_wrap=True)
    table.add_column("value")
    table.add_column("health", no_wrap=True)
    states = ", ".join(f"{k} {v}" for k, v in c["by_state"].items()) or "none"
    repl = report["replication"]
    lag = repl["lag_seconds"]
    rows = [
        ("server", f"PostgreSQL {s['version']}", "database"),
        ("role / uptime", f"{s['role']}, up {human_seconds(s['uptime_seconds'])}", None),
        ("schema version", f"{report['schema']['version'] or 'none'} "
                           f"({report['schema']['applied']} migrations)", None),
        ("database size", human_bytes(s["size_bytes"]), None),
        ("connections", f"{c['total']} / {c['max']} ({c['used_pct']}%): {states}", "connections"),
        ("cache hit", "-" if report["cache_hit_pct"] is None else f"{report['cache_hit_pct']}%",
         "cache_hit"),
        ("longest query", _activity(report["longest_query"]), "longest_query"),
        ("longest xact", _activity(report["longest_transaction"]), "longest_transaction"),
        ("replication", "no replicas" if lag is None and repl["role"] == "primary"
         else f"{len(repl['replicas'])} replica(s), lag {lag:.1f}s" if lag is not None
         else "replica, lag unknown", "replication_lag"),
        ("last backup", "unknown" if backup["finished_at"] is None
         else f"{backup['finished_at']:%Y-%m-%d %H:%M} UTC ({backup['age_hours']:.1f} h ago)",
         "backup_age"),
        ("restore drills", _drills(report["drill"]), "backup_drill"),
        ("partitions", "system_logs missing" if not parts["present"]
         else f"{parts['partitions']} of {parts['table']}, {parts['ahead']} ahead, "
              f"{_day(parts['oldest'])} .. {_day(parts['covered_until'])}", "partitions_ahead"),
        ("bloat (dead)", f"{bloat['dead_pct']}% of {bloat['live_tuples'] + bloat['dead_tuples']} "
                         "tuples" + "".join(f", {t['table']} {t['dead']}"
                                            for t in bloat["worst_tables"]), "bloat"),
        ("xid age", f"{report['wraparound']['xid_age']} ({report['wraparound']['pct']}% "
                    "to wraparound)", "wraparound"),
    ]
    rows.append(("tls certificate", _certificate(report["tls"]), "tls_expiry"))
    if report["pgbouncer"]["configured"]:
        rows.append(("pgbouncer", _pools(report["pgbouncer"]), None))
    if report.get("cluster") is not None:
        rows.append(("cluster", _cluster(report["cluster"]), "cluster"))
    rows.append(("storage", _phases(report["storage"]), None))
    rows.append(("reconcile backlog", _backlog(report["storage"]["backlog"]),
                 "reconcile_backlog"))
    for what, value, check in rows:
        table.add_row(what, value, mark(check) if check else "")
    return Group(table)


def _phases(storage: dict[str, Any]) -> str:
    """Each entity's phase by this host's settings, and the read store in dual-write."""
    phases = storage["phases"]
    text = ", ".join(f"{entity} {phase}" for entity, phase in phases.items())
    if "dual" in phases.values():
        text += f" (dual reads from {storage['primary']})"
    if storage["problem"]:
        text += f"; REFUSED by the DAL: {storage['problem']}"
    return text


def _backlog(queue: dict[str, Any]) -> str:
    if queue["error"]:
        return queue["error"]
    if not queue["total"]:
        return "none"
    return ", ".join(f"{entity} {e['entries']} (oldest {human_seconds(e['oldest_seconds'])})"
                     for entity, e in queue["entities"].items() if e["entries"])


def _drills(drill: dict) -> str:
    """The last restore drill of each kind: passed (how long ago) or FAILED."""
    if not drill["kinds"]:
        return "none recorded (`donnactl backup drill`)"
    parts = []
    for _, last in sorted(drill["kinds"].items()):
        name = backups.drill_name(last)
        age = last["age_seconds"]
        success = "never passed" if age is None else f"passed {age / 3600:.1f} h ago"
        parts.append(f"{name} FAILED ({success})" if last["failed"] else f"{name} {success}")
    return ", ".join(parts)

"""`donnactl health`: the status figures graded against the thresholds in settings.

Each check's ``name`` is stable: `donnactl metrics` exports it as a label and
``monitoring/alerts.yml`` has a warning and a critical rule per threshold labelled with it.
"""

from __future__ import annotations

from typing import Any

from donnadb.config import Settings
from donnadb.ops import backups, cluster, cutover
from donnadb.ops.checks import Check, Severity, grade_high, grade_low, worst

#: check name -> (warning setting, critical setting); used by docs and the alert-rule test.
THRESHOLDS: dict[str, tuple[str, str]] = {
    "connections": ("health_connections_warn_pct", "health_connections_crit_pct"),
    "cache_hit": ("health_cache_hit_warn_pct", "health_cache_hit_crit_pct"),
    "longest_query": ("health_long_query_warn_seconds", "health_long_query_crit_seconds"),
    "longest_transaction": ("health_long_xact_warn_seconds", "health_long_xact_crit_seconds"),
    "replication_lag": ("health_replication_lag_warn_seconds",
                        "health_replication_lag_crit_seconds"),
    # WARNING is the age at which `donnactl backup check` fails too (one setting).
    "backup_age": ("backup_max_age_hours", "health_backup_crit_age_hours"),
    # The oldest of each pgBackRest repository's newest backup: the same limits.
    "physical_backup_age": ("backup_max_age_hours", "health_backup_crit_age_hours"),
    "archive_lag": ("health_archive_lag_warn_seconds", "health_archive_lag_crit_seconds"),
    # Hours since the last successful restore drill of the kind drilled longest ago.
    "backup_drill": ("backup_drill_max_age_hours", "health_backup_drill_crit_age_hours"),
    "partitions_ahead": ("health_partitions_ahead_warn", "health_partitions_ahead_crit"),
    "bloat": ("health_bloat_warn_pct", "health_bloat_crit_pct"),
    "wraparound": ("health_wraparound_warn_pct", "health_wraparound_crit_pct"),
    "tls_expiry": ("health_tls_expiry_warn_days", "health_tls_expiry_crit_days"),
}


def _limits(settings: Settings, name: str) -> tuple[float, float]:
    warn, crit = THRESHOLDS[name]
    return getattr(settings, warn), getattr(settings, crit)


def _high(settings: Settings, name: str, value: float, unit: str, what: str) -> Check:
    warn, crit = _limits(settings, name)
    sev = grade_high(value, warn, crit)
    return Check(name, sev, value, f"{what} {value:g}{unit} (warn {warn:g}, crit {crit:g})")


def evaluate(report: dict[str, Any], settings: Settings) -> list[Check]:
    """Grade a :func:`donnadb.ops.status.collect` report; one :class:`Check` per figure."""
    checks = [
        Check("database", Severity.OK, 1,
              f"PostgreSQL {report['server']['version'].split()[0]} "
              f"{report['server']['role']} reachable"),
        _high(settings, "connections", report["connections"]["used_pct"], "%",
              "connections in use"),
    ]
    hit = report["cache_hit_pct"]
    if hit is None:
        checks.append(Check("cache_hit", Severity.OK, None, "cache hit ratio: no reads yet"))
    else:
        warn, crit = _limits(settings, "cache_hit")
        checks.append(Check("cache_hit", grade_low(hit, warn, crit), hit,
                            f"cache hit {hit:g}% (warn below {warn:g}, crit below {crit:g})"))
    for name, key, what in (("longest_query", "longest_query", "longest query"),
                            ("longest_transaction", "longest_transaction",
                             "longest transaction")):
        row = report[key]
        seconds = round(row["seconds"], 1) if row else 0.0
        check = _high(settings, name, seconds, "s", what)
        if row and check.severity:
            check = Check(name, check.severity, seconds,
                          f"{check.summary}: pid {row['pid']} ({row['usename']})")
        checks.append(check)
    lag = report["replication"]["lag_seconds"]
    checks.append(_high(settings, "replication_lag", round(lag, 1), "s", "replication lag")
                  if lag is not None
                  else Check("replication_lag", Severity.OK, None, "no replication"))
    checks.append(_backup(report["backup"], settings))
    checks.append(backup_drill(report["drill"], settings))
    if report["archiving"]["enabled"]:
        checks += _archiving(report["archiving"], settings)
    checks.append(_partitions(report["partitions"], settings))
    stray = report["partitions"].get("default_rows") or 0
    checks.append(Check("partition_default", Severity.WARNING if stray else Severity.OK, stray,
                        f"{stray} rows in the default partition of {report['partitions']['table']}"
                        + (" (see docs/runbook.md, Partitions)" if stray else "")))
    checks.append(_high(settings, "bloat", report["bloat"]["dead_pct"], "%", "dead tuples"))
    checks.append(_high(settings, "wraparound", report["wraparound"]["pct"], "%",
                        "transaction id age at"))
    checks.append(tls_expiry(report["tls"], settings))
    if report.get("cluster") is not None:
        checks.append(_cluster(report["cluster"], settings))
    checks.append(reconcile_backlog(report["storage"], settings))
    return checks


def reconcile_backlog(storage: dict[str, Any], settings: Settings) -> Check:
    """WARNING when an entry of the reconcile queue has waited longer than
    RECONCILE_BACKLOG_MAX_AGE_MINUTES (PostgreSQL misses writes nobody replayed), or
    when the queue cannot be read while some entity is in dual-write."""
    queue = storage["backlog"]
    limit = settings.reconcile_backlog_max_age_minutes
    if queue["error"]:
        dual = cutover.in_dual(storage)
        return Check("reconcile_backlog", Severity.WARNING if dual else Severity.OK, None,
                     queue["error"] + ("; run donnactl as the application's user or "
                                       "root to see the backlog" if dual
                                       else " (no entity in dual-write)"))
    oldest = queue["oldest_seconds"]
    if oldest is None:
        return Check("reconcile_backlog", Severity.OK, 0.0,
                     f"reconcile queue empty ({queue['queue']})")
    waiting = ", ".join(f"{entity} {e['entries']}" for entity, e in
                        queue["entities"].items() if e["entries"])
    minutes = round(oldest / 60, 1)
    summary = (f"{queue['total']} entries waiting for reconcile ({waiting}), oldest "
               f"{minutes:g} min (warn at {limit:g})")
    if oldest < limit * 60:  # the alert's comparison, in seconds
        return Check("reconcile_backlog", Severity.OK, minutes, summary)
    return Check("reconcile_backlog", Severity.WARNING, minutes,
                 f"{summary}: run `donnactl migrate-data reconcile` (docs/runbook.md, "
                 "DonnaReconcileBacklogOld)")


def _cluster(view: dict[str, Any], settings: Settings) -> Check:
    severity, reasons = cluster.problems(view, settings)
    if not reasons:
        return Check("cluster", Severity.OK, len(view["members"]),
                     f"cluster {view['cluster']}: leader {view['leader']}, "
                     f"{len(view['members'])} members streaming")
    return Check("cluster", Severity(severity), len(view["members"]),
                 f"cluster {view['cluster'] or '?'}: " + "; ".join(reasons))


def tls_expiry(cert: dict[str, Any], settings: Settings) -> Check:
    """The server certificate's days left (lower is worse); OK where there is none."""
    if not cert["configured"]:
        return Check("tls_expiry", Severity.OK, None,
                     f"no server certificate at {cert['file']} (not a database host)")
    if cert["error"]:
        return Check("tls_expiry", Severity.WARNING, None,
                     f"{cert['error']}: run the deploy to write it again")
    warn, crit = _limits(settings, "tls_expiry")
    days = cert["days_left"]
    sev = grade_low(days, warn, crit)
    summary = (f"server certificate expires {cert['not_after']:%Y-%m-%d %H:%M} UTC, "
               f"{days:.1f} days left (warn at {warn:g}, crit at {crit:g})")
    if sev:
        summary += ": run the deploy, it renews the certificate"
    return Check("tls_expiry", sev, days, summary)


def _backup(backup: dict[str, Any], settings: Settings) -> Check:
    if backup["age_hours"] is None:
        sev = Severity.WARNING if settings.health_backup_required else Severity.OK
        return Check("backup_age", sev, None,
                     f"no successful backup found in {backup['repository']}")
    return _high(settings, "backup_age", backup["age_hours"], "h", "last backup")


def _archiving(arch: dict[str, Any], settings: Settings) -> list[Check]:
    """archive_command failing, archiving behind, and the physical backups' age."""
    checks = [Check("wal_archive", Severity.CRITICAL if arch["failing"] else Severity.OK,
                    int(arch["failing"]),
                    f"archive_command is failing (last failed WAL {arch['last_failed_wal']}): "
                    "see /var/log/pgbackrest and `donnactl backup check`" if arch["failing"]
                    else f"WAL archiving works ({arch['archived_count']} segments archived)")]
    if arch["lag_seconds"] is not None:
        checks.append(_high(settings, "archive_lag", arch["lag_seconds"], "s",
                            f"{arch['pending_segments']} WAL segments waiting; archiving "
                            "behind by"))
    repos = arch["physical"]
    if repos is None:
        return checks
    if not repos or any(r["age_hours"] is None for r in repos.values()):
        sev = Severity.WARNING if settings.health_backup_required else Severity.OK
        checks.append(Check("physical_backup_age", sev, None,
                            "no physical backup recorded in every pgBackRest repository; "
                            "run `donnactl backup physical`"))
        return checks
    repo, oldest = max(repos.items(), key=lambda kv: kv[1]["age_hours"])
    checks.append(_high(settings, "physical_backup_age", oldest["age_hours"], "h",
                        f"newest physical backup in repo{repo}"))
    return checks


def backup_drill(drill: dict[str, Any], settings: Settings) -> Check:
    """The restore drills: CRITICAL when the last drill of a kind (per pgBackRest
    repository for the physical one) failed, else graded on the age of the oldest last
    success. No drill yet of a kind, or of a configured pgBackRest repository, warns
    only where backups are required and older than BACKUP_DRILL_MAX_AGE_HOURS (the
    weekly drill had its turn)."""
    kinds = drill["kinds"]
    failed = sorted(k for k, v in kinds.items() if v["failed"])
    if failed:
        last = kinds[failed[0]]
        return Check("backup_drill", Severity.CRITICAL, None,
                     f"the last {backups.drill_name(last)} restore drill failed: "
                     f"{last.get('problem')} (see docs/runbook.md, DonnaBackupDrillFailed)")
    due = (settings.health_backup_required and drill["oldest_backup_age_hours"] is not None
           and drill["oldest_backup_age_hours"] >= settings.backup_drill_max_age_hours)
    aged = [v for v in kinds.values() if v["age_seconds"] is not None]
    if not aged:
        return Check("backup_drill", Severity.WARNING if due else Severity.OK, None,
                     "no restore drill recorded: run `donnactl backup drill`")
    oldest = max(aged, key=lambda v: v["age_seconds"])
    graded = _high(settings, "backup_drill", round(oldest["age_seconds"] / 3600, 2), "h",
                   f"last {backups.drill_name(oldest)} restore drill")
    # A repository added later (the bucket) is drilled by nobody until the weekly job
    # runs: the others' fresh drills must not hide that it never was.
    drilled = {v["repo"] for v in kinds.values() if v["kind"] == "physical"}
    never = [r for r in backups.pgbackrest_repos(settings) if r not in drilled]
    if never and due and graded.severity == Severity.OK:
        return Check("backup_drill", Severity.WARNING, graded.value,
                     f"no restore drill recorded for pgBackRest repo{never[0]}: run "
                     f"`donnactl backup drill --physical --repo {never[0]}`")
    return graded


def _partitions(parts: dict[str, Any], settings: Settings) -> Check:
    if not parts["present"]:
        return Check("partitions_ahead", Severity.WARNING, None,
                     f"{parts['table']} missing: apply the schema migrations")
    if not parts["current_covered"]:
        return Check("partitions_ahead", Severity.CRITICAL, parts["ahead"],
                     f"{parts['table']}: no partition for the current month "
                     "(run `donnactl partitions maintain`)")
    warn, crit = _limits(settings, "partitions_ahead")
    ahead = parts["ahead"]
    return Check("partitions_ahead", grade_low(ahead, warn, crit), ahead,
                 f"{ahead} {parts['table']} partitions ahead (warn at {warn}, crit at {crit})")


def overall(checks: list[Check]) -> Severity:
    """The worst severity, which is `donnactl health`'s exit code."""
    return worst(checks)

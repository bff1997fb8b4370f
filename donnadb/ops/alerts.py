"""Prometheus recording and alert rules, and Alertmanager's inhibit rules, from settings.

``monitoring/alerts.yml`` is :func:`render_yaml` of the default settings and
``monitoring/alertmanager/inhibit.yml`` is :func:`render_inhibit_yaml` (tests keep both
equal); `donnactl metrics rules` prints the rules for the host's own thresholds.

Every threshold gives two rules of one alert name: ``severity: warning`` at the WARN
setting and ``critical`` at the CRIT one; the inhibit rules silence the warning while the
critical fires. The rules read the standard exporters (postgres_exporter, node_exporter,
the PgBouncer exporter) and the ``donnadb_*`` series of `donnactl metrics` (node_exporter's
textfile) only for what those do not know. Prometheus must name its scrape jobs as
:data:`JOBS` says. docs/monitoring.md lists every alert.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from prometheus_client.parser import text_string_to_metric_families

from donnadb.config import Settings
from donnadb.ops.health import THRESHOLDS

#: Scrape job names the rules key on (``up{job=...}``); the deploy's Prometheus uses them.
#: The ``donnadb_*`` series come through node_exporter's textfile collector (job ``node``).
JOB_POSTGRES = "postgres"
JOB_NODE = "node"
JOB_PROMETHEUS = "prometheus"
JOB_ALERTMANAGER = "alertmanager"
#: No PgBouncer job: Debian 12's exporter fails every scrape against its PgBouncer 1.18
#: (docs/monitoring.md); the pools come as ``donnadb_pgbouncer_*`` through job ``node``.
JOBS = (JOB_POSTGRES, JOB_NODE, JOB_PROMETHEUS, JOB_ALERTMANAGER)

WARNING, CRITICAL = "warning", "critical"
#: Labels that tell two alerts of one name apart on one instance (a database, a pool, a
#: volume, a repository, a drill kind, a statement); absent labels compare equal in
#: Alertmanager.
DISTINCT_LABELS = ["alertname", "instance", "datname", "database", "user", "volume", "repo",
                   "kind", "queryid", "entity"]

_PCT, _HOURS, _DAYS = 0.01, 3600.0, 86400.0
_DURATION, _RATIO, _NUMBER = "humanizeDuration", "humanizePercentage", "humanize"
_DB = " database {{ $labels.datname }}"


@dataclass(frozen=True)
class HealthRule:
    """An alert on one series at a health check's WARN and CRIT thresholds (``check``)."""

    group: str
    alert: str
    series: str
    op: str
    scale: float
    summary: str
    shown: str = _DURATION
    where: str = ""


#: check -> its alert. ``op`` mirrors donnadb.ops.checks.grade_high/grade_low, and the
#: thresholds are the HEALTH_* settings times ``scale`` (metric names are in base units),
#: so a rule on a donnadb_* gauge fires exactly when `donnactl health` says WARNING or
#: CRITICAL. Connections and transaction age come from postgres_exporter instead (the
#: same figures, per database; idle-in-transaction sessions have their own alert).
HEALTH_RULES: dict[str, HealthRule] = {
    "connections": HealthRule("workload", "DonnaConnectionsNearMax",
                              "instance:pg_connections_used:ratio", ">=", _PCT,
                              "client connections near max_connections", _RATIO),
    "cache_hit": HealthRule("workload", "DonnaCacheHitLow", "donnadb_cache_hit_ratio", "<=",
                            _PCT, "buffer cache hit ratio low", _RATIO),
    "longest_query": HealthRule("workload", "DonnaRunawayQuery",
                                "donnadb_longest_query_seconds", ">=", 1,
                                "a query has been running too long"),
    "longest_transaction": HealthRule("workload", "DonnaLongTransaction",
                                      "datname:pg_transaction_max_age:seconds", ">=", 1,
                                      "a transaction has been open too long", where=_DB),
    "replication_lag": HealthRule("replication", "DonnaReplicationLag",
                                  "donnadb_replication_lag_seconds", ">=", 1,
                                  "a replica is lagging"),
    "backup_age": HealthRule("backups", "DonnaBackupTooOld", "donnadb_backup_age_seconds",
                             ">=", _HOURS, "the last successful backup is too old"),
    "physical_backup_age": HealthRule("backups", "DonnaPhysicalBackupTooOld",
                                      "donnadb_physical_backup_age_seconds", ">=", _HOURS,
                                      "a pgBackRest repository's newest backup is too old",
                                      where=" repo {{ $labels.repo }}"),
    "archive_lag": HealthRule("backups", "DonnaWalArchiveBehind",
                              "donnadb_wal_archive_lag_seconds", ">=", 1,
                              "WAL archiving is behind: a lost host would lose that much"),
    "backup_drill": HealthRule("backups", "DonnaBackupDrillStale",
                               "donnadb_backup_drill_age_seconds", ">=", _HOURS,
                               "no successful restore drill for too long",
                               where=" {{ $labels.kind }} drill"
                                     "{{ with $labels.repo }} of repo {{ . }}{{ end }}"),
    "partitions_ahead": HealthRule("storage", "DonnaPartitionsRunningOut",
                                   "donnadb_partitions_ahead", "<=", 1,
                                   "system_logs partitions are running out", _NUMBER),
    "bloat": HealthRule("storage", "DonnaTableBloat", "donnadb_dead_tuples_ratio", ">=", _PCT,
                        "too many dead tuples", _RATIO),
    "wraparound": HealthRule("storage", "DonnaXidWraparound", "donnadb_xid_wraparound_ratio",
                             ">=", _PCT, "transaction id wraparound approaching", _RATIO),
    "tls_expiry": HealthRule("availability", "DonnaTlsCertificateExpiry",
                             "donnadb_tls_cert_remaining_seconds", "<=", _DAYS,
                             "the server's TLS certificate expires soon or has expired"),
}

#: The rule groups, in file order; each has a promtool unit test monitoring/tests/<name>.yml.
GROUPS = ("availability", "workload", "replication", "backups", "storage")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}
_EXPR_RE = re.compile(r"^(\w+)\s*(>=|<=|==|>|<)\s*([0-9.eE+-]+)$")


def _num(value: float) -> str:
    """A threshold as PromQL writes it (no float noise: 0.9, not 0.9000000000000001)."""
    return f"{value:.12g}"


def _record(name: str, expr: str) -> dict:
    return {"record": name, "expr": expr}


def _alert(settings: Settings, alert: str, expr: str, severity: str, summary: str, *,
           shown: str = _NUMBER, wait: str = "5m", check: str | None = None, where: str = "",
           limit: str = "", on: str = "{{ $labels.instance }}") -> dict:
    """One alerting rule. ``where`` names what the series' labels point at (a database, a
    pool ...); ``limit`` is the threshold, said in the description; ``on`` the host."""
    labels = {"severity": severity} | ({"check": check} if check else {})
    said = (f"; now {{{{ $value | {shown} }}}} ({severity} at {{{{ {limit} | {shown} }}}})"
            if limit else "")
    return {
        "alert": alert,
        "expr": expr,
        "for": wait,
        "labels": labels,
        "annotations": {
            "summary": f"{summary} on {on}",
            "description": f"{on}{where}: {summary}{said}.",
            "runbook_url": f"{settings.alert_runbook_url}#{alert.lower()}",
        },
    }


def _tiers(settings: Settings, alert: str, expr: str, tier: tuple[float, float], summary: str,
           **kw: str) -> list[dict]:
    """The warning and critical rule of one alert at ``tier`` (warn, crit); ``{t}`` in
    ``expr`` is the threshold."""
    return [_alert(settings, alert, expr.replace("{t}", _num(limit)), severity, summary,
                   limit=_num(limit), **kw)
            for severity, limit in zip((WARNING, CRITICAL), tier, strict=True)]


def _health(settings: Settings, group: str) -> list[dict]:
    """Both tiers of every health threshold whose alert belongs to ``group``."""
    rules = []
    for check, rule in HEALTH_RULES.items():
        if rule.group != group:
            continue
        tier = tuple(getattr(settings, name) * rule.scale for name in THRESHOLDS[check])
        rules += _tiers(settings, rule.alert, f"{rule.series} {rule.op} {{t}}", tier,
                        rule.summary, shown=rule.shown, check=check, where=rule.where)
    return rules


def _availability(s: Settings) -> list[dict]:
    jobs = "|".join(JOBS)
    textfile = f'node_textfile_mtime_seconds{{file="{s.metrics_textfile}"}}'
    return [
        # Two tiers by duration: a restart is a warning, five minutes down is critical.
        _alert(s, "DonnaTargetDown", f'up{{job=~"{jobs}"}} == 0', WARNING,
               "a scrape target ({{ $labels.job }}) is down", wait="1m"),
        _alert(s, "DonnaTargetDown", f'up{{job=~"{jobs}"}} == 0', CRITICAL,
               "a scrape target ({{ $labels.job }}) is down", wait="5m"),
        _alert(s, "DonnaPostgresDown", "pg_up == 0", CRITICAL,
               "postgres_exporter cannot reach PostgreSQL", wait="1m"),
        _alert(s, "DonnaDatabaseDown", "donnadb_up == 0", CRITICAL,
               "donnactl metrics cannot reach the database", wait="2m", check="database"),
        # A dead metrics timer leaves its last file (and donnadb_up 1) behind: its age
        # tells, and a file that is not there at all must alert too.
        *_tiers(s, "DonnaMetricsStale", f"time() - {textfile} >= {{t}}",
                s.alert_textfile_stale_seconds,
                "the donnadb metrics textfile is not being rewritten", shown=_DURATION,
                wait="0m"),
        _alert(s, "DonnaMetricsMissing", f"absent({textfile})", CRITICAL,
               "node_exporter serves no donnadb metrics textfile", wait="5m",
               on="any host"),  # absent() has no instance label
        *_health(s, "availability"),
    ]


def _workload(s: Settings) -> list[dict]:
    activity = "pg_stat_activity_max_tx_duration"
    return [
        _record("instance:pg_connections_used:ratio",
                "sum without (datname, state) (pg_stat_activity_count) / "
                "(pg_settings_max_connections - pg_settings_superuser_reserved_connections)"),
        _record("datname:pg_transaction_max_age:seconds",
                f'max without (state) ({activity}{{state!~"idle in transaction.*"}})'),
        _record("datname:pg_idle_in_transaction_max_age:seconds",
                f'max without (state) ({activity}{{state=~"idle in transaction.*"}})'),
        _record("datname:pg_xact:rate5m",
                "rate(pg_stat_database_xact_commit[5m]) "
                "+ rate(pg_stat_database_xact_rollback[5m])"),
        _record("datname:pg_xact_rollback:ratio_rate5m",
                "rate(pg_stat_database_xact_rollback[5m]) / datname:pg_xact:rate5m"),
        *_health(s, "workload"),
        *_tiers(s, "DonnaIdleInTransaction",
                "datname:pg_idle_in_transaction_max_age:seconds >= {t}",
                s.alert_idle_xact_seconds,
                "a session has been idle in transaction too long", shown=_DURATION, wait="1m",
                where=_DB),
        *_tiers(s, "DonnaPgBouncerClientsWaiting", "donnadb_pgbouncer_cl_waiting >= {t}",
                s.alert_pgbouncer_waiting,
                "PgBouncer clients are waiting for a server connection", wait="2m",
                where=" pool {{ $labels.database }}/{{ $labels.user }}"),
        *_tiers(s, "DonnaDeadlocks", "increase(pg_stat_database_deadlocks[10m]) >= {t}",
                s.alert_deadlocks,
                "deadlocks in the last 10 minutes", wait="0m", where=_DB),
        *_tiers(s, "DonnaRollbackRatioHigh",
                "datname:pg_xact_rollback:ratio_rate5m >= {t} and datname:pg_xact:rate5m >= "
                + _num(s.alert_rollback_min_tps),
                s.alert_rollback_ratio,
                "many transactions roll back", shown=_RATIO, wait="10m", where=_DB),
        # pg_stat_statements keeps a mean per statement, not a distribution: the alert is
        # on the mean of each busy statement over 5 minutes (its calls and seconds deltas).
        _record("queryid:pg_stat_statements_mean:seconds_rate5m",
                "rate(pg_stat_statements_exec_seconds[5m]) / "
                "rate(pg_stat_statements_calls[5m])"),
        *_tiers(s, "DonnaStatementSlow",
                "queryid:pg_stat_statements_mean:seconds_rate5m >= {t} and "
                "rate(pg_stat_statements_calls[5m]) >= " + _num(s.alert_statement_min_rate),
                s.alert_statement_mean_seconds,
                "a busy statement's mean execution time is high", shown=_DURATION,
                wait="5m", where=" statement {{ $labels.queryid }} ({{ $labels.query }})"),
    ]


def _replication(s: Settings) -> list[dict]:
    # The donnadb_cluster_* series exist only on a Patroni cluster, and replication lag
    # only where replicas stream: on a single host these rules have nothing to read.
    running = "sum without (member) (donnadb_cluster_member_running)"
    return [
        *_health(s, "replication"),
        _alert(s, "DonnaReplicaMissing", f"{running} < {s.patroni_expected_members}", WARNING,
               "fewer cluster members run than PATRONI_EXPECTED_MEMBERS", wait="2m"),
        _alert(s, "DonnaReplicaMissing", f"{running} < 2", CRITICAL,
               "no replica runs: the cluster cannot fail over", wait="2m"),
    ]


def _backups(s: Settings) -> list[dict]:
    return [
        # Health's backup_drill is CRITICAL the moment a drill fails: no threshold.
        _alert(s, "DonnaBackupDrillFailed", "donnadb_backup_drill_failed == 1", CRITICAL,
               "the last restore drill failed", wait="0m", check="backup_drill_failed"),
        _alert(s, "DonnaWalArchiveFailing", "donnadb_wal_archive_failing == 1", CRITICAL,
               "archive_command is failing: WAL is piling up in pg_wal", check="wal_archive"),
        *_health(s, "backups"),
    ]


def _storage(s: Settings) -> list[dict]:
    # donnadb_volume_info{volume, mountpoint} names the filesystems holding the data
    # directory and pg_wal; both sides come from the same node_exporter (same instance).
    on_volume = "donnadb_volume_info * on (instance, mountpoint) group_left ()"
    horizon = _num(s.alert_disk_fill_horizon_hours * _HOURS)
    return [
        _record("volume:node_filesystem_avail:ratio",
                f"{on_volume} (node_filesystem_avail_bytes / node_filesystem_size_bytes)"),
        *_tiers(s, "DonnaDiskSpaceLow", "volume:node_filesystem_avail:ratio <= {t}",
                s.alert_disk_free_ratio,
                "the {{ $labels.volume }} volume is running out of space", shown=_RATIO,
                where=" {{ $labels.mountpoint }}"),
        _alert(s, "DonnaDiskFillingUp",
               f"({on_volume} predict_linear(node_filesystem_avail_bytes[6h], {horizon})) < 0",
               WARNING, "the {{ $labels.volume }} volume will be full within "
               f"{_num(s.alert_disk_fill_horizon_hours)} hours at this rate", wait="30m",
               where=" {{ $labels.mountpoint }}"),
        _alert(s, "DonnaDefaultPartitionRows", "donnadb_partition_default_rows > 0", WARNING,
               "rows fell into the default partition of system_logs", wait="15m",
               check="partition_default"),
        # Health's reconcile_backlog: one threshold, a warning (the files hold the writes).
        _alert(s, "DonnaReconcileBacklogOld",
               "donnadb_reconcile_oldest_seconds >= "
               + _num(s.reconcile_backlog_max_age_minutes * 60), WARNING,
               "dual-write writes PostgreSQL missed have waited too long for reconcile",
               shown=_DURATION, wait="0m", check="reconcile_backlog",
               limit=_num(s.reconcile_backlog_max_age_minutes * 60),
               where=" {{ $labels.entity }}"),
        # Seen at once, where the backlog's age takes RECONCILE_BACKLOG_MAX_AGE_MINUTES, and
        # on an application host whose queue donna-ops cannot read (no backlog series).
        # Writes missed per copy tried, at most 1: after a connection failure a process
        # skips the copy for a while (dual-write's retry_after) and those writes count as
        # failures only. A 0/0 ratio (no copy tried) is NaN and never fires.
        *_tiers(s, "DonnaDualWriteCopiesFailing",
                "clamp_max(increase(donnadb_mirror_failures_total[10m]) / "
                "increase(donnadb_mirror_copies_total[10m]), 1) >= {t}",
                s.alert_mirror_failure_ratio,
                "dual-write copies to PostgreSQL are failing", shown=_RATIO, wait="0m",
                where=" {{ $labels.entity }}"),
        *_health(s, "storage"),
    ]


_BUILDERS = {"availability": _availability, "workload": _workload,
             "replication": _replication, "backups": _backups, "storage": _storage}


def render_rules(settings: Settings) -> dict:
    """The rule file (as data): one group per area of :data:`GROUPS`."""
    return {"groups": [{"name": f"donnadb-{name}", "rules": _BUILDERS[name](settings)}
                       for name in GROUPS]}


def alert_rules(settings: Settings) -> list[dict]:
    """Every alerting rule (recording rules left out), in file order."""
    return [rule for group in render_rules(settings)["groups"] for rule in group["rules"]
            if "alert" in rule]


def render_yaml(settings: Settings) -> str:
    header = ("# Generated by `donnactl metrics rules` from the default settings; a test keeps\n"
              "# it in sync. Thresholds are donnadb.config HEALTH_* and ALERT_* values;\n"
              "# docs/monitoring.md lists every alert.\n")
    return header + yaml.safe_dump(render_rules(settings), sort_keys=False, width=200)


def inhibit_rules() -> list[dict]:
    """Alertmanager ``inhibit_rules``: a firing critical alert silences the warning of the
    same alert name on the same instance (and database, pool, volume ...)."""
    return [{"source_matchers": [f'severity="{CRITICAL}"'],
             "target_matchers": [f'severity="{WARNING}"'],
             "equal": list(DISTINCT_LABELS)}]


def render_inhibit_yaml() -> str:
    header = ("# Generated from donnadb.ops.alerts.inhibit_rules(); a test keeps it in sync.\n"
              "# Merge into alertmanager.yml at the top level.\n")
    return header + yaml.safe_dump({"inhibit_rules": inhibit_rules()}, sort_keys=False)


def evaluate(expr: str, exposition: str) -> bool:
    """Whether a simple rule expression (``metric OP number``) fires on a scrape.

    :raises ValueError: the expression is not of that form (only the rules on one
        ``donnadb_*`` gauge are; promtool's unit tests check the others).
    """
    match = _EXPR_RE.match(expr.strip())
    if not match:
        raise ValueError(f"unsupported alert expression {expr!r}")
    metric, op, number = match.groups()
    samples = [s.value for fam in text_string_to_metric_families(exposition)
               for s in fam.samples if s.name == metric]
    return any(_OPS[op](value, float(number)) for value in samples)

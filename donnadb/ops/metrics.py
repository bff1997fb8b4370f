"""`donnactl metrics`: the status figures in Prometheus exposition format.

A custom collector reads the database on every scrape (``--serve``) or once (the
node_exporter textfile). When the database cannot be read, only ``donnadb_up 0`` and
the figures of this host's files are exported (each entity's storage phase, the
reconcile backlog, dual-write's copies: ops/cutover.py): the alert rules key on
``donnadb_up`` rather than on missing series, and the backlog grows while PostgreSQL is
down. ``host_only`` exports those figures of the host's files alone and never reads the
database (an application host, which has no database and no credential for one).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from donnadb.config import Settings
from donnadb.dal import mirrorstats
from donnadb.dal.fileio import write_atomic
from donnadb.dal.phases import PHASES
from donnadb.errors import DonnaError
from donnadb.ops import cutover, health, status

log = logging.getLogger(__name__)

PREFIX = "donnadb_"
HOUR, DAY = 3600.0, 86400.0


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily | None:
    if value is None:
        return None
    family = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    return family


def _scaled(value: float | None, factor: float) -> float | None:
    """``value`` in base units (seconds, ratios); ``None`` stays unknown."""
    return None if value is None else value * factor


def families(report: dict[str, Any], settings: Settings) -> Iterator[Metric]:
    """Every gauge of a status report (figures that are unknown are left out)."""
    s, c = report["server"], report["connections"]
    simple = [
        ("up", "1 when the database answered the last scrape.", 1),
        ("uptime_seconds", "Seconds since the postmaster started.", s["uptime_seconds"]),
        ("in_recovery", "1 on a replica, 0 on the primary.", int(s["role"] == "replica")),
        ("database_size_bytes", "Size of the database.", s["size_bytes"]),
        ("connections_max", "Connections available to non-superusers.", c["max"]),
        ("connections_used_ratio", "Client connections as a share of the maximum.",
         _scaled(c["used_pct"], 0.01)),
        ("cache_hit_ratio", "Buffer cache hit ratio of the database.",
         _scaled(report["cache_hit_pct"], 0.01)),
        ("longest_query_seconds", "Age of the longest running query.",
         (report["longest_query"] or {}).get("seconds", 0.0)),
        ("longest_transaction_seconds", "Age of the longest open transaction.",
         (report["longest_transaction"] or {}).get("seconds", 0.0)),
        ("replication_lag_seconds", "Worst replication replay lag.",
         report["replication"]["lag_seconds"]),
        ("backup_known", "1 when a successful backup is found in the local repository.",
         int(report["backup"]["age_hours"] is not None)),
        ("backup_age_seconds", "Seconds since the last successful backup finished.",
         _scaled(report["backup"]["age_hours"], HOUR)),
        ("partitions_ahead", "system_logs partitions starting after now.",
         report["partitions"].get("ahead")),
        ("partition_current_covered", "1 when a system_logs partition covers now.",
         None if not report["partitions"]["present"]
         else int(report["partitions"]["current_covered"])),
        ("partition_default_rows", "Rows in the default partition of system_logs (outside "
         "every monthly range).", report["partitions"].get("default_rows")),
        ("dead_tuples_ratio", "Dead tuples as a share of all tuples (bloat estimate).",
         _scaled(report["bloat"]["dead_pct"], 0.01)),
        ("xid_wraparound_ratio", "Age of the oldest unfrozen transaction id, share of 2^31.",
         _scaled(report["wraparound"]["pct"], 0.01)),
        ("schema_migrations_applied", "Number of applied schema migrations.",
         report["schema"]["applied"]),
        ("tls_cert_remaining_seconds", "Seconds until the server's TLS certificate expires.",
         _scaled(report["tls"]["days_left"], DAY)),
    ]
    for name, doc, value in simple:
        family = _gauge(name, doc, value)
        if family is not None:
            yield family
    by_state = GaugeMetricFamily(PREFIX + "connections", "Client connections by state.",
                                 labels=["state"])
    for state, n in sorted(c["by_state"].items()):
        by_state.add_metric([state], n)
    yield by_state
    yield from _drills(report["drill"])
    yield from _volumes(settings)
    yield from _pgbouncer(report["pgbouncer"])
    if report["archiving"]["enabled"]:
        yield from _archiving(report["archiving"])
    if report.get("cluster") is not None:
        yield from _cluster(report["cluster"])
    yield from storage_families(report["storage"])
    checks = GaugeMetricFamily(PREFIX + "health_status",
                               "Health check state: 0 OK, 1 WARNING, 2 CRITICAL.",
                               labels=["check"])
    for check in health.evaluate(report, settings):
        checks.add_metric([check.name], int(check.severity))
    yield checks


def storage_families(storage: dict[str, Any]) -> Iterator[Metric]:
    """Each entity's phase (this host's settings), the reconcile backlog (when the queue
    can be read) and, with MIGRATION_MIRROR_STATS_DIR, dual-write's copies added up over
    the application's processes. Labels are entity and phase names only."""
    phase = GaugeMetricFamily(PREFIX + "storage_phase", "1 for the store each entity is "
                              "in (file, dual or postgresql) by this host's settings, else 0.",
                              labels=["entity", "phase"])
    for entity, current in storage["phases"].items():
        for name in PHASES:
            phase.add_metric([entity, name], int(name == current))
    yield phase
    queue = storage["backlog"]
    if queue["error"] is None:
        size = GaugeMetricFamily(PREFIX + "reconcile_backlog", "Entries of each entity "
                                 "waiting in the dual-write reconcile queue.", labels=["entity"])
        age = GaugeMetricFamily(PREFIX + "reconcile_oldest_seconds", "Age of each entity's "
                                "oldest entry in the reconcile queue (0 when none waits).",
                                labels=["entity"])
        for entity, waiting in queue["entities"].items():
            size.add_metric([entity], waiting["entries"])
            age.add_metric([entity], waiting["oldest_seconds"] or 0.0)
        yield from (size, age)
    mirror = storage["mirror"]
    if mirror is not None and mirror["error"] is None:
        yield from _mirror(mirror["entities"])


def _mirror(entities: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    copies = CounterMetricFamily(PREFIX + "mirror_copies", "Dual-write copies to "
                                 "PostgreSQL tried, per entity.", labels=["entity"])
    failures = CounterMetricFamily(PREFIX + "mirror_failures", "Dual-write writes "
                                   "PostgreSQL missed (queued for reconcile), per entity.",
                                   labels=["entity"])
    seconds = HistogramMetricFamily(PREFIX + "mirror_copy_seconds", "Time of each "
                                    "dual-write copy to PostgreSQL, per entity.",
                                    labels=["entity"])
    bounds = [*(floatToGoString(b) for b in mirrorstats.BUCKETS), "+Inf"]
    for entity, figures in entities.items():
        copies.add_metric([entity], figures["copies"])
        failures.add_metric([entity], figures["failures"])
        seconds.add_metric([entity], list(zip(bounds, figures["buckets"], strict=True)),
                           sum_value=figures["seconds_sum"])
    yield from (copies, failures, seconds)


def _archiving(arch: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """WAL archiving (pg_stat_archiver) and each pgBackRest repository's newest backup."""
    for name, doc, value in (
            ("wal_archive_failing", "1 when archive_command failed after its last success.",
             int(arch["failing"])),
            ("wal_archive_failed_total", "WAL segments archive_command failed on (counter "
             "since the statistics reset).", arch["failed_count"]),
            ("wal_archive_pending_segments", "Complete WAL segments not archived yet.",
             arch["pending_segments"]),
            ("wal_archive_lag_seconds", "Seconds since the last segment was archived while "
             "some are due (0 when none is).", arch["lag_seconds"])):
        family = _gauge(name, doc, value)
        if family is not None:
            yield family
    if arch["physical"] is None:
        return
    age = GaugeMetricFamily(PREFIX + "physical_backup_age_seconds",
                            "Seconds since each pgBackRest repository's newest backup ended.",
                            labels=["repo"])
    for repo, seen in sorted(arch["physical"].items()):
        if seen["age_hours"] is not None:
            age.add_metric([repo], seen["age_hours"] * HOUR)
    yield age


def _cluster(view: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """The Patroni cluster: members, leader, lag per member, paused, timeline."""
    ms = view["members"]
    yield _gauge("cluster_members", "Members Patroni lists in the cluster.", len(ms))
    leader = GaugeMetricFamily(PREFIX + "cluster_leader", "1 for the leader, 0 otherwise.",
                               labels=["member"])
    lag = GaugeMetricFamily(PREFIX + "cluster_replica_lag_bytes",
                            "Replication lag of each replica as Patroni reports it.",
                            labels=["member"])
    running = GaugeMetricFamily(PREFIX + "cluster_member_running",
                                "1 when the member's PostgreSQL runs or streams.",
                                labels=["member"])
    for m in ms:
        leader.add_metric([m["name"]], int(m["name"] == view["leader"]))
        running.add_metric([m["name"]], int(m["state"] in ("running", "streaming")))
        if m["role"] not in ("leader", "standby_leader") and m["lag_bytes"] is not None:
            lag.add_metric([m["name"]], m["lag_bytes"])
    yield from (leader, lag, running)
    for name, doc, value in (
            ("cluster_paused", "1 when the cluster is paused (no automatic failover).",
             None if view["paused"] is None else int(view["paused"])),
            ("cluster_timeline", "The cluster's current timeline.", view["timeline"])):
        family = _gauge(name, doc, value)
        if family is not None:
            yield family


#: (drill-state field, gauge suffix, help) of donnadb_backup_drill_<suffix>{kind,repo}.
DRILL_GAUGES = [
    ("last_success_ts", "last_success_timestamp_seconds",
     "Unix time of the last successful restore drill."),
    ("age_seconds", "age_seconds", "Seconds since the last successful restore drill."),
    ("failed", "failed", "1 when the last restore drill failed."),
    ("rto_seconds", "rto_seconds", "Seconds the last drill took to restore and check."),
    ("rpo_seconds", "rpo_seconds", "Age of the data the last drill restored, seconds."),
]


def _drills(drill: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """Per kind of restore drill that has run (``backup drill``) and, for the physical
    one, per pgBackRest repository (label ``repo``, empty for the logical drill)."""
    if not drill["kinds"]:
        return
    for key, suffix, doc in DRILL_GAUGES:
        family = GaugeMetricFamily(PREFIX + "backup_drill_" + suffix, doc,
                                   labels=["kind", "repo"])
        for _, last in sorted(drill["kinds"].items()):
            if last.get(key) is not None:
                family.add_metric([last["kind"], str(last.get("repo") or "")],
                                  float(last[key]))
        yield family


#: SHOW POOLS column -> help text of its gauge (donnadb_pgbouncer_<column>).
POOL_GAUGES = {"cl_active": "Clients paired with a server connection.",
               "cl_waiting": "Clients waiting for a server connection.",
               "sv_active": "Server connections in use.",
               "sv_idle": "Server connections idle and ready.",
               "maxwait": "Seconds the oldest waiting client has waited."}


def _pgbouncer(bouncer: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """Pool gauges when PgBouncer is configured and answered."""
    if not bouncer["configured"]:
        return
    yield _gauge("pgbouncer_up", "1 when PgBouncer's admin console answered.",
                 int(bouncer["error"] is None))
    for column, doc in POOL_GAUGES.items():
        family = GaugeMetricFamily(PREFIX + "pgbouncer_" + column, doc,
                                   labels=["database", "user"])
        for pool in bouncer["pools"]:
            family.add_metric([pool["database"], pool["user"]], float(pool[column] or 0))
        yield family


#: The volumes PostgreSQL writes to: volume label -> directory under the data directory.
VOLUMES = {"data": ".", "wal": "pg_wal"}
MOUNTS_FILE = Path("/proc/self/mounts")


def mountpoint(path: Path, mounts: list[str]) -> str:
    """The mount point holding ``path`` (already resolved): the longest that contains it."""
    held = [m for m in mounts if path == Path(m) or Path(m) in path.parents]
    return max(held, key=len, default="/")


def _volumes(settings: Settings) -> Iterator[GaugeMetricFamily]:
    """``volume_info{volume, mountpoint}`` 1: which of node_exporter's filesystems hold
    the data directory and pg_wal, for the disk-space alerts to join on. A pg_wal the
    metrics user cannot resolve (the data directory is 0700) counts as the data volume."""
    if settings.pg_data_dir is None:
        return
    try:
        mounts = [line.split()[1].replace("\\040", " ")
                  for line in MOUNTS_FILE.read_text().splitlines()]
    except OSError:
        return
    info = GaugeMetricFamily(PREFIX + "volume_info",
                             "1 for each volume PostgreSQL writes to, and its mount point.",
                             labels=["volume", "mountpoint"])
    for volume, sub in VOLUMES.items():
        real = Path(os.path.realpath(settings.pg_data_dir / sub))
        info.add_metric([volume, mountpoint(real, mounts)], 1)
    yield info


class HostCollector(Collector):
    """This host's own figures (storage phases, reconcile backlog, dual-write's copies):
    no database is read, so no ``donnadb_up`` either."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from storage_families(cutover.collect(self.settings))


class StatusCollector(Collector):
    """Reads the database at collection time; never raises into the HTTP server."""

    def __init__(self, settings: Settings, *, dbname: str | None = None) -> None:
        self.settings = settings
        self.dbname = dbname

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            report = status.collect(self.settings, dbname=self.dbname)
        except DonnaError as exc:
            log.warning("metrics scrape failed: %s", exc)
            yield _gauge("up", "1 when the database answered the last scrape.", 0)
            yield from storage_families(cutover.collect(self.settings))
        else:
            yield from families(report, self.settings)
        yield _gauge("scrape_duration_seconds", "Time spent reading the database.",
                     round(time.monotonic() - started, 4))


def registry(settings: Settings, *, dbname: str | None = None,
             host_only: bool = False) -> CollectorRegistry:
    """The collector of a scrape: :class:`HostCollector` with ``host_only``, else
    :class:`StatusCollector`."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HostCollector(settings) if host_only
                 else StatusCollector(settings, dbname=dbname))
    return reg


def exposition(settings: Settings, *, dbname: str | None = None,
               host_only: bool = False) -> str:
    """One scrape in the text exposition format (``host_only``: :class:`HostCollector`)."""
    return generate_latest(registry(settings, dbname=dbname, host_only=host_only)).decode()


def write_textfile(path: Path, settings: Settings, *, dbname: str | None = None,
                   host_only: bool = False) -> str:
    """Write one scrape to ``path`` atomically (node_exporter may read at any moment).

    :raises OSError: the directory is missing or not writable, or the disk is full.
    """
    text = exposition(settings, dbname=dbname, host_only=host_only)
    # 0644: node_exporter runs as its own user; metrics hold no secrets. A failed write
    # (a full disk) leaves the last scrape in place and no temp file.
    write_atomic(path, text.encode("utf-8"), mode=0o644)
    return text


def serve(port: int, settings: Settings, *, addr: str = "127.0.0.1",
          dbname: str | None = None) -> None:
    """Serve ``/metrics`` on ``addr:port`` until interrupted."""
    start_http_server(port, addr=addr, registry=registry(settings, dbname=dbname))
    log.info("serving metrics", extra={"port": port, "addr": addr})
    while True:
        time.sleep(3600)

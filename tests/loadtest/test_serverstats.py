"""Pool efficiency from PgBouncer's counters (the definition in docs/loadtest.md)."""

from __future__ import annotations

from donnadb.loadtest.serverstats import STATS_FIELDS, pool_report


def counters(xacts: int, xact_us: int, wait_us: int) -> dict[str, int]:
    return {**dict.fromkeys(STATS_FIELDS, 0), "total_xact_count": xacts,
            "total_xact_time": xact_us, "total_wait_time": wait_us}


def test_efficiency_is_served_time_over_served_plus_waiting():
    samples = [{"t": 1, "clients": 40, "waiting": 0, "servers": 10, "maxwait_us": 0},
               {"t": 2, "clients": 60, "waiting": 5, "servers": 12, "maxwait_us": 900}]
    report = pool_report(counters(100, 1_000_000, 0), counters(1100, 10_000_000, 1_000_000),
                         samples)
    assert report["efficiency"] == 9_000_000 / 10_000_000
    assert report["transactions"] == 1000
    assert report["mean_wait_ms_per_xact"] == 1.0
    assert report["peak_client_connections"] == 60 and report["peak_server_connections"] == 12
    assert report["clients_per_server"] == 5.0
    assert report["samples_with_waiting_clients"] == 0.5


def test_no_waiting_is_full_efficiency_and_a_first_use_counts_from_zero():
    report = pool_report(None, counters(10, 5_000, 0), [])
    assert report["efficiency"] == 1.0 and report["transactions"] == 10


def test_missing_statistics_say_so():
    assert pool_report(None, None, [])["efficiency"] is None

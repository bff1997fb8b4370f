"""Retention on generated histories: exactly what the policy says, never the last good."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from donnadb.backup.retention import Candidate, Policy, plan_retention

START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)  # a Thursday


def history(days: int, per_day: int = 1) -> list[Candidate]:
    out = []
    for d in range(days):
        for i in range(per_day):
            t = START + timedelta(days=d, hours=6 * i)
            out.append(Candidate(f"{t:%Y%m%dT%H%M%SZ}", t, True))
    return out


def test_last_n_only():
    backups = history(10)
    plan = plan_retention(backups, Policy(last=3, daily=0, weekly=0, monthly=0))
    assert sorted(plan.keep) == [b.backup_id for b in backups[-3:]]
    assert plan.delete == [b.backup_id for b in backups[:-3]]  # oldest first


def test_daily_keeps_newest_of_each_day():
    backups = history(5, per_day=4)
    plan = plan_retention(backups, Policy(last=1, daily=3, weekly=0, monthly=0))
    expected = {b.backup_id for b in backups if b.finished.hour == 20 and
                b.finished.date() >= (START + timedelta(days=2)).date()}
    assert set(plan.keep) == expected
    assert len(plan.delete) == 20 - 3


def test_weekly_and_monthly_over_a_year():
    backups = history(365)
    plan = plan_retention(backups, Policy(last=2, daily=7, weekly=4, monthly=6))
    kept = {b.backup_id: b.finished for b in backups if b.backup_id in plan.keep}
    # last 7 days cover the 2 "last"; 4 weeks: newest backup of each of the last 4 ISO
    # weeks; 6 months: newest of each of the last 6 months.
    weeks = {tuple(t.isocalendar())[:2] for t in kept.values()}
    months = {(t.year, t.month) for t in kept.values()}
    assert len([t for t in kept.values() if t >= backups[-7].finished]) == 7
    assert len(weeks) >= 4
    assert months >= {(2026, m) for m in range(7, 13)}
    for month in range(7, 12):  # each kept monthly backup is its month's last day
        newest = max(b.finished for b in backups if b.finished.month == month)
        assert newest in kept.values()
    assert len(plan.keep) + len(plan.delete) == 365
    assert len(plan.keep) <= 2 + 7 + 4 + 6
    assert not set(plan.keep) & set(plan.delete)


def test_never_deletes_the_only_good_backup():
    t = START
    backups = [Candidate("a", t, True), Candidate("b", t + timedelta(days=1), False),
               Candidate("c", t + timedelta(days=2), False)]
    plan = plan_retention(backups, Policy(last=1, daily=0, weekly=0, monthly=0))
    assert "a" in plan.keep and plan.delete == []


def test_nothing_good_deletes_nothing():
    backups = [Candidate(str(i), START + timedelta(days=i), False) for i in range(5)]
    plan = plan_retention(backups, Policy(last=1, daily=1, weekly=1, monthly=1))
    assert plan.delete == []


def test_failed_backups_older_than_a_good_one_go():
    backups = [Candidate("old-bad", START, False), Candidate("good", START + timedelta(1), True)]
    plan = plan_retention(backups, Policy(last=5, daily=0, weekly=0, monthly=0))
    assert plan.delete == ["old-bad"] and list(plan.keep) == ["good"]


def test_backup_ids_sort_in_creation_order_within_one_second():
    from datetime import UTC, datetime

    from donnadb.backup import prune, storage_local

    base = datetime(2026, 11, 25, 18, 22, 28, tzinfo=UTC)
    ids = [storage_local.new_backup_id(base.replace(microsecond=us)) for us in (1, 2, 999_999)]
    assert sorted(ids) == ids
    assert prune._id_time(ids[2]) == base.replace(microsecond=999_999)
    assert prune._id_time("20261125T182228Z-abcd") == base  # ids of earlier versions


def test_check_picks_the_newest_backup_even_within_one_second():
    from donnadb.backup.catalog import Row
    from donnadb.backup.check import _newest_good

    def row(backup_id, finished_at, age):
        return Row(backup_id, "s3", True, finished_at, age, 1, "donna", "0003", None)

    older = row("20261125T184309895057Z-222f", "2026-11-25T18:43:10+00:00", 0.0003)
    newer = row("20261125T184310772774Z-418b", "2026-11-25T18:43:10+00:00", 0.0003)
    stale = row("20261124T184310772774Z-0000", "2026-11-24T18:43:10+00:00", 24.0)
    assert _newest_good([older, newer, stale]).backup_id == newer.backup_id
    assert _newest_good([newer, older, stale]).backup_id == newer.backup_id

"""Which backups a retention policy keeps: the last N, then the newest backup of
each of the last D days, W ISO weeks and M months (grandfather-father-son).

Pure logic over (id, finished time, good) so it is tested on generated histories.
Rules that protect the operator:

- only good backups (complete, not failed by verify) count towards the policy;
- a backup that is not good is deleted only when a newer good backup exists
  (an older failure is useless; a newer one may be an upload still running);
- nothing is ever deleted when that would leave no good backup.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Candidate:
    backup_id: str
    finished: datetime
    good: bool


@dataclass
class Policy:
    last: int
    daily: int
    weekly: int
    monthly: int


@dataclass
class Plan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    delete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"keep": self.keep, "delete": self.delete}


def _buckets(good: list[Candidate], count: int, key: Callable[[datetime], Hashable],
             reason: str, plan: Plan) -> None:
    seen: list[Hashable] = []
    for c in good:  # newest first: the first in each bucket is its newest backup
        bucket = key(c.finished)
        if bucket in seen:
            continue
        if len(seen) >= count:
            break
        seen.append(bucket)
        plan.keep.setdefault(c.backup_id, []).append(reason)


def plan_retention(candidates: list[Candidate], policy: Policy) -> Plan:
    """Decide what to keep and what to delete (ids in ``delete`` are oldest first)."""
    ordered = sorted(candidates, key=lambda c: (c.finished, c.backup_id), reverse=True)
    good = [c for c in ordered if c.good]
    plan = Plan()
    if not good:
        for c in ordered:
            plan.keep[c.backup_id] = ["no good backup exists"]
        return plan
    for c in good[: max(policy.last, 1)]:
        plan.keep.setdefault(c.backup_id, []).append("last")
    _buckets(good, policy.daily, lambda t: t.date(), "daily", plan)
    _buckets(good, policy.weekly, lambda t: tuple(t.isocalendar())[:2], "weekly", plan)
    _buckets(good, policy.monthly, lambda t: (t.year, t.month), "monthly", plan)
    newest_good = good[0].finished
    for c in ordered:
        if not c.good and c.finished > newest_good:
            plan.keep[c.backup_id] = ["newer than the newest good backup (may be running)"]
    plan.delete = [c.backup_id for c in reversed(ordered) if c.backup_id not in plan.keep]
    return plan

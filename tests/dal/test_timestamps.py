"""The one timestamp parser the stores and the legacy import share: the cases where readings
of a timestamp used to differ, pinned; and what a DAL caller gets for a bad one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from donnadb.dal.values import (
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    check_timestamp,
    format_timestamp,
    parse_timestamp,
)
from donnadb.errors import DataError
from donnadb.legacy import normalise

T = datetime(2025, 3, 1, 10, 0, 5, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
MINUS_ONE = timezone(-timedelta(hours=1))


def test_the_import_reads_timestamps_with_the_dal_parser():
    assert normalise.parse_timestamp is parse_timestamp
    assert normalise.iso is format_timestamp


@pytest.mark.parametrize("raw", [
    "2025-03-01T15:30:05+05:30",
    "2025-03-01T15:30:05+0530",
    "2025-03-01T05:00:05-05:00",
    "2025-03-01T10:00:05-00:00",
    "2025-03-01T10:00:05Z",
    "2025-03-01T10:00:05z",
    "2025-03-01 10:00:05",                       # no zone: UTC
    datetime(2025, 3, 1, 15, 30, 5, tzinfo=IST),  # an aware datetime: converted
    datetime(2025, 3, 1, 10, 0, 5),              # a naive one: UTC
])
def test_an_offset_is_honoured_and_the_result_is_utc(raw):
    parsed = parse_timestamp(raw)
    assert parsed == T
    assert parsed.utcoffset() == timedelta(0)
    assert format_timestamp(parsed) == "2025-03-01T10:00:05.000000Z"


@pytest.mark.parametrize(("raw", "expected"), [
    ("9999-12-31T23:59:59", TIMESTAMP_MAX.replace(microsecond=0)),
    ("9999-12-31T23:59:59Z", TIMESTAMP_MAX.replace(microsecond=0)),
    ("9999-12-31T23:59:59+01:00", TIMESTAMP_MAX.replace(hour=22, microsecond=0)),
    # Digits past the microsecond are dropped: rounding would carry this past 9999.
    ("9999-12-31T23:59:59.9999999Z", TIMESTAMP_MAX),
    ("0001-01-01T00:00:00Z", TIMESTAMP_MIN),
    ("0001-01-01T01:00:00+01:00", TIMESTAMP_MIN),
    (-62135596800, TIMESTAMP_MIN),
    ("2025-03-01T15:30:05.123456789+05:30", T.replace(microsecond=123456)),
    # Epoch milliseconds are read exactly (a float division gave ...59.998993).
    (253402300799999, TIMESTAMP_MAX.replace(microsecond=999000)),
    ("253402300799999", TIMESTAMP_MAX.replace(microsecond=999000)),
])
def test_the_edges_of_the_range_and_of_precision(raw, expected):
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize("raw", [
    "9999-12-31T23:59:59-01:00",                  # year 10000 in UTC
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=MINUS_ONE),
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",                  # year 0 in UTC
    -62135596801,
    253402300800000,                              # 10000-01-01 in epoch milliseconds
    10**400, -(10**400), "1" * 5000, "1" * 5000 + ".5", float("inf"), float("nan"),
    "2025-03-01T10:00:05+24:00", "yesterday", "", True, [],
])
def test_out_of_range_or_unreadable_is_none_never_an_exception(raw):
    assert parse_timestamp(raw) is None
    with pytest.raises(DataError, match="invalid expires_at .*year 1 to 9999"):
        check_timestamp(raw, "expires_at")


@pytest.mark.parametrize("instant", [
    TIMESTAMP_MIN, TIMESTAMP_MAX, datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC), T,
])
def test_the_written_form_reads_back_as_the_same_instant(instant):
    text = format_timestamp(instant)
    assert text[:4] == f"{instant.year:04d}"
    assert parse_timestamp(text) == instant


def test_the_error_names_the_value_in_one_short_line():
    with pytest.raises(DataError, match=r"^invalid expires_at '1111+\.\.\.1+\\n': use ") as bad:
        check_timestamp("1" * 5000 + "\n", "expires_at")
    assert len(str(bad.value)) < 200 and "\n" not in str(bad.value)
    with pytest.raises(DataError, match="invalid last_active_at <an integer of 16610 bits>"):
        check_timestamp(10**5000, "last_active_at")


def test_a_missing_timestamp_is_none():
    assert parse_timestamp(None) is None
    assert check_timestamp(None, "expires_at") is None


def _user(dal) -> str:
    return dal.create_user({"clerk_id": "user_ts", "email": "ts@example.com"})


def test_every_store_keeps_the_instant_of_an_offset_timestamp(dal):
    uid = _user(dal)
    assert dal.update_user(uid, {"last_active_at": "2025-03-01T15:30:05+05:30"})
    assert dal.get_user_by_id(uid)["last_active_at"] == T
    dal.set_user_memory(uid, "context", "later", 1, expires_at="9999-12-31T23:59:59+01:00")
    assert dal.get_user_memory(uid, "context") == {"later": 1}


@pytest.mark.parametrize("raw", ["9999-12-31T23:59:59-01:00", "whenever", 10**400])
def test_every_store_refuses_a_timestamp_it_cannot_read(dal, raw):
    """A bad ``expires_at`` must not become "never expires", nor a year-10000 value that no
    read could return."""
    uid = _user(dal)
    with pytest.raises(DataError, match="invalid last_active_at"):
        dal.update_user(uid, {"last_active_at": raw})
    with pytest.raises(DataError, match="invalid last_active_at"):
        dal.create_user({"clerk_id": "user_other", "last_active_at": raw})
    with pytest.raises(DataError, match="invalid expires_at"):
        dal.set_user_memory(uid, "context", "k", 1, expires_at=raw)
    assert dal.get_user_by_id(uid)["last_active_at"] is None
    assert dal.get_user_by_clerk_id("user_other") is None
    assert dal.get_user_memory(uid, "context") == {}

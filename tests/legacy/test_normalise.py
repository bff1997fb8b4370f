"""Unit tests of the normalisation rules (no database)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from donnadb.dal.values import LEGACY_MESSAGE_NAMESPACE, legacy_message_id
from donnadb.legacy.chats import own_message_id
from donnadb.legacy.normalise import (
    escape_json,
    escape_str,
    message_uuid,
    normalise_role,
    parse_timestamp,
    unescape_json,
    unescape_str,
    unwrap_memory_value,
    wrap_memory_value,
)

T = datetime(2025, 3, 1, 10, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("raw", [
    "2025-03-01T10:00:05Z",
    "2025-03-01T10:00:05+00:00",
    "2025-03-01T12:00:05+02:00",
    "2025-03-01T05:00:05-05:00",
    "2025-03-01T10:00:05",          # no zone: UTC
    "2025-03-01 10:00:05",          # the space form: UTC
    1740823205,                     # epoch seconds
    "1740823205",
    1740823205000,                  # epoch milliseconds
    "1740823205000",
    1740823205.0,
])
def test_every_timestamp_form_is_utc(raw):
    assert parse_timestamp(raw) == T
    assert parse_timestamp(raw).tzinfo is not None


def test_sub_second_precision_is_kept_exactly():
    assert parse_timestamp(1740823205123) == T.replace(microsecond=123000)
    assert parse_timestamp("2025-03-01T10:00:05.123456Z") == T.replace(microsecond=123456)


@pytest.mark.parametrize("raw", [None, "", "  ", "yesterday", True, [], {}, float("nan"),
                                 "2025-13-45T00:00:00Z", 10**30])
def test_missing_or_unreadable_timestamps_are_none(raw):
    assert parse_timestamp(raw) is None


@pytest.mark.parametrize(("raw", "role", "known"), [
    ("user", "user", True), ("User", "user", True), ("bot", "assistant", True),
    ("ai", "assistant", True), ("SYSTEM", "system", True), (" Assistant ", "assistant", True),
    ("tool", "user", False), (None, "user", False), (7, "user", False),
])
def test_roles(raw, role, known):
    assert normalise_role(raw) == (role, known)


@pytest.mark.parametrize("text", ["NUL \x00 here", "lone \ud800 high", "lone \udfff low",
                                  "both \x00\ud800 and a \\u0000 literal and \"quotes\""])
def test_escaping_is_reversible_and_storable(text):
    stored, changed = escape_str(text)
    assert changed
    assert "\x00" not in stored
    stored.encode("utf-8")  # would raise on a lone surrogate
    assert unescape_str(stored) == text


def test_clean_text_is_left_alone():
    assert escape_str("plain \\u0000 text é") == ("plain \\u0000 text é", False)


def test_json_values_escape_every_string_once_one_needs_it():
    value = {"k\x00": ["v\ud800", "back\\slash", 1, None, {"n": "x"}]}
    stored, changed = escape_json(value)
    assert changed
    assert unescape_json(stored) == value
    clean = {"a": ["b\\n"]}
    assert escape_json(clean) == (clean, False)


def test_memory_values_are_wrapped_only_when_escaped():
    assert wrap_memory_value({"a": 1}) == {"a": 1}
    wrapped = wrap_memory_value("x\x00y")
    assert wrapped != "x\x00y"
    assert unwrap_memory_value(wrapped) == "x\x00y"


@pytest.mark.parametrize("chat_id", ["c_1", "chat-ü-\u4e2d", "x" * 300])
@pytest.mark.parametrize("seq", [1, 2, 99_999])
def test_message_uuid_is_the_dal_position_rule(chat_id, seq):
    expected = uuid.uuid5(LEGACY_MESSAGE_NAMESPACE, f"{chat_id}:{seq}")
    assert message_uuid(chat_id, seq) == expected
    assert str(expected) == legacy_message_id(chat_id, seq)


def test_own_message_id_takes_only_canonical_uuids():
    own = uuid.uuid4()
    assert own_message_id(str(own)) == own
    for other in (str(own).upper(), "{" + str(own) + "}", own.hex, 5, None, "", "x" * 36):
        assert own_message_id(other) is None


@pytest.mark.parametrize("value", [
    {}, {"a": 1, "b": [1.5, None, True], "c": {"d": "é\u2028😀"}}, {"n": -(2**63)},
    {"big": 2**70}, {1: "non-string key"}, {"x": "\x00 kept as \\u0000"},
])
def test_dump_json_stores_what_json_dumps_stores(value):
    """orjson where it is exact, json.dumps where it refuses: jsonb sees the same value."""
    import json

    from donnadb.dal.values import dump_json

    assert json.loads(dump_json(value)) == json.loads(json.dumps(value))

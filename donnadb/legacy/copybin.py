"""Messages as PostgreSQL binary COPY rows, encoded where the files are parsed.

The parallel import (:mod:`donnadb.legacy.parallel`) parses chat files in worker
processes; encoding the rows there too leaves the process that talks to PostgreSQL
nothing to do per row but pass bytes on (with ``--workers 0`` the same encoding runs in
that process). The layout is the one of ``COPY ... (FORMAT BINARY)`` (PostgreSQL docs,
"Binary Format") for the columns :data:`MESSAGE_COLUMNS`, with the values psycopg's
binary dumpers send for uuid, text, jsonb, timestamptz, int4 and bool;
``tests/legacy/test_parallel.py`` checks that both store the same rows.
"""

from __future__ import annotations

import struct
import uuid
from array import array
from collections.abc import Iterable
from datetime import UTC, datetime

from donnadb.dal.values import dump_json
from donnadb.legacy.model import MessageRow

MESSAGE_COLUMNS = ("chat_session_id, id, role, content, metadata, created_at, sequence_number, "
                   "token_count, abuse_flagged")
#: Start and end of a binary COPY stream (no flags, no header extension).
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL = b"\xff\xff\xff\xff"
#: Field count (9), then the chat_session_id field: length 16 and the 16 uuid bytes.
_ROW_HEAD = struct.pack(">hi", 9, 16)
_UUID_LEN = struct.pack(">i", 16)
#: Offset of the chat_session_id bytes inside a row.
CHAT_ID_OFFSET = len(_ROW_HEAD)
_LEN = struct.Struct(">i")
_TS = struct.Struct(">iq")
_INT4 = struct.Struct(">ii")
_TRUE, _FALSE = struct.pack(">ib", 1, 1), struct.pack(">ib", 1, 0)


def _micros(value: datetime) -> int:
    delta = value - _PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


def encode_messages(chat_uuid: uuid.UUID, messages: Iterable[MessageRow]) -> tuple[bytes, array]:
    """Rows of ``messages`` for chat ``chat_uuid`` (no signature, no trailer) and the
    offset of each row, so the chat id can be replaced (:func:`with_chat_id`)."""
    head = _ROW_HEAD + chat_uuid.bytes
    out = bytearray()
    offsets = array("I")
    for m in messages:
        offsets.append(len(out))
        meta = dump_json(m.metadata)
        if isinstance(meta, str):  # json.dumps' answer (integers beyond 64 bits)
            meta = meta.encode()
        out += head
        out += _UUID_LEN
        out += m.id.bytes
        out += _text(m.role)
        out += _text(m.content)
        out += _LEN.pack(len(meta) + 1)
        out += b"\x01"  # jsonb binary format version
        out += meta
        out += _NULL if m.created_at is None else _TS.pack(8, _micros(m.created_at))
        out += _INT4.pack(4, m.sequence_number)
        out += _NULL if m.token_count is None else _INT4.pack(4, m.token_count)
        out += _TRUE if m.abuse_flagged else _FALSE
    return bytes(out), offsets


def with_chat_id(rows: bytes, offsets: array, chat_uuid: uuid.UUID) -> bytes:
    """``rows`` with every row's chat_session_id set to ``chat_uuid`` (a chat that exists
    in the database under another id than the import's deterministic one)."""
    out = bytearray(rows)
    new = chat_uuid.bytes
    for start in offsets:
        at = start + CHAT_ID_OFFSET
        out[at:at + 16] = new
    return bytes(out)

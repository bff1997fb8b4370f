"""The import's chats as :class:`ChatPart`: parsed, normalised and COPY-encoded, in worker
processes when asked.

Reading the JSON files and normalising them is most of the import's Python work, and one
process runs it on one core at a time (the GIL), while the same process also has to feed
PostgreSQL. Workers (``forkserver`` processes: safe next to the importer's threads and
its open connection) each take a run of chat ids, resolve every chat by the duplicate
rule, and return the chat without its messages plus the messages as binary COPY rows
(:mod:`donnadb.legacy.copybin`): the importer's process then only passes bytes on.

The result is the same as the one-process pass of :meth:`LegacyReader.chats`, chat for
chat and note for note: chunks come back in chat_id order, each chat's report is merged
in that order, and the one decision that depends on earlier chats (a message's own id
already claimed) is taken here, in order; a chat it changes is parsed again here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import uuid
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from donnadb.errors import DonnaError
from donnadb.legacy.copybin import encode_messages
from donnadb.legacy.files import ChatSources, Inventory
from donnadb.legacy.model import ChatRow
from donnadb.legacy.reader import TOO_DEEP, LegacyReader
from donnadb.legacy.report import Report

#: Chats per worker task: large enough that a task's overhead (two pickles, a queue hop)
#: is small next to parsing ~50 files, small enough to keep every worker busy.
CHUNK_CHATS = 64
#: ... and at most this many bytes of files per task (a task holds its chats in memory).
CHUNK_BYTES = 4 * 1024 * 1024
#: Tasks in flight per worker. With CHUNK_BYTES it bounds memory to a few times
#: workers x AHEAD x max(CHUNK_BYTES, the largest chat), however large DATA_DIR is.
AHEAD = 3


@dataclass
class ChatPart:
    """One resolved chat ready for the writer: ``chat`` has no messages (they are
    ``rows``, binary COPY rows with the chat's deterministic id, see copybin)."""

    chat_id: str
    chat: ChatRow
    n_messages: int
    size: int
    rows: bytes
    offsets: array
    own_ids: list[uuid.UUID] = field(default_factory=list)


def make_part(chat: ChatRow, report: Report) -> ChatPart | None:
    """The chat's messages encoded; None (quarantined in ``report``) when a value nests
    deeper than the encoder can walk."""
    try:
        rows, offsets = encode_messages(chat.id, chat.messages)
    except RecursionError:
        report.quarantine(chat.source_path, TOO_DEEP, "a message's metadata nests too deeply")
        return None
    part = ChatPart(chat_id=chat.chat_id, chat=chat, n_messages=len(chat.messages),
                    size=sum(len(m.content) for m in chat.messages), rows=rows,
                    offsets=offsets, own_ids=[m.id for m in chat.messages if m.own_id])
    chat.messages = []
    return part


def iter_parts(reader: LegacyReader, workers: int) -> Iterator[ChatPart]:
    """Every chat ``reader.chats()`` would yield, as parts, in the same order, with the
    same notes in ``reader.report``. ``workers`` 0: in this process."""
    if workers <= 0:
        for chat in reader.chats():
            part = make_part(chat, reader.report)
            if part is not None:
                yield part
        return
    reader.start_chats()
    chunks = _chunks(reader.inventory)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_start_worker, initargs=(reader.inventory,))
    try:
        pending: deque[Future] = deque()
        for chunk in chunks:
            pending.append(_submit(pool, chunk))
            if len(pending) >= workers * AHEAD:
                break
        while pending:
            try:
                done = pending.popleft().result()
            except BrokenProcessPool:
                raise _worker_died() from None
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(_submit(pool, nxt))
            for part, report in done:
                reader.report.merge(report)
                if part is None:
                    continue
                if reader.own_ids_free(part.own_ids):
                    reader.claim_ids(part.own_ids)
                else:
                    part = _parse_here(reader, part.chat_id)
                    if part is None:
                        continue  # the files changed under the import: as if quarantined
                reader.report.add("chats")
                reader.report.add("messages", part.n_messages)
                yield part
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(inventory: Inventory) -> Iterator[list[str]]:
    """The chat ids in order, cut every CHUNK_CHATS chats or CHUNK_BYTES of files."""
    chunk: list[str] = []
    size = 0
    for chat_id in inventory.chat_ids():
        chunk.append(chat_id)
        size += _source_bytes(inventory.chats[chat_id])
        if len(chunk) >= CHUNK_CHATS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _source_bytes(sources: ChatSources) -> int:
    paths = [sources.session, sources.transcript, *(p for _, p in sources.conversations)]
    total = 0
    for path in paths:
        if path is not None:
            with contextlib.suppress(OSError):  # gone or unreadable: the reader reports it
                total += path.stat().st_size
    return total


def _submit(pool: ProcessPoolExecutor, chunk: list[str]) -> Future:
    try:
        return pool.submit(_parse_chunk, chunk)
    except (BrokenProcessPool, BrokenPipeError):
        # A worker killed before the pool noticed: starting its replacement through the
        # forkserver fails with a broken pipe.
        raise _worker_died() from None


def _worker_died() -> DonnaError:
    return DonnaError("a file-parsing worker process died (out of memory? killed?); what "
                      "was committed stays: re-run the import (--workers 0 parses in one "
                      "process)")


def _parse_here(reader: LegacyReader, chat_id: str) -> ChatPart | None:
    """A chat whose own message ids clash with an earlier chat's: resolved again in this
    process (its notes already came from the worker), then claimed as the reader does."""
    kept, reader.report = reader.report, Report()
    try:
        chat = reader.resolve(chat_id)
    finally:
        reader.report = kept
    if chat is None:
        return None
    reader.claim_message_ids(chat)
    return make_part(chat, reader.report)


# -- in the worker processes --------------------------------------------------------------

_worker_reader: LegacyReader | None = None


def _start_worker(inventory: Inventory) -> None:
    global _worker_reader
    _worker_reader = LegacyReader(inventory=inventory)
    # Ctrl-C reaches the whole process group: the importing process handles it and shuts
    # the pool down; a worker dying of it would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _parse_chunk(chat_ids: list[str]) -> list[tuple[ChatPart | None, Report]]:
    reader = _worker_reader
    assert reader is not None
    out = []
    for chat_id in chat_ids:
        reader.report = Report()
        chat = reader.resolve(chat_id)
        out.append((None if chat is None else make_part(chat, reader.report), reader.report))
    return out

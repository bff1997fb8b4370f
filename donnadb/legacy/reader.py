"""Reading a legacy DATA_DIR as a stream of normalised rows.

Duplicate rule for a chat_id (docs/migrate-data.md):

1. ``chat_sessions/<chat_id>.json`` is the truth when it is readable;
2. else the newest readable copy under ``conversations/*/`` (by ``updated_at``, then
   by path) is imported, so a chat found only there is never dropped;
3. else ``chat_history/<chat_id>.txt`` is imported (an anonymous chat);
4. a transcript next to a JSON chat is only a cross-check: differences are noted.

Chats are yielded in code-point order of chat_id, one at a time: memory use is bounded
by the largest single file, never by the size of the directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donnadb.legacy import chats as chatmod
from donnadb.legacy.files import ChatSources, Inventory, mtime, read_json_object, read_text, scan
from donnadb.legacy.logs import iter_logs
from donnadb.legacy.model import ChatRow, LogRow, UserRow
from donnadb.legacy.report import Report
from donnadb.legacy.users import iter_users

#: Quarantine reason of a file whose values nest deeper than Python can walk.
TOO_DEEP = "nested too deeply"


@dataclass
class LegacyReader:
    """``LegacyReader.open(DATA_DIR)`` then iterate users, chats and logs (in that order:
    users first so chats find their owners)."""

    inventory: Inventory
    report: Report = field(default_factory=Report)
    #: Own message ids already used in this pass over the chats.
    _message_ids: set = field(default_factory=set, repr=False)

    def start_chats(self) -> None:
        """Forget the message ids claimed by an earlier pass (:meth:`chats` does it)."""
        self._message_ids = set()

    @classmethod
    def open(cls, data_dir: Path, report: Report | None = None) -> LegacyReader:
        """:raises UsageError: DATA_DIR is not a directory."""
        report = report or Report()
        return cls(inventory=scan(Path(data_dir), report), report=report)

    def users(self) -> Iterator[UserRow]:
        return iter_users(self.inventory, self.report)

    def chats(self) -> Iterator[ChatRow]:
        self.start_chats()
        for chat_id in self.inventory.chat_ids():
            chat = self.resolve(chat_id)
            if chat is not None:
                self.claim_message_ids(chat)
                self.report.add("chats")
                self.report.add("messages", len(chat.messages))
                yield chat

    def resolve(self, chat_id: str) -> ChatRow | None:
        """The chat ``chat_id`` by the duplicate rule, before :meth:`claim_message_ids`
        (what :meth:`chats` yields, one chat at a time; the parallel import's workers call
        it). None when every source of it is quarantined."""
        return self._resolve(chat_id, self.inventory.chats[chat_id])

    def logs(self) -> Iterator[LogRow]:
        return iter_logs(self.inventory, self.report)

    @property
    def totals(self) -> dict[str, int]:
        """File counts per phase (for progress bars)."""
        return {"users": len(self.inventory.memory), "chats": len(self.inventory.chats),
                "logs": len(self.inventory.logs)}

    # -- the duplicate rule -------------------------------------------------------------

    def _json_chat(self, path: Path, chat_id: str, source: str | None) -> ChatRow | None:
        inv, report = self.inventory, self.report
        doc = read_json_object(path, inv, report)
        if doc is None:
            return None
        try:
            return chatmod.chat_from_json(doc, chat_id, inv.rel(path), source, mtime(path))
        except chatmod.ChatFileError as exc:
            report.quarantine(inv.rel(path), "not a chat", str(exc))
            return None
        except RecursionError:
            report.quarantine(inv.rel(path), TOO_DEEP, "a value nests too deeply to normalise")
            return None

    def _transcript_chat(self, path: Path, chat_id: str) -> ChatRow | None:
        inv, report = self.inventory, self.report
        text = read_text(path, inv, report)
        if text is None:
            return None
        try:
            return chatmod.chat_from_transcript(text, chat_id, inv.rel(path), mtime(path))
        except chatmod.ChatFileError as exc:
            report.quarantine(inv.rel(path), "not a transcript", str(exc))
            return None

    def own_ids_free(self, ids: list) -> bool:
        """True when claiming ``ids`` (one chat's own message ids) would change none."""
        return len(set(ids)) == len(ids) and self._message_ids.isdisjoint(ids)

    def claim_ids(self, ids: list) -> None:
        """Record ids :meth:`own_ids_free` found free (a chat parsed elsewhere)."""
        self._message_ids.update(ids)

    def claim_message_ids(self, chat: ChatRow) -> None:
        """A message's own id is used once: a later message carrying the same id (a chat
        copied under another chat_id, a duplicated line) falls back to the position rule,
        in chat_id order, so every run decides the same way. Call it for every chat, in
        chat_id order."""
        for m in chat.messages:
            if m.own_id:
                if m.id in self._message_ids:
                    chatmod.drop_own_id(chat.chat_id, m)
                    self.report.note(chat.source_path, "message_id_duplicate",
                                     f"message {m.sequence_number}: its id is used by an "
                                     "earlier message (position rule used)")
                else:
                    self._message_ids.add(m.id)

    def _resolve(self, chat_id: str, sources: ChatSources) -> ChatRow | None:
        inv, report = self.inventory, self.report
        chosen = None
        if sources.session is not None:
            chosen = self._json_chat(sources.session, chat_id, None)
        copies: list[tuple[Any, str, ChatRow]] = []
        for user_key, path in sources.conversations:
            copy = self._json_chat(path, chat_id, f"conversations/{user_key}")
            if copy is not None:
                copies.append((copy.updated_at, inv.rel(path), copy))
        if chosen is not None:
            for _, rel, copy in copies:
                if _digest(copy) != _digest(chosen):
                    report.note(rel, "duplicate_superseded",
                                f"differs from chat_sessions/{chat_id}.json, which wins")
        elif copies:
            copies.sort(key=lambda c: (c[0], c[1]))
            chosen = copies[-1][2]
            if sources.session is not None:
                report.note(copies[-1][1], "fallback_copy_used",
                            f"chat_sessions/{chat_id}.json is quarantined")
            for _, rel, _copy in copies[:-1]:
                report.note(rel, "duplicate_superseded", f"older copy of {chat_id}")
        if sources.transcript is not None:
            if chosen is None:
                chosen = self._transcript_chat(sources.transcript, chat_id)
            else:
                self._cross_check(sources.transcript, chat_id, chosen)
        return chosen

    def _cross_check(self, path: Path, chat_id: str, chat: ChatRow) -> None:
        inv, report = self.inventory, self.report
        text = read_text(path, inv, report)
        if text is None:
            return
        try:
            transcript = chatmod.chat_from_transcript(text, chat_id, inv.rel(path), mtime(path))
        except chatmod.ChatFileError as exc:
            report.quarantine(inv.rel(path), "not a transcript", str(exc))
            return
        theirs = chatmod.transcript_signature(transcript)
        ours = chatmod.transcript_signature(chat)
        if theirs == ours:
            report.add("transcripts_cross_checked")
        elif ours[: len(theirs)] == theirs:
            report.note(inv.rel(path), "transcript_prefix",
                        f"transcript has {len(theirs)} of {len(ours)} messages (older)")
        else:
            report.note(inv.rel(path), "transcript_differs",
                        f"{len(theirs)} vs {len(ours)} messages; the JSON chat is imported")


def _digest(chat: ChatRow) -> tuple:
    return (chat.clerk_id, chat.title, chat.created_at, chat.updated_at, len(chat.messages),
            [(m.role, m.content) for m in chat.messages])

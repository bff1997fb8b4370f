"""Writes realistic legacy data directories of any size, with every known deviation.

Used by the tests and by ``bench/import.py``::

    from donnadb.legacy.fixtures import generate
    info = generate(Path("/tmp/data"), users=50, chats=200, messages_per_chat=20)

``deviations=True`` adds one instance of each deviation of legacy-format.md (see
:func:`_deviations`); ``info.quarantined`` lists the paths the import must quarantine.
The output is deterministic for a given ``seed`` (file mtimes excepted).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "the a to and of in is you that it for on with as are this be at have not your can "
    "trip Lisbon flight hotel dinner recipe python database meeting budget weather music "
    "book train museum coffee garden project deadline report email summary plan idea "
    "question answer thanks please could would should tomorrow today week month year "
    "travel price ticket booking cancel change help explain why how what when where"
).split()
BASE = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class Generated:
    """What was written: counts and the paths the import must quarantine."""

    root: Path
    users: int = 0
    chats: int = 0
    messages: int = 0
    logs: int = 0
    quarantined: list[str] = field(default_factory=list)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, payload: Any, *, raw: bytes | None = None, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = raw if raw is not None else json.dumps(payload, ensure_ascii=True).encode()
    path.write_bytes(data)
    os.chmod(path, mode)


def _chat(rng: random.Random, chat_id: str, clerk: str | None, start: datetime,
          n: int) -> dict[str, Any]:
    messages = []
    ts = start
    for i in range(n):
        ts += timedelta(seconds=rng.randint(2, 90))
        role = "user" if i % 2 == 0 else "assistant"
        msg: dict[str, Any] = {"role": role, "content": _text(rng, rng.randint(3, 40)),
                               "timestamp": _iso(ts), "metadata": {}}
        if role == "assistant":
            msg["metadata"] = {"latency_ms": rng.randint(200, 3000)}
            msg["tokens"] = rng.randint(5, 400)
        elif rng.random() < 0.3:
            msg["flagged"] = False
        messages.append(msg)
    return {"chat_id": chat_id, "user_id": clerk, "title": _text(rng, 3)[:-1],
            "profile": rng.choice(["general", "travel", "work"]), "created_at": _iso(start),
            "updated_at": _iso(ts), "metadata": {"model": "gpt-4o", "client": "web"},
            "messages": messages}


def _memory(rng: random.Random, clerk: str | None, email: str, i: int) -> dict[str, Any]:
    return {"user_id": clerk, "email": email, "name": f"User {i}",
            "profile": {"timezone": rng.choice(["Europe/Lisbon", "UTC", "America/New_York"])},
            "preferences": {"language": rng.choice(["pt", "en", "de"]), "tone": "short"},
            "context": {"last_trip": {"city": "Lisbon"}, "pet": rng.choice(["cat", "dog"]),
                        "notes": [1, 2.5, None, "x"]},
            "expires": {"context.last_trip": "2026-01-01T00:00:00Z"},
            "updated_at": _iso(BASE + timedelta(days=i % 300))}


def _transcript(doc: dict[str, Any]) -> str:
    lines = []
    for m in doc["messages"]:
        stamp = datetime.fromisoformat(m["timestamp"]).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"[{stamp}] {m['role']}: {m['content']}")
    return "\n".join(lines) + "\n"


def generate(root: Path, *, users: int = 20, chats: int = 50, messages_per_chat: int = 10,
             logs: int = 100, deviations: bool = True, seed: int = 7,
             large_message_bytes: int = 2 * 1024 * 1024,
             long_chat_messages: int = 20_000) -> Generated:
    """Write a data directory under ``root`` (created; must not hold a data dir yet)."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    root.mkdir(parents=True, exist_ok=True)
    info = Generated(root=root)
    clerks = [f"user_{seed}{i:05d}x{rng.randrange(16**4):04x}" for i in range(users)]
    # 80% of users have a memory file; every 10th user has only chats (an orphan).
    for i, clerk in enumerate(clerks):
        if i % 10 == 3:
            continue
        _write(root / "memory" / f"{clerk}.json",
               _memory(rng, clerk, f"u{i}@example.com", i), mode=0o600)
    info.users = users
    for n in range(chats):
        chat_id = f"c_{seed}{n:06d}"
        clerk = None if n % 17 == 5 else clerks[n % max(users, 1)] if users else None
        start = BASE + timedelta(minutes=37 * n)
        doc = _chat(rng, chat_id, clerk, start, max(1, messages_per_chat + rng.randint(-3, 3)))
        _write(root / "chat_sessions" / f"{chat_id}.json", doc, mode=0o600)
        info.chats += 1
        info.messages += len(doc["messages"])
        if n % 10 == 1 and clerk:  # a per-user export, identical copy
            _write(root / "conversations" / clerk / f"{chat_id}.json", doc, mode=0o600)
        if n % 12 == 2:  # an older plain-text transcript of the same chat
            (root / "chat_history").mkdir(exist_ok=True)
            (root / "chat_history" / f"{chat_id}.txt").write_text(_transcript(doc))
    (root / "logs").mkdir(exist_ok=True)
    with (root / "logs" / "app-2025-01.jsonl").open("w") as fh:
        for n in range(logs):
            fh.write(json.dumps({
                "ts": _iso(BASE + timedelta(seconds=97 * n)),
                "level": rng.choice(["info", "warning", "error"]), "message": _text(rng, 6),
                "context": {"n": n}, "trace_id": f"t{n:08x}", "ip": f"203.0.113.{n % 250}",
                "user_agent": "Mozilla/5.0", "uri": "/api/chat"}) + "\n")
    info.logs = logs
    (root / "generated_pages").mkdir(exist_ok=True)
    (root / "generated_pages" / "index.html").write_text("<html>not database data</html>\n")
    if deviations:
        _deviations(root, rng, clerks, info, large_message_bytes, long_chat_messages)
    return info


def _deviations(root: Path, rng: random.Random, clerks: list[str], info: Generated,
                large_message_bytes: int, long_chat_messages: int) -> None:
    """One instance of every deviation listed in legacy-format.md."""
    q = info.quarantined
    owner = clerks[0] if clerks else None
    # Cut short by a crash (no other copy: quarantined) ...
    full = json.dumps(_chat(rng, "c_truncated", owner, BASE, 4)).encode()
    _write(root / "chat_sessions" / "c_truncated.json", None, raw=full[: len(full) // 2])
    q.append("chat_sessions/c_truncated.json")
    # ... and cut short with an older per-user export: the copy is imported.
    doc = _chat(rng, "c_truncated_has_copy", owner, BASE, 5)
    full = json.dumps(doc).encode()
    _write(root / "chat_sessions" / "c_truncated_has_copy.json", None, raw=full[:-7])
    q.append("chat_sessions/c_truncated_has_copy.json")
    _write(root / "conversations" / (owner or "anon") / "c_truncated_has_copy.json", doc)
    # Empty files and editor backups.
    _write(root / "chat_sessions" / "c_empty.json", None, raw=b"")
    q.append("chat_sessions/c_empty.json")
    _write(root / "memory" / "user_empty.json", None, raw=b"  \n")
    q.append("memory/user_empty.json")
    _write(root / "chat_sessions" / "c_000001.json~", None, raw=b'{"chat_id": "old"}')
    q.append("chat_sessions/c_000001.json~")
    _write(root / "memory" / ".#user_locked.json", None, raw=b"user@host.1234")
    q.append("memory/.#user_locked.json")
    _write(root / "chat_sessions" / ".c_bom.json.k2j4.tmp", None, raw=b'{"chat_id": "c_bo')
    q.append("chat_sessions/.c_bom.json.k2j4.tmp")
    # Fields the DAL's file store adds (status, last_active_at).
    archived = _chat(rng, "c_archived", owner, BASE + timedelta(days=1), 2)
    _write(root / "chat_sessions" / "c_archived.json", dict(archived, status="archived"))
    # A UTF-8 byte-order mark (stripped and imported).
    doc = _chat(rng, "c_bom", owner, BASE + timedelta(days=2), 3)
    _write(root / "chat_sessions" / "c_bom.json", None,
           raw=b"\xef\xbb\xbf" + json.dumps(doc).encode())
    # Every timestamp form and role spelling, NUL and lone surrogates, odd fields.
    t = BASE + timedelta(days=3)
    epoch = int(t.timestamp())
    odd = {"chat_id": "c_odd", "user_id": owner, "title": "Odd \u0000 title",
           "created_at": "2025-01-04 00:00:00", "metadata": {"k\u0000": "v\ud800"},
           "pinned": True, "messages": [
               {"role": "User", "content": "iso with zone", "timestamp": "2025-01-04T00:00:01Z"},
               {"role": "bot", "content": "iso offset", "timestamp": "2025-01-04T02:00:02+02:00"},
               {"role": "ai", "content": "iso naive", "timestamp": "2025-01-04T00:00:03"},
               {"role": "SYSTEM", "content": "epoch s", "timestamp": epoch + 4},
               {"role": "user", "content": "epoch ms", "timestamp": (epoch + 5) * 1000 + 123},
               {"role": "Assistant", "content": "space form", "timestamp": "2025-01-04 00:00:06"},
               {"role": "user", "content": "missing timestamp"},
               {"role": "tool", "content": "unknown role", "timestamp": "yesterday"},
               {"role": "user", "content": "NUL \u0000 inside", "timestamp": epoch + 9},
               {"role": "assistant", "content": "lone \ud800 surrogate \\u0000 literal",
                "timestamp": epoch + 10, "tokens": "12", "flagged": "yes", "id": "m-10"},
               {"role": "user", "content": ["a", {"part": 2}], "timestamp": epoch + 11},
               {"role": "assistant", "content": None, "timestamp": epoch + 12},
           ]}
    _write(root / "chat_sessions" / "c_odd.json", odd, mode=0o777)
    # A chat with no timestamps anywhere (falls back to the file's mtime).
    _write(root / "chat_sessions" / "c_no_times.json",
           {"chat_id": "c_no_times", "user_id": None,
            "messages": [{"role": "user", "content": "when?"}]})
    # Very large message and a very long chat.
    if large_message_bytes:
        words = []
        size = 0
        while size <= large_message_bytes:  # the joined text is size - 1 long
            w = rng.choice(WORDS)
            words.append(w)
            size += len(w) + 1
        big = _chat(rng, "c_large_message", owner, BASE + timedelta(days=4), 2)
        big["messages"][1]["content"] = " ".join(words)
        _write(root / "chat_sessions" / "c_large_message.json", big)
        info.messages += 2
    if long_chat_messages:
        long_doc = _chat(rng, "c_long", owner, BASE + timedelta(days=5), long_chat_messages)
        _write(root / "chat_sessions" / "c_long.json", long_doc)
        info.messages += long_chat_messages
    # Orphan user (chat but no memory file) and memory without chats.
    _write(root / "chat_sessions" / "c_orphan.json",
           _chat(rng, "c_orphan", "user_orphan_only_chat", BASE + timedelta(days=6), 2))
    _write(root / "memory" / "user_memory_only.json",
           dict(_memory(rng, "user_memory_only", "memonly@example.com", 999),
                status="suspended", last_active_at="2025-06-01T12:00:00Z"))
    # Files named by e-mail: one matched to a Clerk id by e-mail, one with no Clerk id.
    if len(clerks) > 1:
        _write(root / "memory" / "u1@example.com.json",
               {"email": "u1@example.com", "context": {"early_note": "from 2023"},
                "updated_at": "2023-06-01T00:00:00Z"})
    _write(root / "memory" / "early@example.com.json",
           {"email": "early@example.com", "name": "Early",
            "preferences": {"tone": "long \u0000 nul"}, "updated_at": 1690000000})
    # The same chat_id in two places with different contents: chat_sessions wins ...
    dup = _chat(rng, "c_dup", owner, BASE + timedelta(days=7), 4)
    _write(root / "chat_sessions" / "c_dup.json", dup)
    stale = dict(dup, title="Stale export", messages=dup["messages"][:2])
    _write(root / "conversations" / (owner or "anon") / "c_dup.json", stale)
    _write(root / "chat_history" / "c_dup.txt", None,
           raw=_transcript(dict(dup, messages=dup["messages"][:3])).encode())
    # ... a chat found only in conversations/ or only as a transcript is imported.
    _write(root / "conversations" / "user_conv_only" / "c_conv_only.json",
           _chat(rng, "c_conv_only", "user_conv_only", BASE + timedelta(days=8), 3))
    _write(root / "chat_history" / "c_transcript_only.txt", None,
           raw=b"[2024-05-01 10:00:00] user: first line of the message\n"
               b"a message may continue over several lines\n"
               b"[2024-05-01 10:00:09] assistant: the answer\n")
    # Logs: a bad line, a truncated last line, odd timestamps and an invalid IP.
    with (root / "logs" / "app-2025-02.jsonl").open("w") as fh:
        fh.write(json.dumps({"ts": 1738368000123, "level": "ERROR", "message": "epoch ms",
                             "ip": "not-an-ip"}) + "\n")
        fh.write("this is not json\n")
        fh.write("\n")
        fh.write(json.dumps({"level": "info", "message": "no ts \u0000"}) + "\n")
        fh.write('{"ts": "2025-02-01 00:00:09", "level": "warn", "mess')
    q += ["logs/app-2025-02.jsonl:2", "logs/app-2025-02.jsonl:5"]
    # World-writable files and folders, as the old app left them.
    os.chmod(root / "chat_sessions", 0o777)  # noqa: S103 - the deviation under test
    os.chmod(root / "memory" / "user_memory_only.json", 0o777)  # noqa: S103

"""The normalised rows the reader yields and the importer, verify and export share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class MessageRow:
    id: uuid.UUID
    sequence_number: int
    role: str
    content: str
    metadata: dict[str, Any]
    created_at: datetime
    token_count: int | None
    abuse_flagged: bool
    #: ``id`` is the message's own "id" from the file (see chats.own_message_id).
    own_id: bool = False


@dataclass
class ChatRow:
    id: uuid.UUID
    chat_id: str
    clerk_id: str | None
    title: str | None
    profile: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    messages: list[MessageRow]
    #: Relative path of the file the chat came from (for reports).
    source_path: str
    #: Written by the DAL's file store (absent from older files: active).
    status: str = "active"
    #: The file carries a readable ``updated_at``: only then may it replace a stored row.
    versioned: bool = True


@dataclass
class MemoryRow:
    id: uuid.UUID
    memory_type: str
    key: str
    value: Any
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


@dataclass
class UserRow:
    id: uuid.UUID
    clerk_id: str | None
    email: str | None
    name: str | None
    profile: dict[str, Any]
    preferences: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    memory: list[MemoryRow] = field(default_factory=list)
    source_paths: list[str] = field(default_factory=list)
    #: Written by the DAL's file store (absent from older files).
    status: str = "active"
    last_active_at: datetime | None = None
    #: Some memory file of the user carries a readable ``updated_at`` (see ChatRow).
    versioned: bool = True


@dataclass
class LogRow:
    id: uuid.UUID
    level: str
    message: str
    context: dict[str, Any]
    trace_id: str | None
    ip_address: str | None
    user_agent: str | None
    request_uri: str | None
    created_at: datetime
    #: ``file.jsonl:LINE`` relative to logs/.
    source: str

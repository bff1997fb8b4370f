"""Which store holds each entity (DATA_STORAGE_USERS ... DATA_STORAGE_LOGS), and which
combinations can stay consistent.

An entity's phase is one of ``file`` (files only), ``dual`` (files, then a copy in
PostgreSQL; reads from MIGRATION_PRIMARY_STORE) or ``postgresql`` (PostgreSQL only).

The rules follow from two facts. PostgreSQL rows reference their parents (a memory row
and a chat session its user, a message its chat session), and a parent row must be
there, kept from the store that is the truth for it. And the legacy files keep two
pairs of entities in one file: a user's profile, preferences and memory in
``memory/<user>.json``, a chat session's metadata and its messages in
``chat_sessions/<chat>.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from donnadb.errors import ConfigError

#: The entities, parents before children (the order a cut-over moves them in reverse).
ENTITIES = ("users", "memory", "chats", "messages", "logs")
PHASES = ("file", "dual", "postgresql")
#: How far toward PostgreSQL a phase is.
RANK = {phase: n for n, phase in enumerate(PHASES)}


def setting(entity: str) -> str:
    return f"DATA_STORAGE_{entity.upper()}"


def _is(phases: Mapping[str, str], entity: str) -> str:
    return f"{setting(entity)}={phases[entity]}"


def _users_and_memory(p: Mapping[str, str], primary: str) -> str | None:
    # One memory file holds both; profile and preferences are user fields and memory
    # types at once. Half of that file in PostgreSQL alone would leave the other half
    # stale (or, for a user only in PostgreSQL, nowhere to write its memory to).
    if (p["users"] == "postgresql") != (p["memory"] == "postgresql"):
        return (f"{_is(p, 'users')} with {_is(p, 'memory')}: a user's profile, preferences "
                "and memory share one memory file, so they move to PostgreSQL together; "
                "set both to postgresql, or neither")
    return None


def _chats_and_users(p: Mapping[str, str], primary: str) -> str | None:
    if p["chats"] == "postgresql" and p["users"] == "file":
        # A chat row references its user's row, which nothing would keep up to date.
        return (f"{_is(p, 'chats')} with {_is(p, 'users')}: chat sessions only in "
                "PostgreSQL need their users' rows kept there; set DATA_STORAGE_USERS to "
                "dual (or DATA_STORAGE_CHATS to dual)")
    if p["users"] == "postgresql" and p["chats"] != "postgresql":
        # The file store refuses a chat whose user has no memory file.
        return (f"{_is(p, 'users')} with {_is(p, 'chats')}: a chat session file needs its "
                "user's memory file; set DATA_STORAGE_CHATS=postgresql first, or to roll "
                "chats back to the files, DATA_STORAGE_USERS and DATA_STORAGE_MEMORY to "
                "dual with them")
    return None


def _messages_and_chats(p: Mapping[str, str], primary: str) -> str | None:
    if RANK[p["messages"]] > RANK[p["chats"]]:
        # A message row needs its chat row, kept from the store that is its truth.
        return (f"{_is(p, 'messages')} with {_is(p, 'chats')}: messages in PostgreSQL "
                "need their chat sessions there; set DATA_STORAGE_CHATS to "
                f"{p['messages']} (or further), or DATA_STORAGE_MESSAGES back")
    reads_pg = p["chats"] == "postgresql" or (p["chats"] == "dual" and primary == "postgresql")
    if reads_pg and p["messages"] == "file":
        # A chat session's message count and last message time come from its messages.
        return (f"{_is(p, 'chats')} with {_is(p, 'messages')}: chat sessions read from "
                "PostgreSQL count their messages there; set DATA_STORAGE_MESSAGES=dual"
                + (" or MIGRATION_PRIMARY_STORE=file" if p["chats"] == "dual" else ""))
    return None


RULES: tuple[Callable[[Mapping[str, str], str], str | None], ...] = (
    _users_and_memory, _chats_and_users, _messages_and_chats)


def check_phases(phases: Mapping[str, str], primary: str) -> None:
    """Refuse a combination that cannot stay consistent.

    :raises ConfigError: an unknown entity or phase, or an inconsistent combination
        (one line: the settings at fault, why, and the fix).
    """
    for entity, phase in phases.items():
        if entity not in ENTITIES or phase not in PHASES:
            raise ConfigError(f"invalid setting {setting(entity)}: {phase!r}; use one of "
                              f"{', '.join(PHASES)}")
    if set(phases) != set(ENTITIES):
        raise ConfigError(f"a phase for each of {', '.join(ENTITIES)} is needed")
    for rule in RULES:
        problem = rule(phases, primary)
        if problem is not None:
            raise ConfigError(f"invalid storage per entity: {problem}")

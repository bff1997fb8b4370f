"""Which phases per entity (DATA_STORAGE_USERS ...) can stay consistent: every class of
refused combination, the accepted ones, and the whole space against the rules."""

from __future__ import annotations

import itertools

import pytest

from donnadb.dal.phases import ENTITIES, PHASES, RANK, check_phases
from donnadb.errors import ConfigError


def phases(users="file", memory="file", chats="file", messages="file", logs="file"):
    return {"users": users, "memory": memory, "chats": chats, "messages": messages,
            "logs": logs}


# (phases, primary, what the one-line error must say)
REFUSED = [
    # Memory and users share the memory file: to PostgreSQL together.
    (phases(memory="postgresql"), "file",
     r"DATA_STORAGE_USERS=file with DATA_STORAGE_MEMORY=postgresql: .*share one memory file"),
    (phases(users="dual", memory="postgresql", chats="dual"), "postgresql",
     r"DATA_STORAGE_USERS=dual with DATA_STORAGE_MEMORY=postgresql.*set both to postgresql"),
    (phases(users="postgresql", memory="dual", chats="postgresql", messages="dual"), "file",
     r"DATA_STORAGE_USERS=postgresql with DATA_STORAGE_MEMORY=dual"),
    # Chat sessions only in PostgreSQL need their users' rows kept there.
    (phases(chats="postgresql", messages="dual"), "file",
     r"DATA_STORAGE_CHATS=postgresql with DATA_STORAGE_USERS=file: .*set DATA_STORAGE_USERS"
     r" to dual"),
    # A chat file needs its user's memory file.
    (phases("postgresql", "postgresql", "dual", "dual"), "file",
     r"DATA_STORAGE_USERS=postgresql with DATA_STORAGE_CHATS=dual: .*"
     r"DATA_STORAGE_CHATS=postgresql first, or to roll chats back to the files, "
     r"DATA_STORAGE_USERS and DATA_STORAGE_MEMORY to dual with them$"),
    (phases("postgresql", "postgresql"), "file",
     r"DATA_STORAGE_USERS=postgresql with DATA_STORAGE_CHATS=file"),
    # Messages further along than their chat sessions.
    (phases(messages="dual"), "file",
     r"DATA_STORAGE_MESSAGES=dual with DATA_STORAGE_CHATS=file: .*set DATA_STORAGE_CHATS to "
     r"dual"),
    (phases(messages="postgresql"), "file",
     r"DATA_STORAGE_MESSAGES=postgresql with DATA_STORAGE_CHATS=file"),
    (phases(users="dual", chats="dual", messages="postgresql"), "file",
     r"DATA_STORAGE_MESSAGES=postgresql with DATA_STORAGE_CHATS=dual"),
    # Sessions read from PostgreSQL count messages PostgreSQL does not have.
    (phases(users="dual", memory="dual", chats="postgresql"), "file",
     r"DATA_STORAGE_CHATS=postgresql with DATA_STORAGE_MESSAGES=file: .*"
     r"DATA_STORAGE_MESSAGES=dual$"),
    (phases(chats="dual"), "postgresql",
     r"DATA_STORAGE_CHATS=dual with DATA_STORAGE_MESSAGES=file: .*"
     r"or MIGRATION_PRIMARY_STORE=file$"),
]

ACCEPTED = [
    (phases(memory="dual"), "file"),                       # the plan's pilot
    (phases(memory="dual"), "postgresql"),                 # ... reading memory from PostgreSQL
    (phases(users="dual"), "postgresql"),                  # users copied, memory in files
    (phases(memory="dual", chats="dual"), "file"),         # a chat copies its user over
    (phases(memory="dual", chats="dual", messages="dual"), "postgresql"),
    (phases("dual", "dual", "postgresql", "dual"), "file"),
    (phases("dual", "dual", "postgresql", "postgresql", "postgresql"), "file"),
    (phases("postgresql", "postgresql", "postgresql", "dual"), "file"),
    (phases("postgresql", "postgresql", "postgresql", "postgresql", "file"), "file"),
    (phases(logs="postgresql"), "file"),                   # logs reference nothing
    (phases(logs="dual"), "postgresql"),
]


@pytest.mark.parametrize(("chosen", "primary", "message"), REFUSED)
def test_refused(chosen, primary, message):
    with pytest.raises(ConfigError, match=message) as exc:
        check_phases(chosen, primary)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("chosen", "primary"), ACCEPTED)
def test_accepted(chosen, primary):
    check_phases(chosen, primary)


def consistent(p: dict[str, str], primary: str) -> bool:
    """The rules, stated from the data: PostgreSQL rows keep their parents, and what one
    legacy file holds is not split between a store alone and another."""
    users_pg, memory_pg = p["users"] == "postgresql", p["memory"] == "postgresql"
    chats_read_pg = p["chats"] == "postgresql" or (p["chats"] == "dual"
                                                   and primary == "postgresql")
    return (users_pg == memory_pg
            and not (p["chats"] == "postgresql" and p["users"] == "file")
            and not (users_pg and p["chats"] != "postgresql")
            and RANK[p["messages"]] <= RANK[p["chats"]]
            and not (chats_read_pg and p["messages"] == "file"))


def test_every_combination_follows_the_rules():
    accepted = 0
    for combo in itertools.product(PHASES, repeat=len(ENTITIES)):
        for primary in ("file", "postgresql"):
            chosen = dict(zip(ENTITIES, combo, strict=True))
            if consistent(chosen, primary):
                check_phases(chosen, primary)
                accepted += 1
            else:
                with pytest.raises(ConfigError):
                    check_phases(chosen, primary)
    # Every uniform configuration (today's stores) is among the accepted ones.
    assert accepted > 6
    for phase in PHASES:
        check_phases(dict.fromkeys(ENTITIES, phase), "postgresql")


def test_unknown_entity_or_phase():
    with pytest.raises(ConfigError, match="DATA_STORAGE_MEMORY: 'mysql'"):
        check_phases(phases(memory="mysql"), "file")
    with pytest.raises(ConfigError, match="DATA_STORAGE_FILES"):
        check_phases({**phases(), "files": "file"}, "file")

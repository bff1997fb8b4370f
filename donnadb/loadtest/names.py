"""The names the scenarios report their queries under (importable without Locust)."""

#: Every name ChatUser reports; the gate and the CI test require each in the stats.
QUERY_NAMES = (
    "history.read_last_20",
    "message.add_user",
    "message.add_assistant",
    "sessions.list_recent",
    "memory.get",
    "memory.set",
    "session.create",
    "search.fulltext",
    "logs.write",
)

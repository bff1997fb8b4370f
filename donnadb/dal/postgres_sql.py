"""SQL of PostgresDataAccess, in named constants (all parameterised)."""

USER_COLUMNS = """id::text AS id, clerk_id, email, name, profile, preferences,
    created_at, updated_at, last_active_at, status"""

INSERT_USER = """
INSERT INTO users (clerk_id, email, name, profile, preferences, status, last_active_at)
VALUES (%(clerk_id)s, %(email)s, %(name)s, %(profile)s, %(preferences)s,
        COALESCE(%(status)s, 'active'), %(last_active_at)s)
RETURNING id::text AS id
"""

SELECT_USER_BY_ID = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s"
SELECT_USER_BY_CLERK_ID = f"SELECT {USER_COLUMNS} FROM users WHERE clerk_id = %s"

# A replicated user (dual-write, reconcile): the file is the truth for every field.
UPSERT_USER = """
INSERT INTO users (clerk_id, email, name, profile, preferences, status,
                   created_at, updated_at, last_active_at)
VALUES (%(clerk_id)s, %(email)s, %(name)s, %(profile)s, %(preferences)s,
        COALESCE(%(status)s, 'active'), COALESCE(%(created_at)s, now()),
        COALESCE(%(updated_at)s, now()), %(last_active_at)s)
ON CONFLICT (clerk_id) DO UPDATE
   SET email = EXCLUDED.email, name = EXCLUDED.name, profile = EXCLUDED.profile,
       preferences = EXCLUDED.preferences, status = EXCLUDED.status,
       updated_at = EXCLUDED.updated_at, last_active_at = EXCLUDED.last_active_at
RETURNING id::text AS id
"""

# A user known only by its clerk id (a chat names it, no memory file exists).
INSERT_BARE_USER = """
INSERT INTO users (clerk_id) VALUES (%s) ON CONFLICT (clerk_id) DO NOTHING
RETURNING id::text AS id
"""

# users.profile/preferences and the user_memory rows of those types hold the same
# keys (the legacy memory file has one object for both); these keep them in step.
UPSERT_SECTION_ROWS = """
INSERT INTO user_memory (user_id, memory_type, key, value)
SELECT %(user_id)s, %(memory_type)s, e.key, e.value FROM jsonb_each(%(section)s) AS e
ON CONFLICT (user_id, memory_type, key) DO UPDATE
   SET value = EXCLUDED.value
 WHERE user_memory.value IS DISTINCT FROM EXCLUDED.value
"""

DELETE_SECTION_ROWS_NOT_IN = """
DELETE FROM user_memory
 WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s
   AND NOT (%(section)s::jsonb ? key)
"""

UPSERT_MEMORY = """
INSERT INTO user_memory (user_id, memory_type, key, value, expires_at)
VALUES (%(user_id)s, %(memory_type)s, %(key)s, %(value)s, %(expires_at)s)
ON CONFLICT (user_id, memory_type, key) DO UPDATE
   SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at
 WHERE (user_memory.value, user_memory.expires_at)
       IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.expires_at)
"""

# {column} is users.profile or users.preferences (psycopg.sql.Identifier).
MERGE_SECTION_KEY = """
UPDATE users SET {column} = {column} || jsonb_build_object(%(key)s::text, %(value)s::jsonb)
 WHERE id = %(user_id)s
"""
REMOVE_SECTION_KEYS = """
UPDATE users SET {column} = {column} - %(keys)s::text[] WHERE id = %(user_id)s
"""

# expires_in (seconds, by the server's clock): how long the cache may keep the answer.
SELECT_MEMORY = """
SELECT key, value, extract(epoch FROM expires_at - now())::float8 AS expires_in
  FROM user_memory
 WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s
   AND (expires_at IS NULL OR expires_at > now())
 ORDER BY key
"""
SELECT_MEMORY_KEY = """
SELECT key, value, extract(epoch FROM expires_at - now())::float8 AS expires_in
  FROM user_memory
 WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s AND key = %(key)s
   AND (expires_at IS NULL OR expires_at > now())
"""
SELECT_ALL_MEMORY = """
SELECT memory_type, key, value, expires_at FROM user_memory
 WHERE user_id = %(user_id)s ORDER BY memory_type, key
"""
DELETE_MEMORY = """
DELETE FROM user_memory WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s
RETURNING key
"""
DELETE_MEMORY_KEY = """
DELETE FROM user_memory
 WHERE user_id = %(user_id)s AND memory_type = %(memory_type)s AND key = %(key)s
RETURNING key
"""
DELETE_MEMORY_NOT_LISTED = """
DELETE FROM user_memory AS m
 WHERE m.user_id = %(user_id)s
   AND NOT EXISTS (SELECT 1 FROM unnest(%(types)s::text[], %(keys)s::text[]) AS k(t, k)
                    WHERE k.t = m.memory_type AND k.k = m.key)
"""

# ---- field encryption (CRYPTO_ENABLED; donnadb/dal/sealed.py) ----------------------
# Sealed, a row carries its sealed columns; the user's data key comes from the keys the
# process holds. The KEYED reads, for a user it has not met yet, also read the wrapped
# key, kept in the users row (hex in the memory reads: the cache keeps text, not
# bytes). A user read by clerk id always reads it: the process cannot know before the
# read whether it holds that user's key, and the key's 77 bytes cost less than a second
# query. All of a user's memory costs one more query then (SELECT_USER_KEY). A user's
# id is chosen by the DAL before the insert, as every sealed value is bound to it.
SEALED_USER_COLUMNS = f"{USER_COLUMNS}, email_sealed, name_sealed"
SEALED_USER_SELECT = f"SELECT {SEALED_USER_COLUMNS} FROM users"
KEYED_USER_SELECT = f"SELECT {SEALED_USER_COLUMNS}, kek_id, wrapped_key FROM users"
SELECT_SEALED_USER_BY_ID = SEALED_USER_SELECT + " WHERE id = %s"
SELECT_KEYED_USER_BY_ID = KEYED_USER_SELECT + " WHERE id = %s"
SELECT_KEYED_USER_BY_CLERK_ID = KEYED_USER_SELECT + " WHERE clerk_id = %s"
SELECT_USER_KEY = "SELECT kek_id, wrapped_key FROM users WHERE id = %s"

# The new user, its data key in its row (0014).
INSERT_SEALED_USER = """
INSERT INTO users (id, clerk_id, email_sealed, name_sealed, email_hmac, profile,
                   preferences, status, last_active_at, kek_id, wrapped_key, key_created_at)
VALUES (%(id)s, %(clerk_id)s, %(email_sealed)s, %(name_sealed)s, %(email_hmac)s,
        %(profile)s, %(preferences)s, COALESCE(%(status)s, 'active'), %(last_active_at)s,
        %(kek_id)s, %(wrapped_key)s, now())
RETURNING id::text AS id
"""
# The same through PgBouncer: a function, planned once per server connection (0013).
CALL_CREATE_SEALED_USER = """
SELECT create_sealed_user(%(id)s, %(clerk_id)s, %(email_sealed)s, %(name_sealed)s,
                          %(email_hmac)s, %(profile)s, %(preferences)s, %(status)s,
                          %(last_active_at)s, %(kek_id)s, %(wrapped_key)s) AS id
"""

# A replicated user (upsert_user): its row claimed by clerk id (made bare, or locked),
# then every field written sealed under the id it has.
CLAIM_USER = """
INSERT INTO users (id, clerk_id, created_at)
VALUES (%(id)s, %(clerk_id)s, COALESCE(%(created_at)s, now()))
ON CONFLICT (clerk_id) DO UPDATE SET clerk_id = EXCLUDED.clerk_id
RETURNING id::text AS id
"""
UPDATE_SEALED_USER = """
UPDATE users
   SET email = NULL, name = NULL, email_sealed = %(email_sealed)s,
       name_sealed = %(name_sealed)s, email_hmac = %(email_hmac)s, profile = %(profile)s,
       preferences = %(preferences)s, status = COALESCE(%(status)s, 'active'),
       updated_at = COALESCE(%(updated_at)s, now()), last_active_at = %(last_active_at)s
 WHERE id = %(id)s
"""

# A sealed write with a data key this process has cached is ONE statement again, true
# only while the user's stored key is still the one it was unwrapped from: not after
# `keys rotate` re-wrapped it (the DAL then reads it afresh), nor after the user was
# erased, perhaps made again under the same id with a new key (a value sealed under the
# old key could never be read). The users row is locked first (the UPDATE of update_user
# does it; the memory upsert with FOR KEY SHARE, as its foreign key's check would): an
# erasure in flight is waited for, and the row it deleted is then skipped, so nothing is
# written, though the foreign key's check, on a fresh snapshot, would find the row of an
# id made again. An erasure starting later waits for this statement (it locks the users
# row first too: no deadlock).
KEY_IS_CURRENT = "wrapped_key = %(wrapped)s"
# keyed: whether the key was current (no row is written otherwise).
UPSERT_SEALED_MEMORY = f"""
WITH keyed AS (
    SELECT id FROM users WHERE id = %(user_id)s AND {KEY_IS_CURRENT} FOR KEY SHARE
), written AS (
    INSERT INTO user_memory (user_id, memory_type, key, value, expires_at)
    SELECT keyed.id, %(memory_type)s, %(key)s, %(value)s, %(expires_at)s::timestamptz
      FROM keyed
    ON CONFLICT (user_id, memory_type, key) DO UPDATE
       SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at
)
SELECT EXISTS (SELECT 1 FROM keyed) AS keyed
"""

# The same through PgBouncer: a function, planned once per server connection (0012).
CALL_SET_SEALED_MEMORY = """
SELECT set_sealed_memory(%(user_id)s, %(memory_type)s, %(key)s, %(value)s,
                         %(expires_at)s, %(wrapped)s) AS keyed
"""

KEYED_MEMORY_COLUMNS = """u.kek_id, encode(u.wrapped_key, 'hex') AS wrapped_key
  FROM user_memory AS m JOIN users AS u ON u.id = m.user_id"""
SELECT_KEYED_MEMORY = f"""
SELECT m.key, m.value, extract(epoch FROM m.expires_at - now())::float8 AS expires_in,
       {KEYED_MEMORY_COLUMNS}
 WHERE m.user_id = %(user_id)s AND m.memory_type = %(memory_type)s
   AND (m.expires_at IS NULL OR m.expires_at > now())
 ORDER BY m.key
"""
SELECT_KEYED_MEMORY_KEY = f"""
SELECT m.key, m.value, extract(epoch FROM m.expires_at - now())::float8 AS expires_in,
       {KEYED_MEMORY_COLUMNS}
 WHERE m.user_id = %(user_id)s AND m.memory_type = %(memory_type)s AND m.key = %(key)s
   AND (m.expires_at IS NULL OR m.expires_at > now())
"""

SESSION_COLUMNS = """s.id::text AS id, s.chat_id, s.user_id::text AS user_id, s.title,
    s.profile, s.metadata, s.created_at, s.updated_at, s.last_message_at, s.message_count,
    s.status"""

INSERT_SESSION = """
INSERT INTO chat_sessions (chat_id, user_id, title, profile, metadata)
VALUES (%(chat_id)s, %(user_id)s, %(title)s, COALESCE(%(profile)s, 'general'), %(metadata)s)
RETURNING id::text AS id
"""

# A copy keeps the chat's origin, where the legacy import found it (chat_history/ or
# conversations/<user>/, with a transcript's preamble): the chat file holds it outside
# its metadata (a rollback export's "_donnadb_origin"), so a copy's metadata lacks it,
# and the import of that file, which `verify` compares with, gives it back.
UPSERT_SESSION = """
INSERT INTO chat_sessions (chat_id, user_id, title, profile, metadata, status,
                           created_at, updated_at)
VALUES (%(chat_id)s, %(user_id)s, %(title)s, COALESCE(%(profile)s, 'general'), %(metadata)s,
        COALESCE(%(status)s, 'active'), COALESCE(%(created_at)s, now()),
        COALESCE(%(updated_at)s, now()))
ON CONFLICT (chat_id) DO UPDATE
   SET user_id = EXCLUDED.user_id, title = EXCLUDED.title, profile = EXCLUDED.profile,
       metadata = CASE
         WHEN chat_sessions.metadata -> '_donnadb_legacy' ?| ARRAY['source', 'preamble']
         THEN EXCLUDED.metadata || jsonb_build_object('_donnadb_legacy', jsonb_strip_nulls(
                jsonb_build_object(
                  'source', chat_sessions.metadata #> '{_donnadb_legacy,source}',
                  'preamble', chat_sessions.metadata #> '{_donnadb_legacy,preamble}')))
         ELSE EXCLUDED.metadata END,
       status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
RETURNING id::text AS id
"""

SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM chat_sessions AS s WHERE s.chat_id = %s"
# The same through PgBouncer: chat_session() (migration 0007) keeps its plan per server
# connection, where PgBouncer's transaction pooling would have the statement planned on
# every call.
CALL_SESSION = "SELECT * FROM chat_session(%s)"

# add_message() (migration 0004) serialises writers of one chat: it locks the chat's row,
# then inserts at max + 1 in a second statement, which under READ COMMITTED takes a fresh
# snapshot after the lock is granted and so sees the message the previous lock holder
# committed (one statement would not). One round trip; NULL when there is no such chat.
# message_count and last_message_at are kept by the messages triggers, not here.
ADD_MESSAGE = """
SELECT add_message(%(chat_id)s, %(role)s, %(content)s, %(metadata)s, %(token_count)s,
                   %(abuse_flagged)s)::text AS id
"""

# The same, also naming the chat's owner (read-your-writes of their chat list, search).
ADD_MESSAGE_OWNER = """
SELECT add_message(%(chat_id)s, %(role)s, %(content)s, %(metadata)s, %(token_count)s,
                   %(abuse_flagged)s)::text AS id,
       (SELECT user_id::text FROM chat_sessions WHERE chat_id = %(chat_id)s) AS user_id
"""

# A replicated message keeps its id and position; replaying it is a no-op.
INSERT_MESSAGE_REPLICA = """
INSERT INTO messages (id, chat_session_id, role, content, metadata, created_at,
                      sequence_number, token_count, abuse_flagged)
SELECT %(id)s, s.id, %(role)s, %(content)s, %(metadata)s, COALESCE(%(created_at)s, now()),
       %(sequence_number)s, %(token_count)s, %(abuse_flagged)s
  FROM chat_sessions AS s WHERE s.chat_id = %(chat_id)s
ON CONFLICT DO NOTHING
RETURNING id::text AS id
"""
SELECT_MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = %s"

# A page of a chat, newest message first (get_chat_history reverses it): one table, walked
# backwards along idx_messages_sequence, no sort. Through PgBouncer every call is planned
# afresh, and the join-and-resort form this replaced planned much slower (pgbench
# -M extended, one client: 2.4k vs 4.0k tps). The chat id equals the parameter.
SELECT_HISTORY = """
SELECT m.id::text AS id, %(chat_id)s::varchar AS chat_id, m.role, m.content, m.metadata,
       m.created_at, m.sequence_number, m.token_count, m.abuse_flagged
  FROM messages AS m
 WHERE m.chat_session_id = (SELECT id FROM chat_sessions WHERE chat_id = %(chat_id)s)
 ORDER BY m.sequence_number DESC
 LIMIT %(limit)s OFFSET %(offset)s
"""

# The same through PgBouncer, planned once per server connection (migration 0007).
CALL_HISTORY = "SELECT * FROM chat_history(%(chat_id)s, %(limit)s, %(offset)s)"

SELECT_MESSAGE_COUNT = "SELECT message_count FROM chat_sessions WHERE chat_id = %s"

# The order list_chat_sessions promises (protocol.py); the first key walks
# idx_chat_sessions_user_recent, the other two only break ties (incremental sort).
RECENT_ORDER = "last_message_at DESC NULLS FIRST, created_at DESC, chat_id"

SELECT_USER_SESSIONS = f"""
SELECT {SESSION_COLUMNS} FROM chat_sessions AS s
 WHERE s.user_id = %(user_id)s
 ORDER BY {RECENT_ORDER}
 LIMIT %(limit)s
"""

# The user's chats a search looks in: the most recently active with messages first.
# LIMIT NULL (chats=None) means every chat.
RECENT_CHATS = f"""SELECT id, chat_id FROM chat_sessions
                 WHERE user_id = %(user_id)s AND message_count > 0
                 ORDER BY {RECENT_ORDER}
                 LIMIT %(chats)s"""
#: A hit's rank (ts_rank_cd needs the hit's tsvector: computed for the hits only).
SEARCH_RANK = ("ts_rank_cd(to_tsvector('english', m.content), "
               "plainto_tsquery('english', %(query)s)) AS rank")
SEARCH_ORDER = "rank DESC, created_at DESC, chat_id, sequence_number DESC"


def ranked_page(hits: str) -> str:
    """The page of ``hits`` (a query returning a message's columns and ``rank``, ordered
    by :data:`SEARCH_ORDER` and limited) with each hit's snippet: ts_headline parses the
    whole text again, so it runs on the page returned only."""
    return f"""
SELECT h.id, h.chat_id, h.role, h.content, h.metadata, h.created_at, h.sequence_number,
       h.token_count, h.abuse_flagged,
       ts_headline('english', h.content, plainto_tsquery('english', %(query)s),
                   %(headline)s) AS snippet
  FROM ({hits}) AS h
 ORDER BY {SEARCH_ORDER}
"""


# plainto_tsquery: every word of the query, english stemming, stop words ignored. The
# expression is idx_messages_chat_fts's, a GIN index on (chat_session_id, expression):
# the planner scans it once per chat with both conditions, never running to_tsvector
# on the chats' messages that do not match.
SEARCH_MESSAGES = ranked_page(f"""
SELECT m.id::text AS id, s.chat_id, m.role, m.content, m.metadata, m.created_at,
       m.sequence_number, m.token_count, m.abuse_flagged, {SEARCH_RANK}
  FROM ({RECENT_CHATS}) AS s
  JOIN messages AS m ON m.chat_session_id = s.id
 WHERE to_tsvector('english', m.content) @@ plainto_tsquery('english', %(query)s)
 ORDER BY {SEARCH_ORDER}
 LIMIT %(limit)s""")

INSERT_LOG = """
INSERT INTO system_logs (id, level, message, context, trace_id, ip_address, user_agent,
                         request_uri, created_at)
VALUES (COALESCE(%(id)s, gen_random_uuid()), %(level)s, %(message)s, %(context)s,
        %(trace_id)s, %(ip)s, %(user_agent)s, %(uri)s, COALESCE(%(ts)s, now()))
ON CONFLICT (id, created_at) DO NOTHING
RETURNING id::text AS id
"""

HEALTH = """
SELECT current_database() AS database, current_user AS "user",
       current_setting('server_version') AS server_version,
       pg_is_in_recovery() AS in_recovery
"""

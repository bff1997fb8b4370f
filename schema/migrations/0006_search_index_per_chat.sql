-- donnadb: no-transaction
-- 0006: the full-text search index per chat.
--
-- The search (SEARCH_MESSAGES in donnadb/dal/postgres_sql.py) looks for words in the
-- user's most recent chats. With the plan's expression index on to_tsvector(content)
-- alone, the planner reads every message of those chats and runs to_tsvector on each
-- (the largest server cost of the load mix); one GIN index on (chat_session_id,
-- to_tsvector(...)) (btree_gin, created by the bootstrap) answers both conditions in
-- one index scan per chat: about a tenth of the server time per search, for an index of
-- about the same size (bench/search.py, docs/benchmarks.md). It replaces the plan's
-- index, which the search no longer needs.
--
-- Built CONCURRENTLY, so writes go on during the build: outside a transaction, statement
-- by statement (see donnadb/migrate/runner.py). A rerun after a failure or a kill starts
-- over: an interrupted concurrent build leaves an INVALID index, dropped first.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
DROP INDEX CONCURRENTLY IF EXISTS idx_messages_chat_fts;
CREATE INDEX CONCURRENTLY idx_messages_chat_fts
    ON messages USING gin (chat_session_id, to_tsvector('english', content));
DROP INDEX CONCURRENTLY IF EXISTS idx_messages_content_fts;

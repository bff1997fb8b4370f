-- 0008: the search index takes each new message at once (GIN fastupdate off).
--
-- With fastupdate on (PostgreSQL's default) a GIN index queues new entries in a pending
-- list, up to gin_pending_list_limit (4 MB), and every search reads the whole list, as it
-- cannot search it: under the load test's writes the list is never empty and a search
-- cost several times its time on the merged index, and the insert that found the list
-- full paid for merging it all. Off, each insert adds its message's entries to the index
-- itself: a little more per message, the same every time (docs/benchmarks.md, "Capacity").
--
-- ALTER INDEX ... SET (fastupdate) holds the index's lock only for the catalog change
-- (the runner's lock_timeout bounds the wait); the entries already pending are merged
-- into the index right after.
ALTER INDEX idx_messages_chat_fts SET (fastupdate = off);
SELECT gin_clean_pending_list('idx_messages_chat_fts'::regclass);

-- donnadb: no-transaction
-- 0010: the index of the e-mail look-up by keyed hash (users.email_hmac, 0009).
--
-- Built CONCURRENTLY, so writes go on during the build: outside a transaction, statement
-- by statement (see donnadb/migrate/runner.py). A rerun after a failure or a kill starts
-- over: an interrupted concurrent build leaves an INVALID index, dropped first.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
DROP INDEX CONCURRENTLY IF EXISTS idx_users_email_hmac;
CREATE INDEX CONCURRENTLY idx_users_email_hmac ON users(email_hmac);

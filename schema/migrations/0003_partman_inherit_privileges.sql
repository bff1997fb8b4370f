-- 0003: partitions pg_partman creates later get the parent's owner and grants.
--
-- Native partitions do not inherit privileges, and the default privileges of
-- database.sql.j2 only cover objects created BY donna_owner. If maintenance ran as the
-- migrator (e.g. pg_partman_bgw, which needs a LOGIN role on PostgreSQL 15), next month's
-- partition would be owned by donna_migrator and donna_app could not insert into it.
-- inherit_privileges makes partman copy the parent's owner and grants to every child.
UPDATE partman.part_config
   SET inherit_privileges = true
 WHERE parent_table = 'public.system_logs';

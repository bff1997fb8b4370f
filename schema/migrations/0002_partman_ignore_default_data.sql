-- 0002: pg_partman maintenance must not be steered by rows in system_logs_default.
--
-- Without this, one log row with a far-future created_at (a client's clock, a bad
-- import) lands in the default partition, and partman.run_maintenance() then tries to
-- premake partitions up to that date and fails to ATTACH the one the row belongs to
-- (found by tests/schema/test_partitions.py). Maintenance keeps premaking from now()
-- (infinite_time_partitions, 0001); rows in the default partition are moved by an
-- operator with partman.partition_data_time() (docs/schema.md).
UPDATE partman.part_config
   SET ignore_default_data = true
 WHERE parent_table = 'public.system_logs';

-- 0005: system_logs is append-only for everyone but its owner.
--
-- Erasure records live in system_logs, so the application role may insert log rows but
-- must not change or delete any. The default privileges of database.sql.j2 gave it
-- UPDATE and DELETE on every table, partitions included (a partition can be written
-- directly, by its own name): revoke them from every role but the owner, on the parent
-- and on every partition that exists, the default one included. pg_partman copies the
-- parent's grants to the partitions it makes later and revokes what the parent lacks
-- (inherit_privileges, 0003). The bootstrap (database.sql.j2) revokes the same after
-- its own grants, so a re-run deploy or a restore does not give them back.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT t.relid::regclass AS rel, a.grantee
          FROM pg_catalog.pg_partition_tree('public.system_logs'::regclass) AS t
          JOIN pg_catalog.pg_class AS c ON c.oid = t.relid,
               pg_catalog.aclexplode(c.relacl) AS a
         WHERE a.grantee <> c.relowner
           AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    LOOP
        IF r.grantee = 0 THEN
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM PUBLIC', r.rel);
        ELSE
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM %I', r.rel,
                           pg_catalog.pg_get_userbyid(r.grantee));
        END IF;
    END LOOP;
END;
$$;

-- `users forget` still erases the logs that name the user, in its own transaction, through
-- this function: it runs as the owner, deletes only rows naming a user that exists (the
-- caller locks it and deletes it next), and never an erasure record (they carry the
-- reserved key _donnadb_erasure, which the DAL refuses from callers). search_path is
-- pinned and every name qualified, so nothing planted in a schema can run as the owner.
CREATE FUNCTION public.forget_user_logs(p_user_id uuid)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deleted bigint;
BEGIN
    PERFORM 1 FROM public.users WHERE id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user %', p_user_id USING ERRCODE = 'no_data_found';
    END IF;
    DELETE FROM public.system_logs
     WHERE context OPERATOR(pg_catalog.->>) 'user_id' = p_user_id::text
       AND NOT context OPERATOR(pg_catalog.?) '_donnadb_erasure';
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$$;

-- Only the roles that write the audit trail (INSERT on system_logs: the application
-- role) may call it; the role names are the bootstrap's, which grants the same.
REVOKE ALL ON FUNCTION public.forget_user_logs(uuid) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid = 'public.system_logs'::regclass
           AND a.grantee <> c.relowner AND a.grantee <> 0
           AND a.privilege_type = 'INSERT'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.forget_user_logs(uuid) TO %I',
                       pg_catalog.pg_get_userbyid(r.grantee));
    END LOOP;
END;
$$;

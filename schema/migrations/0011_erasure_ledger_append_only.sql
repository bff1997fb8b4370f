-- 0011: the erasure ledger (erasures, 0009) is append-only for everyone but its owner.
--
-- `users forget` records each erasure there so that a restored backup can have it
-- applied again (`donnactl keys reapply-erasures`); a role that could delete a record
-- could make a restore bring a forgotten user back. The default privileges of
-- database.sql.j2 gave the application role UPDATE and DELETE on every table: revoke
-- them (and TRUNCATE) from every role but the owner, as 0005 does for the audit trail.
-- The bootstrap revokes the same after its own grants, so a re-run deploy or a restore
-- does not give them back.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_class AS c,
               pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid = 'public.erasures'::regclass
           AND a.grantee <> c.relowner
           AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    LOOP
        IF r.grantee = 0 THEN
            REVOKE UPDATE, DELETE, TRUNCATE ON public.erasures FROM PUBLIC;
        ELSE
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON public.erasures FROM %I',
                           pg_catalog.pg_get_userbyid(r.grantee));
        END IF;
    END LOOP;
END;
$$;

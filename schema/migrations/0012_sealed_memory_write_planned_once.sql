-- 0012: the sealed memory write (CRYPTO_ENABLED) as a PL/pgSQL function, planned once
-- per server connection.
--
-- Through PgBouncer in transaction mode every statement is planned on each call (0007).
-- The DAL's guarded upsert of a sealed user_memory value (a CTE that locks the user's
-- row and checks its stored data key, then upserts) took about three times as long to
-- plan as the plain upsert; a function keeps its statements' plans for the life of the
-- server connection. The DAL calls it through PgBouncer only: direct connections
-- prepare the CTE (postgres_sql.UPSERT_SEALED_MEMORY) themselves.
--
-- Same guard as the CTE: the users row is locked FOR KEY SHARE only while the stored
-- wrapped key is the one the caller sealed with, so an erasure in flight is waited for
-- and the row it deleted then skipped (nothing written; the caller reads the key
-- afresh). Holding the lock, no erasure can delete the user before the upsert.
-- SECURITY INVOKER (the default): it runs with the caller's privileges, as add_message().

-- True when the value was written, false when the user or that wrapped key is gone.
CREATE FUNCTION set_sealed_memory(p_user_id uuid, p_memory_type text, p_key text,
                                  p_value jsonb, p_expires_at timestamptz,
                                  p_wrapped bytea)
    RETURNS boolean
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM 1
       FROM users AS u
      WHERE u.id = p_user_id
        AND EXISTS (SELECT 1 FROM user_keys AS k
                     WHERE k.user_id = p_user_id AND k.wrapped_key = p_wrapped)
        FOR KEY SHARE OF u;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO user_memory (user_id, memory_type, key, value, expires_at)
    VALUES (p_user_id, p_memory_type, p_key, p_value, p_expires_at)
    ON CONFLICT (user_id, memory_type, key) DO UPDATE
       SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at;
    RETURN true;
END;
$$;

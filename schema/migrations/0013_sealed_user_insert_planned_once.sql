-- 0013: the sealed user insert (CRYPTO_ENABLED) as a PL/pgSQL function, planned once per
-- server connection.
--
-- Through PgBouncer in transaction mode every statement is planned on each call (0007).
-- A new sealed user is two rows, the users row and its data key in user_keys, written
-- by one CTE (postgres_sql.INSERT_SEALED_USER) whose planning cost more than the plain
-- user insert's; a function keeps its statements' plans for the life of the server
-- connection, as set_sealed_memory (0012) does. The DAL calls it through PgBouncer only:
-- direct connections prepare the CTE themselves.
--
-- Both rows or neither: a taken clerk id raises unique_violation (23505) from the first
-- INSERT, as the CTE does. SECURITY INVOKER (the default): it runs with the caller's
-- privileges, as add_message().

-- The new user's id, as text.
CREATE FUNCTION create_sealed_user(p_id uuid, p_clerk_id text, p_email_sealed bytea,
                                   p_name_sealed bytea, p_email_hmac bytea,
                                   p_profile jsonb, p_preferences jsonb, p_status text,
                                   p_last_active_at timestamptz, p_kek_id text,
                                   p_wrapped_key bytea)
    RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO users (id, clerk_id, email_sealed, name_sealed, email_hmac, profile,
                       preferences, status, last_active_at)
    VALUES (p_id, p_clerk_id, p_email_sealed, p_name_sealed, p_email_hmac, p_profile,
            p_preferences, COALESCE(p_status, 'active'), p_last_active_at);
    INSERT INTO user_keys (user_id, kek_id, wrapped_key)
    VALUES (p_id, p_kek_id, p_wrapped_key);
    RETURN p_id::text;
END;
$$;

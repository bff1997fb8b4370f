-- 0004: add_message(), the DAL's "append a message" as one statement.
--
-- A new message takes the next position in its chat: lock the chat's row, then read the
-- highest position and insert. These must stay two statements: under READ COMMITTED the
-- insert's snapshot has to be taken after the lock is granted, so that it sees the message
-- the previous lock holder committed (a VOLATILE function takes a new snapshot for each
-- statement, as a client does). Inside a function it is one round trip instead of four
-- (BEGIN, lock, insert, COMMIT): through PgBouncer's transaction pooling a server
-- connection is then held only while the function runs, not while a busy client gets
-- round to its next statement (at 2,000 load-test users, up to 20 of 20 server
-- connections sat "idle in transaction" that way).
--
-- Returns the new message's id, or NULL when there is no such chat. SECURITY INVOKER
-- (the default): it runs with the caller's privileges on the two tables.
CREATE FUNCTION add_message(p_chat_id text, p_role text, p_content text, p_metadata jsonb,
                            p_token_count integer, p_abuse_flagged boolean)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    v_session uuid;
    v_message uuid;
BEGIN
    SELECT id INTO v_session FROM chat_sessions WHERE chat_id = p_chat_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO messages (chat_session_id, role, content, metadata, sequence_number,
                          token_count, abuse_flagged)
    VALUES (v_session, p_role, p_content, p_metadata,
            COALESCE((SELECT max(sequence_number) FROM messages
                       WHERE chat_session_id = v_session), 0) + 1,
            p_token_count, p_abuse_flagged)
    RETURNING id INTO v_message;
    RETURN v_message;
END;
$$;

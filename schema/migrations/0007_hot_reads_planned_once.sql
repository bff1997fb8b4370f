-- 0007: the hottest reads as PL/pgSQL functions, planned once per server connection.
--
-- Through PgBouncer in transaction mode (Debian 12's 1.18 keeps no prepared statements)
-- every statement a client sends is planned afresh: in the load test's mix the history
-- read spent about as long planning as executing, as do other one-row lookups such as
-- the chat session read.
-- A PL/pgSQL function keeps the plans of its statements for the life of the server
-- connection (custom plans for the first five calls, then the generic plan unless it is
-- dearer), and a call to it costs next to nothing to plan. The DAL calls them through
-- PgBouncer only: direct connections prepare the plain statements themselves.
--
-- SECURITY INVOKER (the default): they run with the caller's privileges, as add_message().
-- Every column is qualified: the RETURNS TABLE names are variables inside the body.

-- A page of a chat, newest message first, as the DAL's history read returns it.
CREATE FUNCTION chat_history(p_chat_id text, p_limit integer, p_offset integer)
    RETURNS TABLE (id text, chat_id varchar, role varchar, content text, metadata jsonb,
                   created_at timestamptz, sequence_number integer, token_count integer,
                   abuse_flagged boolean)
    LANGUAGE plpgsql
    STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT m.id::text, p_chat_id::varchar, m.role, m.content, m.metadata, m.created_at,
           m.sequence_number, m.token_count, m.abuse_flagged
      FROM messages AS m
     WHERE m.chat_session_id = (SELECT s.id FROM chat_sessions AS s
                                 WHERE s.chat_id = p_chat_id)
     ORDER BY m.sequence_number DESC
     LIMIT p_limit OFFSET p_offset;
END;
$$;

-- One chat session by its chat id (no row when there is none).
CREATE FUNCTION chat_session(p_chat_id text)
    RETURNS TABLE (id text, chat_id varchar, user_id text, title varchar, profile varchar,
                   metadata jsonb, created_at timestamptz, updated_at timestamptz,
                   last_message_at timestamptz, message_count integer, status varchar)
    LANGUAGE plpgsql
    STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT s.id::text, s.chat_id, s.user_id::text, s.title, s.profile, s.metadata,
           s.created_at, s.updated_at, s.last_message_at, s.message_count, s.status
      FROM chat_sessions AS s
     WHERE s.chat_id = p_chat_id;
END;
$$;

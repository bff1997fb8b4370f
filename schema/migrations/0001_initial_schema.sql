-- 0001: the plan's schema (docs/schema.md explains every choice beyond the plan).
--
-- Runs inside ONE transaction opened by donnadb.migrate, as donna_migrator after
-- `SET LOCAL ROLE donna_owner`, so every object below is owned by donna_owner and gets
-- the default grants of database.sql.j2 (app: DML, readonly/backup: SELECT).
-- Column names, types and defaults are exactly the plan's; additions are NOT NULL on
-- columns the plan gives a default, CHECKs, a UNIQUE sequence per chat, and triggers.

-- The plan fixes the column types (VARCHAR(n), INTEGER) and these tables are new and empty,
-- so CREATE INDEX without CONCURRENTLY locks nothing anyone is using.
-- squawk-ignore-file prefer-text-field, prefer-bigint-over-int, require-concurrent-index-creation

-- Generic trigger function: keep updated_at current on every UPDATE. A caller that sets
-- updated_at itself (the legacy import preserving the file's timestamp) is respected.
CREATE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

-- 1. users
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_id VARCHAR(255) UNIQUE,
    email VARCHAR(255),
    name VARCHAR(255),
    profile JSONB NOT NULL DEFAULT '{}',
    preferences JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    last_active_at TIMESTAMP WITH TIME ZONE,
    status VARCHAR(50) NOT NULL DEFAULT 'active'
);

CREATE INDEX idx_users_clerk_id ON users(clerk_id);
CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_status ON users(status);

CREATE TRIGGER users_set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- 2. chat_sessions
CREATE TABLE chat_sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_id VARCHAR(255) UNIQUE NOT NULL,
    user_id UUID REFERENCES users(id) ON DELETE SET NULL,
    title VARCHAR(255),
    profile VARCHAR(50) NOT NULL DEFAULT 'general',
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    last_message_at TIMESTAMP WITH TIME ZONE,
    -- Maintained by the messages triggers below; the DAL never writes it.
    message_count INTEGER NOT NULL DEFAULT 0
        CONSTRAINT chat_sessions_message_count_check CHECK (message_count >= 0),
    status VARCHAR(50) NOT NULL DEFAULT 'active'
);

CREATE INDEX idx_chat_sessions_chat_id ON chat_sessions(chat_id);
CREATE INDEX idx_chat_sessions_user_id ON chat_sessions(user_id);
CREATE INDEX idx_chat_sessions_profile ON chat_sessions(profile);
CREATE INDEX idx_chat_sessions_status ON chat_sessions(status);
CREATE INDEX idx_chat_sessions_last_message ON chat_sessions(last_message_at);
CREATE INDEX idx_chat_sessions_user_recent ON chat_sessions(user_id, last_message_at DESC);

CREATE TRIGGER chat_sessions_set_updated_at
    BEFORE UPDATE ON chat_sessions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- 3. messages
CREATE TABLE messages (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_session_id UUID NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    role VARCHAR(50) NOT NULL
        CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant', 'system')),
    content TEXT NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    sequence_number INTEGER NOT NULL
        CONSTRAINT messages_sequence_number_check CHECK (sequence_number >= 0),
    token_count INTEGER
        CONSTRAINT messages_token_count_check CHECK (token_count >= 0),
    abuse_flagged BOOLEAN NOT NULL DEFAULT FALSE,
    -- The plan's idx_messages_sequence, made UNIQUE: two writers can never give the same
    -- position in a chat (the loser gets unique_violation and retries).
    CONSTRAINT idx_messages_sequence UNIQUE (chat_session_id, sequence_number)
);

CREATE INDEX idx_messages_chat_session ON messages(chat_session_id);
CREATE INDEX idx_messages_role ON messages(role);
CREATE INDEX idx_messages_created_at ON messages(created_at);
CREATE INDEX idx_messages_abuse_flagged ON messages(abuse_flagged);
CREATE INDEX idx_messages_chat_recent ON messages(chat_session_id, created_at DESC);
CREATE INDEX idx_messages_content_fts ON messages USING gin(to_tsvector('english', content));

-- chat_sessions.message_count / last_message_at follow messages. Statement-level triggers
-- with transition tables: a batch INSERT of 1000 messages updates each session once.
-- Concurrent inserts into one chat serialise on the session row, so counts never drift.
CREATE FUNCTION messages_after_insert() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chat_sessions AS s
       SET message_count = s.message_count + d.n,
           last_message_at = GREATEST(s.last_message_at, d.newest)
      FROM (SELECT chat_session_id, count(*) AS n, max(created_at) AS newest
              FROM new_rows GROUP BY chat_session_id) AS d
     WHERE s.id = d.chat_session_id;
    RETURN NULL;
END;
$$;

-- After a DELETE the newest remaining message is looked up again (idx_messages_chat_recent):
-- the deleted one may have been the newest.
CREATE FUNCTION messages_after_delete() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chat_sessions AS s
       SET message_count = s.message_count - d.n,
           last_message_at = (SELECT max(m.created_at) FROM messages AS m
                               WHERE m.chat_session_id = s.id)
      FROM (SELECT chat_session_id, count(*) AS n
              FROM old_rows GROUP BY chat_session_id) AS d
     WHERE s.id = d.chat_session_id;
    RETURN NULL;
END;
$$;

-- An UPDATE that moves a message to another chat or changes its created_at recounts the
-- sessions involved; other updates (abuse_flagged, metadata) touch nothing.
CREATE FUNCTION messages_after_update() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chat_sessions AS s
       SET message_count = (SELECT count(*) FROM messages AS m WHERE m.chat_session_id = s.id),
           last_message_at = (SELECT max(m.created_at) FROM messages AS m
                               WHERE m.chat_session_id = s.id)
     WHERE s.id IN (SELECT o.chat_session_id FROM old_rows AS o JOIN new_rows AS n USING (id)
                     WHERE o.chat_session_id <> n.chat_session_id
                        OR o.created_at IS DISTINCT FROM n.created_at
                    UNION
                    SELECT n.chat_session_id FROM old_rows AS o JOIN new_rows AS n USING (id)
                     WHERE o.chat_session_id <> n.chat_session_id
                        OR o.created_at IS DISTINCT FROM n.created_at);
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_count_insert
    AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION messages_after_insert();

CREATE TRIGGER messages_count_delete
    AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION messages_after_delete();

CREATE TRIGGER messages_count_update
    AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION messages_after_update();

-- 4. user_memory
CREATE TABLE user_memory (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    memory_type VARCHAR(100) NOT NULL,
    key VARCHAR(255) NOT NULL,
    value JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE,
    UNIQUE(user_id, memory_type, key)
);

CREATE INDEX idx_user_memory_user_id ON user_memory(user_id);
CREATE INDEX idx_user_memory_type ON user_memory(memory_type);
CREATE INDEX idx_user_memory_expires ON user_memory(expires_at);
CREATE INDEX idx_user_memory_lookup ON user_memory(user_id, memory_type, key);

CREATE TRIGGER user_memory_set_updated_at
    BEFORE UPDATE ON user_memory
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- 5. system_logs: range-partitioned by month on created_at. A partitioned table's primary
-- key must contain the partition key, hence PRIMARY KEY (id, created_at); created_at is
-- NOT NULL for the same reason.
CREATE TABLE system_logs (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    level VARCHAR(20) NOT NULL,
    message TEXT NOT NULL,
    context JSONB NOT NULL DEFAULT '{}',
    trace_id VARCHAR(255),
    ip_address INET,
    user_agent TEXT,
    request_uri TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX idx_system_logs_level ON system_logs(level);
CREATE INDEX idx_system_logs_trace_id ON system_logs(trace_id);
CREATE INDEX idx_system_logs_created_at ON system_logs(created_at);

-- pg_partman 4.7 (schema partman): monthly native partitions, 4 months premade behind and
-- ahead of now, plus system_logs_default for rows outside every partition.
SELECT partman.create_parent(
    p_parent_table := 'public.system_logs',
    p_control := 'created_at',
    p_type := 'native',
    p_interval := 'monthly',
    p_premake := 4
);

-- Keep premaking future months even when no new rows arrive (a quiet log table must not
-- run out of partitions); partman.run_maintenance() does the premaking.
UPDATE partman.part_config
   SET infinite_time_partitions = true
 WHERE parent_table = 'public.system_logs';

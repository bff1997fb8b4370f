-- 0009: field-level encryption at rest (docs/security.md, "Field encryption").
--
-- With CRYPTO_ENABLED the DAL seals a user's personal fields with the user's own data
-- key (AES-256-GCM); the data key is stored here wrapped by a key encryption key that
-- never enters the database (CRYPTO_KEK_FILE). Deleting the wrapped key erases every
-- value sealed with it, wherever the ciphertext still lies.
--
-- Where the sealed values go:
--  * users.email and users.name (VARCHAR(255), the plan's) cannot hold a sealed value
--    and stay NULL: the value goes to email_sealed / name_sealed (bytea: the envelope
--    as it is, a third smaller than its base64 text).
--  * JSON values (user_memory.value, each value of users.profile / preferences) stay
--    JSONB: a sealed value is a JSON string holding the envelope. The column types,
--    the memory keys, and the server-side merges of the profile mirror (jsonb ||, -,
--    jsonb_each) keep working, as they move values without reading them.
--  * email_hmac: HMAC-SHA256 of the normalised e-mail under a lookup key kept in the
--    key file beside the KEKs, so a look-up by e-mail never needs the plain text.
--
-- The new columns are nullable without a default: adding them rewrites nothing. The
-- index on email_hmac is built CONCURRENTLY by 0010.

-- One data key per user, wrapped (AES-256-GCM) by the KEK named by kek_id (16 hex
-- characters of a hash of the KEK, not the key). The wrap is bound to user_id and
-- kek_id, so a wrapped key copied to another user's row does not unwrap.
CREATE TABLE user_keys (
    user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    kek_id TEXT NOT NULL
        CONSTRAINT user_keys_kek_id_check CHECK (kek_id ~ '^[0-9a-f]{16}$'),
    -- version byte, 12-byte nonce, 32-byte key, 16-byte tag
    wrapped_key BYTEA NOT NULL
        CONSTRAINT user_keys_wrapped_key_check CHECK (octet_length(wrapped_key) = 61),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    -- Set by `donnactl keys rotate` when it re-wraps the key under another KEK.
    rewrapped_at TIMESTAMP WITH TIME ZONE
);

-- `keys rotate` walks the keys not yet under the new KEK; `keys status` counts per KEK.
CREATE INDEX idx_user_keys_kek_id ON user_keys(kek_id, user_id);

ALTER TABLE users ADD COLUMN email_hmac BYTEA;
ALTER TABLE users ADD COLUMN email_sealed BYTEA;
ALTER TABLE users ADD COLUMN name_sealed BYTEA;

-- Erasures done by `users forget`, without personal data: the user's id (random, the
-- same in every backup of the rows) and when. A restored backup from before an erasure
-- gets it applied again from this ledger (docs/security.md, "Erasure").
CREATE TABLE erasures (
    user_id UUID PRIMARY KEY,
    erased_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);

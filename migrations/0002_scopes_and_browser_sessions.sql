-- Key scopes: what a key may do. Keys issued before scopes existed could do
-- everything, so they become `manage`.
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'manage';

-- Browser sessions of the web UI. The cookie holds a random id; only its
-- SHA-256 is stored. A session is bound to the key that signed in: revoking
-- the key deletes its sessions (and authentication checks the key anyway).
CREATE TABLE browser_sessions (
    id_sha256 TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

CREATE INDEX browser_sessions_by_key ON browser_sessions (key_id);

-- Accounts and their API keys. Portable SQL: runs unchanged on SQLite and
-- PostgreSQL. Times are Unix milliseconds (BIGINT) so both backends agree.
-- Quota columns are NULL when the account uses the configured default.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    max_storage_bytes BIGINT,
    max_concurrent_queries BIGINT,
    max_ingest_bytes_per_s BIGINT,
    max_notebook_sessions BIGINT
);

-- A key is `dpk_<id>_<secret>`; only SHA-256(secret) is stored. Secrets carry
-- 256 random bits, so a fast hash is enough: there is nothing to brute-force.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    secret_sha256 TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    last_used_at_ms BIGINT,
    revoked_at_ms BIGINT
);

CREATE INDEX api_keys_by_account ON api_keys (account_id);

-- Sign-in sessions, shared by every instance on this database (no sticky sessions). The
-- cookie holds a random id; only its SHA-256 is stored, with the SHA-256 of the token
-- that opened it (revoking the token ends its sessions) and an expiry.
CREATE TABLE sessions (
    id_sha256    text PRIMARY KEY,
    token_sha256 text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL
);
-- A token's sessions, newest first: the per-token limit drops the oldest beyond it.
CREATE INDEX sessions_token_idx ON sessions (token_sha256, created_at DESC);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- The web viewer's sign-in sessions (README "Web viewer"): only the SHA-256 of each cookie's
-- secret is kept. Times are microseconds since the Unix epoch, as elsewhere. Rows are deleted at
-- sign-out and once expired, so this table is not append-only.
CREATE TABLE ui_sessions (
    secret_hash    BLOB    PRIMARY KEY,
    user_name      TEXT    NOT NULL,
    credential_tag BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    -- A sign-in through the identity provider: what its token granted, until it expires.
    -- NULL for a local user's sign-in.
    scopes         TEXT,
    tenant         TEXT,
    expires_at     INTEGER
);
CREATE INDEX ui_sessions_by_last_seen ON ui_sessions (last_seen_at);

-- API tokens, for services (README "API tokens"): only the SHA-256 of each secret is kept.
-- Times are microseconds since the Unix epoch, as elsewhere; a revoked token stays listed.
CREATE TABLE api_tokens (
    name        TEXT    PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    secret_hash BLOB    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

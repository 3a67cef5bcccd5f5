-- API tokens, for services (README "API tokens"): only the SHA-256 of each secret is kept.
-- A revoked token stays listed.
CREATE TABLE api_tokens (
    name        TEXT        PRIMARY KEY,
    tenant      TEXT        NOT NULL,
    scopes      TEXT        NOT NULL,
    secret_hash BYTEA       NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

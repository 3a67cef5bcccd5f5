-- Each user acts in one tenant, or in all (`*`, naming one per request with `?tenant=`).
-- Existing users act in all, as they did.
ALTER TABLE users ADD COLUMN tenant TEXT NOT NULL DEFAULT '*';

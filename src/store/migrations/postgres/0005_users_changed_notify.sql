-- Any change to `users`, whoever makes it (a server, `auditor user`, psql), notifies the channel
-- `auditor_users_changed` from its own transaction: PostgreSQL delivers the notification when
-- that transaction commits, and never if it rolls back. Each server LISTENs on the channel to
-- drop the users it keeps in memory (`watch_users` in src/store/postgres.rs). The payload is
-- empty: a server reloads all users, which are few.
CREATE FUNCTION notify_users_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('auditor_users_changed', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER users_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed();

-- A counter moved in the same transaction as any change to `users`, whoever makes it (a server,
-- `auditor user` in another process, the sqlite3 shell): each server keeps its users in memory
-- and polls this one row to know when they are stale (`watch_users` in src/store/sqlite.rs).
-- Only its changes matter, not its value. SQLite triggers fire per row, and a trigger on
-- `users` also turns off the truncate optimisation of a `DELETE FROM users` without `WHERE`.
CREATE TABLE users_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO users_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER users_generation_on_insert AFTER INSERT ON users
BEGIN
    UPDATE users_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER users_generation_on_update AFTER UPDATE ON users
BEGIN
    UPDATE users_generation SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER users_generation_on_delete AFTER DELETE ON users
BEGIN
    UPDATE users_generation SET generation = generation + 1 WHERE id = 1;
END;

-- Where each change capture last confirmed its slot (README "Capturing a host database's
-- changes"), written before the slot is advanced: a slot found past it at start was moved by
-- someone else (made again, or advanced), and the changes in between are recorded as lost.
CREATE TABLE capture_positions (
    capture       TEXT    PRIMARY KEY,
    slot          TEXT    NOT NULL,
    confirmed_lsn INTEGER NOT NULL
);

-- Posting lists (see `store/sqlite/lists.rs`): a key's `seq`s in a run are stored in blocks of
-- up to 128, one row per block, the `seq`s after the first as varints of their differences,
-- instead of one row per posting, which repeated each key for every event that holds it.
-- The postings already written become blocks of one `seq` each, a valid list that answers the
-- same; the merges that follow write them packed.

CREATE TABLE posting_lists (
    run       INTEGER NOT NULL,
    field     TEXT    NOT NULL, -- a field's name, or `event_data.` and a leaf's path
    value     ANY     NOT NULL,
    first_seq INTEGER NOT NULL,
    seqs      BLOB    NOT NULL, -- the block's other seqs: unsigned LEB128 differences
    PRIMARY KEY (run, field, value, first_seq)
) STRICT, WITHOUT ROWID;

INSERT INTO posting_lists (run, field, value, first_seq, seqs)
SELECT run, field, value, seq, x'' FROM postings ORDER BY 1, 2, 3, 4;

DROP TABLE postings;

//! The `capture_positions` table as both backends use it (placeholders as in `store::users`).

/// `(slot, confirmed_lsn)` of a capture.
pub const FIND: &str = "SELECT slot, confirmed_lsn FROM capture_positions WHERE capture = $1";

/// Sets a capture's position, whatever it was.
pub const SET: &str = "INSERT INTO capture_positions (capture, slot, confirmed_lsn) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (capture) DO UPDATE SET slot = excluded.slot, \
     confirmed_lsn = excluded.confirmed_lsn";

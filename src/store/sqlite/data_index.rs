//! The leaves of a payload that `event_data` filters find: one per scalar leaf reached through
//! objects only, with its path and value as `event_data_index` stored them (migrations 0003
//! and 0004) and the postings hold them since 0009 (`postings`), and the form in which a query
//! names a path and a value so that they meet. The tail, a flush, a redaction and a query all
//! derive them here, so they agree.

use serde_json::{Map, Value};

use crate::model::JsonScalar;

/// Strings longer than this many characters are indexed by this long a prefix (migration 0003).
const INDEXED_TEXT_PREFIX: usize = 128;

/// A leaf of `event_data` as `event_data_index` stored it (migration 0003): SQLite's own typing of
/// the JSON value, `null`/`true`/`false` as blobs, long strings as the blob of their prefix.
pub(super) enum IndexedValue<'a> {
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> IndexedValue<'a> {
    pub(super) fn of(value: &'a Value) -> Option<Self> {
        Some(match value {
            Value::Null => Self::Blob(b"null"),
            Value::Bool(true) => Self::Blob(b"true"),
            Value::Bool(false) => Self::Blob(b"false"),
            // As SQLite's JSON parser: an integer beyond i64 is a real.
            Value::Number(n) => match n.as_i64() {
                Some(i) => Self::Integer(i),
                None => Self::Real(n.as_f64()?),
            },
            Value::String(s) => Self::text(s),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// A query's value in the form its leaves are stored in.
    pub(super) fn of_scalar(scalar: &'a JsonScalar) -> Self {
        match scalar {
            JsonScalar::Null => Self::Blob(b"null"),
            JsonScalar::Bool(true) => Self::Blob(b"true"),
            JsonScalar::Bool(false) => Self::Blob(b"false"),
            JsonScalar::Integer(i) => Self::Integer(*i),
            JsonScalar::Float(f) => Self::Real(*f),
            JsonScalar::String(s) => Self::text(s),
        }
    }

    /// Characters, not bytes, as SQLite's `length()` in the migration's view counts them.
    fn text(s: &'a str) -> Self {
        match s.char_indices().nth(INDEXED_TEXT_PREFIX) {
            Some((end, _)) => Self::Blob(&s.as_bytes()[..end]),
            None => Self::Text(s),
        }
    }
}

/// Appends one key to a path as `event_data_index.path` writes it (migration 0004): joined by
/// `.`, each key as it is, unless it is empty or holds `.` or `"`; such a key is written as its
/// JSON string literal (`"a.b".c` for `{"a.b": {"c": …}}`, `a.b.c` for `{"a": {"b": {"c": …}}}`).
///
/// Unambiguous: a key written as it is holds no `.` and does not start with `"`, and a literal
/// ends at its unescaped closing quote. This is not the query syntax, which also quotes keys
/// such as `a b`: the rule must be one that SQL can apply (the migration rewrote the rows of
/// existing events with `json_quote`, which writes exactly what serde_json writes), and it keeps
/// the rows written before 0004 valid for every key that holds neither character.
fn push_index_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if key.is_empty() || key.contains(['.', '"']) {
        path.push_str(&Value::from(key).to_string());
    } else {
        path.push_str(key);
    }
}

/// A query path as `event_data_index.path` writes it.
pub(super) fn index_path(segments: &[String]) -> String {
    let mut path = String::new();
    for key in segments {
        push_index_key(&mut path, key);
    }
    path
}

/// Every scalar leaf reached through objects only, with its path: the `event_data` postings of
/// one payload (`postings::data_postings`). Computed here rather than by a trigger running
/// `json_tree` per row, which tripled the cost of an append; migration 0004 derived the same
/// rows in SQL for the events it rewrote.
pub(super) fn indexed_leaves<'a>(
    prefix: &str,
    data: &'a Map<String, Value>,
    leaves: &mut Vec<(String, IndexedValue<'a>)>,
) {
    for (key, value) in data {
        let mut path = prefix.to_owned();
        push_index_key(&mut path, key);
        match value {
            Value::Object(inner) => indexed_leaves(&path, inner, leaves),
            other => {
                if let Some(indexed) = IndexedValue::of(other) {
                    leaves.push((path, indexed));
                }
            }
        }
    }
}

/// The SQLite JSON path of a query's path: `$."a.b"."we\\"ird"`, each key as its JSON string
/// literal. Bound as a parameter, never inlined: the keys are the client's text.
///
/// Exact for every key a query can name: SQLite (3.51, as bundled) reads a quoted label up to
/// its first unescaped `"` and compares it with the payload's keys after decoding JSON escapes
/// on both sides, which the tests check for keys holding `.`, `"`, `\\` and control characters.
/// The one key it cannot address is one holding U+0000 (the lookup stops at it), and
/// `JsonPath` refuses those.
pub(super) fn sqlite_json_path(segments: &[String]) -> String {
    let mut path = String::from("$");
    for segment in segments {
        path.push('.');
        path.push_str(&Value::from(segment.as_str()).to_string());
    }
    path
}

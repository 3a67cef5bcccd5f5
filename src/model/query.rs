//! The query over events: parsed from a query string into a small filter AST whose every name was
//! checked against a whitelist. Backends render it to SQL with bound values only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::event::{Action, Event, Outcome};
use super::fields::Kind;
use super::ids::{EventId, Seq};
use super::payload;

/// Which fields may be filtered on is declared with the event (`event_fields!`).
pub use super::event::Field;

fn field_named(name: &str) -> Option<Field> {
    Field::ALL.iter().copied().find(|f| f.name() == name)
}

/// A JSON value a payload field is compared with; numbers, booleans and strings compare as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonScalar {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

impl JsonScalar {
    /// `1346` is a number, `true` a boolean, `"1346"` (quoted) the string; anything else a string.
    /// A number no event can hold (see `model::payload`) is an error, not a silent non-match.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => Self::Null,
            Ok(Value::Bool(b)) => Self::Bool(b),
            Ok(Value::Number(_)) => {
                let number = payload::exact_number(text.trim())?;
                match number.as_i64() {
                    Some(i) => Self::Integer(i),
                    None => Self::Float(number.as_f64().unwrap_or_default()),
                }
            }
            Ok(Value::String(s)) => Self::String(s),
            _ => Self::String(text.to_owned()),
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Integer(i) => Value::from(*i),
            Self::Float(f) => Value::from(*f),
            Self::String(s) => Value::String(s.clone()),
        }
    }
}

/// A path into `event_data`: the keys leading from the payload's top level, through objects, to
/// a value. Backends take its keys as data (bound values, or JSON they build), never as SQL.
///
/// Written as keys separated by `.`, each either bare — letters and digits of any script, `_`
/// and `-` — or quoted as a JSON string literal, which can hold any other key: `plan.tier`,
/// `имя`, `"a.b".c`, `"we\"ird"`, `""` (the empty key). A quoted key that could be bare means
/// the same key: `"plan".tier` is `plan.tier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<String>);

/// Why a path was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a key is empty (write the empty key as `\"\"`)")]
    EmptyKey,
    #[error(
        "`{0}` must be quoted as a JSON string, e.g. `\"a.b\"`: bare keys hold only letters, digits, `_` and `-`"
    )]
    NeedsQuotes(String),
    #[error("a quoted key has no closing `\"`")]
    Unterminated,
    #[error("`{0}` is not a JSON string literal")]
    BadQuoted(String),
    #[error("a quoted key must be followed by `.` or end the path")]
    NoDotAfterQuoted,
    #[error("a key is longer than {} bytes", JsonPath::MAX_KEY_BYTES)]
    KeyTooLong,
    #[error("a key contains U+0000, which no backend can look up")]
    NulInKey,
    #[error("the path is more than {} keys deep", JsonPath::MAX_DEPTH)]
    TooDeep,
}

impl JsonPath {
    pub const MAX_DEPTH: usize = 8;
    /// In UTF-8, after a quoted key is decoded.
    pub const MAX_KEY_BYTES: usize = 128;

    /// Parses the text after `event_data.`.
    ///
    /// U+0000 is refused in a key: PostgreSQL's `jsonb` cannot hold it, and SQLite's JSON path
    /// lookup ends a key at it (`$."a\u0000b"` finds the key `a`), so neither could answer exactly.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let mut segments = Vec::new();
        let mut rest = text;
        loop {
            let (key, after) = match rest.strip_prefix('"') {
                Some(quoted) => {
                    let end = closing_quote(quoted).ok_or(PathError::Unterminated)?;
                    let literal = &rest[..end + 2];
                    let key = serde_json::from_str::<String>(literal)
                        .map_err(|_| PathError::BadQuoted(literal.to_owned()))?;
                    (key, &rest[end + 2..])
                }
                None => {
                    let end = rest.find('.').unwrap_or(rest.len());
                    let bare = &rest[..end];
                    if bare.is_empty() {
                        return Err(PathError::EmptyKey);
                    }
                    if !is_bare(bare) {
                        return Err(PathError::NeedsQuotes(bare.to_owned()));
                    }
                    (bare.to_owned(), &rest[end..])
                }
            };
            if key.len() > Self::MAX_KEY_BYTES {
                return Err(PathError::KeyTooLong);
            }
            if key.contains('\0') {
                return Err(PathError::NulInKey);
            }
            segments.push(key);
            if segments.len() > Self::MAX_DEPTH {
                return Err(PathError::TooDeep);
            }
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => return Ok(Self(segments)),
                None => return Err(PathError::NoDotAfterQuoted),
            }
        }
    }

    /// The keys, decoded.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The nested object `{"a":{"b":value}}` that contains exactly this path's value.
    pub fn containing(&self, value: Value) -> Value {
        self.0.iter().rev().fold(value, |inner, key| {
            let mut object = Map::new();
            object.insert(key.clone(), inner);
            Value::Object(object)
        })
    }
}

/// The path as a query writes it, keys bare where they can be: `JsonPath::parse` reads it back.
impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if is_bare(key) {
                f.write_str(key)?;
            } else {
                write!(f, "{}", Value::from(key.as_str()))?;
            }
        }
        Ok(())
    }
}

/// A key that may be written without quotes: Unicode letters and digits, `_` and `-`.
fn is_bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// The byte offset of the `"` that ends a JSON string whose opening quote was just stripped.
fn closing_quote(quoted: &str) -> Option<usize> {
    let bytes = quoted.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// A common field equals a string (uuids and enums already validated).
    Equals(Field, String),
    /// An `event_data` path holds this JSON value.
    Data(JsonPath, JsonScalar),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// Where the previous page ended. Opaque to clients; tied to its order so it cannot be misapplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "s")]
    pub after: Seq,
    #[serde(rename = "o")]
    pub order: Order,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub param: String,
    pub message: String,
}

impl QueryError {
    fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

/// A validated query: filters ANDed together, an optional time window on `occurred_at`, and a page.
#[derive(Debug, Clone, PartialEq)]
pub struct EventQuery {
    pub filters: Vec<Filter>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
    pub order: Order,
    pub after: Option<Seq>,
}

impl Default for EventQuery {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            since: None,
            until: None,
            limit: Self::DEFAULT_LIMIT,
            order: Order::Asc,
            after: None,
        }
    }
}

const PAGING_PARAMS: [&str; 5] = ["since", "until", "limit", "order", "cursor"];

impl EventQuery {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    /// Parses query-string pairs. An unknown name is an error listing the valid ones, because a
    /// typo silently dropped would widen the query to everything.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, QueryError> {
        let mut query = Self::default();
        let mut cursor = None;
        let mut seen = std::collections::HashSet::new();
        for (name, value) in pairs {
            if !seen.insert(name.as_str()) {
                return Err(QueryError::new(
                    name,
                    "is given more than once; give each parameter once (filters combine with AND)",
                ));
            }
            match name.as_str() {
                "since" => query.since = Some(parse_time(name, value)?),
                "until" => query.until = Some(parse_time(name, value)?),
                "limit" => query.limit = parse_limit(value)?,
                "order" => {
                    query.order = match value.as_str() {
                        "asc" => Order::Asc,
                        "desc" => Order::Desc,
                        _ => return Err(QueryError::new(name, "must be `asc` or `desc`")),
                    }
                }
                "cursor" => {
                    cursor = Some(Cursor::decode(value).ok_or_else(|| {
                        QueryError::new(name, "is not a cursor this service issued")
                    })?)
                }
                _ => query.filters.push(parse_filter(name, value)?),
            }
        }
        if let Some(cursor) = cursor {
            if cursor.order != query.order {
                return Err(QueryError::new(
                    "cursor",
                    "was issued for the other `order`; repeat the query with the same order",
                ));
            }
            query.after = Some(cursor.after);
        }
        Ok(query)
    }

    /// Names accepted by [`EventQuery::parse`], for error messages and documentation.
    pub fn valid_params() -> String {
        let mut names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        names.extend(PAGING_PARAMS);
        names.push("event_data.<path>");
        names.join(", ")
    }

    /// Turns rows fetched with `limit + 1` into a page whose cursor is set only if more remain.
    pub fn page(&self, mut events: Vec<Event>) -> Page {
        let limit = self.limit as usize;
        let more = events.len() > limit;
        events.truncate(limit);
        let next_cursor = more.then(|| events.last()).flatten().map(|last| Cursor {
            after: last.seq,
            order: self.order,
        });
        Page {
            events,
            next_cursor,
        }
    }

    /// Rows a backend should fetch: one more than the page, to learn whether another page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<Event>,
    pub next_cursor: Option<Cursor>,
}

fn parse_time(name: &str, value: &str) -> Result<OffsetDateTime, QueryError> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|_| {
        QueryError::new(
            name,
            "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
        )
    })
}

fn parse_limit(value: &str) -> Result<u32, QueryError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=EventQuery::MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(QueryError::new(
            "limit",
            format!("must be a whole number from 1 to {}", EventQuery::MAX_LIMIT),
        )),
    }
}

fn parse_filter(name: &str, value: &str) -> Result<Filter, QueryError> {
    if value.contains('\0') {
        return Err(QueryError::new(
            name,
            "must not contain U+0000, which no stored value holds",
        ));
    }
    if let Some(path) = name.strip_prefix("event_data.") {
        let path = JsonPath::parse(path).map_err(|error| {
            QueryError::new(
                name,
                format!(
                    "{error}; an event_data path is keys separated by `.`, each bare (letters, \
                     digits, `_`, `-`) or a JSON string such as `\"a.b\"`, at most {} deep",
                    JsonPath::MAX_DEPTH
                ),
            )
        })?;
        let value = JsonScalar::parse(value).map_err(|message| QueryError::new(name, message))?;
        return Ok(Filter::Data(path, value));
    }
    let field = field_named(name).ok_or_else(|| {
        QueryError::new(
            name,
            format!(
                "unknown query parameter `{name}`; valid parameters are: {}",
                EventQuery::valid_params()
            ),
        )
    })?;
    if field == Field::Ip {
        // Stored in canonical form (`2001:DB8::1` as `2001:db8::1`), so compared in it.
        let ip: std::net::IpAddr = value
            .parse()
            .map_err(|_| QueryError::new(name, "must be an IPv4 or IPv6 address"))?;
        return Ok(Filter::Equals(field, ip.to_string()));
    }
    let valid = match field {
        Field::Action => Action::ALL.iter().any(|a| a.as_str() == value),
        Field::Outcome => Outcome::parse(value).is_some(),
        _ if field.kind() == Kind::Uuid => value.parse::<EventId>().is_ok(),
        _ => true,
    };
    if !valid {
        let expected = match field {
            Field::Action => "one of create, read, update, delete",
            Field::Outcome => "`success` or `failure`",
            _ => "a UUID",
        };
        return Err(QueryError::new(name, format!("must be {expected}")));
    }
    Ok(Filter::Equals(field, value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ip_filters_are_canonical_and_checked() {
        let query = EventQuery::parse(&pairs(&[("ip", "2001:DB8:0:0:0:0:0:1")])).unwrap();
        assert_eq!(
            query.filters,
            vec![Filter::Equals(Field::Ip, "2001:db8::1".into())]
        );
        assert_eq!(
            EventQuery::parse(&pairs(&[("ip", "garbage")]))
                .unwrap_err()
                .param,
            "ip"
        );
    }

    #[test]
    fn a_parameter_given_twice_is_rejected() {
        let err = EventQuery::parse(&pairs(&[("event_type", "a"), ("event_type", "b")]));
        assert_eq!(err.unwrap_err().param, "event_type");
    }

    #[test]
    fn unknown_parameter_is_rejected_with_the_valid_list() {
        let err = EventQuery::parse(&pairs(&[("user_identiy", "x")])).unwrap_err();
        assert_eq!(err.param, "user_identiy");
        assert!(err.message.contains("user_identity"));
    }

    #[test]
    fn event_data_values_are_typed() {
        let parse = |text: &str| JsonScalar::parse(text).unwrap();
        assert_eq!(parse("1346"), JsonScalar::Integer(1346));
        assert_eq!(parse("1.5"), JsonScalar::Float(1.5));
        assert_eq!(parse("1.0"), JsonScalar::Integer(1));
        assert_eq!(parse("true"), JsonScalar::Bool(true));
        assert_eq!(parse("\"1346\""), JsonScalar::String("1346".into()));
        assert_eq!(
            parse("john@example.com"),
            JsonScalar::String("john@example.com".into())
        );
        assert!(JsonScalar::parse("9007199254740993").is_err());
        assert!(JsonScalar::parse("333333333.33333329").is_err());
    }

    fn keys(text: &str) -> Vec<String> {
        JsonPath::parse(text).unwrap().segments().to_vec()
    }

    #[test]
    fn bare_keys_may_be_letters_and_digits_of_any_script() {
        assert_eq!(keys("account.id"), ["account", "id"]);
        assert_eq!(keys("имя"), ["имя"]);
        assert_eq!(keys("名前.ünï_cödé-2.٣"), ["名前", "ünï_cödé-2", "٣"]);
        let path = JsonPath::parse("a.b").unwrap();
        assert_eq!(
            path.containing(Value::from(1)),
            serde_json::json!({"a": {"b": 1}})
        );
    }

    #[test]
    fn quoted_keys_are_json_strings_and_may_hold_anything() {
        assert_eq!(keys(r#""a.b".c"#), ["a.b", "c"]);
        assert_eq!(keys(r#"a."b.c""#), ["a", "b.c"]);
        assert_eq!(keys(r#""we\"ird".x"#), ["we\"ird", "x"]);
        assert_eq!(keys(r#""back\\slash""#), ["back\\slash"]);
        assert_eq!(keys(r#""\u00e9\n".x"#), ["é\n", "x"]);
        assert_eq!(keys(r#""a b"."it's""#), ["a b", "it's"]);
        assert_eq!(keys(r#""""#), [""]);
        assert_eq!(keys(r#"a."".b"#), ["a", "", "b"]);
        // Quoting a key that could be bare changes nothing.
        assert_eq!(
            JsonPath::parse(r#""plan"."tier""#),
            JsonPath::parse("plan.tier")
        );
        let dotted = JsonPath::parse(r#""a.b".c"#).unwrap();
        assert_eq!(
            dotted.containing(Value::from(1)),
            serde_json::json!({"a.b": {"c": 1}})
        );
        assert_ne!(Some(dotted), JsonPath::parse("a.b.c").ok());
    }

    #[test]
    fn malformed_paths_are_refused() {
        let refused = [
            ("", PathError::EmptyKey),
            ("a..b", PathError::EmptyKey),
            ("a.", PathError::EmptyKey),
            (".a", PathError::EmptyKey),
            (
                "a'); drop table events; --",
                PathError::NeedsQuotes("a'); drop table events; --".into()),
            ),
            ("a b", PathError::NeedsQuotes("a b".into())),
            ("a\"b", PathError::NeedsQuotes("a\"b".into())),
            (r#""a.b"#, PathError::Unterminated),
            (r#""a\""#, PathError::Unterminated),
            (r#""a\q""#, PathError::BadQuoted(r#""a\q""#.into())),
            (
                r#""a
b""#,
                PathError::BadQuoted("\"a\nb\"".into()),
            ),
            (r#""a"b"#, PathError::NoDotAfterQuoted),
            (r#""a""b""#, PathError::NoDotAfterQuoted),
            (r#""a\u0000b""#, PathError::NulInKey),
            ("a.b.c.d.e.f.g.h.i", PathError::TooDeep),
        ];
        for (text, error) in refused {
            assert_eq!(JsonPath::parse(text), Err(error), "{text:?}");
        }
        assert!(JsonPath::parse("a.b.c.d.e.f.g.h").is_ok());
        assert!(JsonPath::parse(&"й".repeat(64)).is_ok());
        assert_eq!(JsonPath::parse(&"й".repeat(65)), Err(PathError::KeyTooLong));
        assert_eq!(
            JsonPath::parse(&format!("\"{}\"", "\\u0041".repeat(129))),
            Err(PathError::KeyTooLong)
        );
    }

    #[test]
    fn a_bad_path_names_its_parameter() {
        let err = EventQuery::parse(&pairs(&[("event_data.a b", "1")])).unwrap_err();
        assert_eq!(err.param, "event_data.a b");
        assert!(err.message.contains("JSON string"), "{}", err.message);
    }

    proptest::proptest! {
        /// Any keys without U+0000 survive being written as a query path and read back.
        #[test]
        fn written_paths_parse_back_to_their_keys(
            keys in proptest::collection::vec("[^\u{0}]{0,12}", 1..=JsonPath::MAX_DEPTH)
        ) {
            let path = JsonPath(keys);
            proptest::prop_assert_eq!(JsonPath::parse(&path.to_string()), Ok(path));
        }
    }

    #[test]
    fn limit_out_of_range_is_rejected() {
        assert!(EventQuery::parse(&pairs(&[("limit", "0")])).is_err());
        assert!(EventQuery::parse(&pairs(&[("limit", "1001")])).is_err());
        assert_eq!(
            EventQuery::parse(&pairs(&[("limit", "1000")]))
                .unwrap()
                .limit,
            1000
        );
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_order() {
        let cursor = Cursor {
            after: Seq(42),
            order: Order::Desc,
        };
        let text = cursor.encode();
        let q = EventQuery::parse(&pairs(&[("order", "desc"), ("cursor", &text)])).unwrap();
        assert_eq!(q.after, Some(Seq(42)));
        assert!(EventQuery::parse(&pairs(&[("cursor", &text)])).is_err());
        assert!(EventQuery::parse(&pairs(&[("cursor", "garbage")])).is_err());
    }

    #[test]
    fn enum_and_uuid_fields_are_validated() {
        assert!(EventQuery::parse(&pairs(&[("action", "explode")])).is_err());
        assert!(EventQuery::parse(&pairs(&[("id", "not-a-uuid")])).is_err());
        assert!(EventQuery::parse(&pairs(&[("outcome", "success")])).is_ok());
    }
}

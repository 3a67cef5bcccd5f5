//! The contract for `event_data`: what is accepted is stored, hashed, served and exported as the
//! same value on both backends, or it is refused naming the offending member.
//!
//! - **Numbers** are IEEE-754 doubles, as RFC 8785 (JCS) hashes them. A number is accepted only
//!   when no digit is lost: the double nearest to it, printed in the shortest round-trip form JCS
//!   uses, denotes the same decimal value as the text received (`0.1`, `1e23`, `5e-324` and
//!   `1.7976931348623157e308` pass; `333333333.33333329`, `9007199254740993` and
//!   `12345678901234567.89` do not, and are to be sent as strings).
//! - **Strings and keys** may hold any Unicode except U+0000, which PostgreSQL cannot store.
//! - **Keys** are unique within an object (I-JSON, RFC 7493): a repeated key would be dropped.
//! - **Nesting** is at most [`MAX_DEPTH`] objects and arrays deep, so that no reader, hasher or
//!   database meets a payload deeper than it can handle (serde_json reads at most 128 levels).
//!
//! [`normalize`] gives every accepted number one representation (an integer when it is one
//! within ±(2^53 − 1), a double otherwise), and readers apply it to what a database hands back,
//! so that JSONB's `418122821785227200` for the double `4.181228217852272e17` reads back, hashes
//! and exports as the double it is.

use std::fmt::Write as _;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::event::FieldError;

/// The largest integer every JSON consumer reads exactly (RFC 7493, I-JSON).
pub const MAX_EXACT_INTEGER: i64 = (1 << 53) - 1;

/// The deepest nesting of objects and arrays accepted, `event_data` itself being level 1.
pub const MAX_DEPTH: usize = 64;

/// Parses a client's `event_data` from the JSON text it was sent as (`raw` is the value of the
/// `event_data` member). Errors name the member, e.g. `event_data.amounts[2]`.
pub fn parse(raw: &RawValue) -> Result<Map<String, Value>, FieldError> {
    let mut path = String::from("event_data");
    match parse_value(raw, &mut path, 1)? {
        Value::Object(map) => Ok(map),
        _ => Err(FieldError::new(
            path,
            "must be a JSON object (e.g. {\"account_id\": 1346})",
        )),
    }
}

/// Parses any JSON value under the same contract as `event_data`'s members (exact numbers, no
/// U+0000, unique keys, bounded depth); errors name the member under `path`.
pub fn parse_member(raw: &RawValue, path: &str) -> Result<Value, FieldError> {
    parse_value(raw, &mut path.to_owned(), 2)
}

fn parse_value(raw: &RawValue, path: &mut String, depth: usize) -> Result<Value, FieldError> {
    let text = raw.get();
    let malformed = |e: serde_json::Error| FieldError::new(path.clone(), e.to_string());
    let container = matches!(text.as_bytes().first(), Some(b'{' | b'['));
    if container && depth > MAX_DEPTH {
        return Err(FieldError::new(
            path.clone(),
            format!("nests objects and arrays more than {MAX_DEPTH} levels deep"),
        ));
    }
    Ok(match text.as_bytes().first() {
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text).map_err(malformed)?;
            let mut map = Map::with_capacity(members.len());
            for (key, value) in members {
                let len = path.len();
                let _ = write!(path, ".{key}");
                check_text(&key, path)?;
                if map.contains_key(&key) {
                    return Err(FieldError::new(
                        path.clone(),
                        "appears twice in one object; keys must be unique",
                    ));
                }
                let value = parse_value(value, path, depth + 1)?;
                path.truncate(len);
                map.insert(key, value);
            }
            Value::Object(map)
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(malformed)?;
            let mut values = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{index}]");
                values.push(parse_value(item, path, depth + 1)?);
                path.truncate(len);
            }
            Value::Array(values)
        }
        Some(b'"') => {
            let string: String = serde_json::from_str(text).map_err(malformed)?;
            check_text(&string, path)?;
            Value::String(string)
        }
        Some(b'-' | b'0'..=b'9') => Value::Number(
            exact_number(text).map_err(|message| FieldError::new(path.clone(), message))?,
        ),
        _ => serde_json::from_str(text).map_err(malformed)?,
    })
}

fn check_text(text: &str, path: &str) -> Result<(), FieldError> {
    if text.contains('\0') {
        return Err(FieldError::new(
            path,
            "must not contain U+0000 (PostgreSQL cannot store it)",
        ));
    }
    Ok(())
}

/// An object's members in document order, duplicates kept so that they can be refused.
pub(crate) struct Members<'a>(pub Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(access.size_hint().unwrap_or(8));
                while let Some(member) = access.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The number a JSON number token denotes, if a double holds it exactly (see the module doc).
pub fn exact_number(text: &str) -> Result<Number, String> {
    let double: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a JSON number"))?;
    if !double.is_finite() {
        return Err(format!(
            "{text} is beyond the range of a double (±1.7976931348623157e308); send it as a string"
        ));
    }
    let shortest = ryu_js::Buffer::new().format_finite(double).to_owned();
    if Decimal::parse(text) != Decimal::parse(&shortest) {
        return Err(format!(
            "{text} cannot be kept exactly: the nearest double is {shortest}; send the number as a string"
        ));
    }
    Ok(normalize_double(double))
}

/// One representation per value: integers within ±(2^53 − 1) as integers, every other number as
/// a double (a double is what JCS hashes in any case).
pub fn normalize_number(number: &Number) -> Number {
    match (number.as_i64(), number.as_f64()) {
        (Some(i), _) if i.abs() <= MAX_EXACT_INTEGER => number.clone(),
        (_, Some(double)) => normalize_double(double),
        _ => number.clone(),
    }
}

fn normalize_double(double: f64) -> Number {
    if double.fract() == 0.0 && double.abs() <= MAX_EXACT_INTEGER as f64 {
        Number::from(double as i64)
    } else {
        Number::from_f64(double).unwrap_or_else(|| Number::from(0))
    }
}

/// Brings a payload read back from a database into the form [`parse`] produced.
pub fn normalized(mut map: Map<String, Value>) -> Map<String, Value> {
    normalize(&mut map);
    map
}

fn normalize(map: &mut Map<String, Value>) {
    map.values_mut().for_each(normalize_value);
}

fn normalize_value(value: &mut Value) {
    match value {
        Value::Number(number) => *number = normalize_number(number),
        Value::Array(items) => items.iter_mut().for_each(normalize_value),
        Value::Object(map) => normalize(map),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// A decimal number's value as `digits × 10^exponent`, digits without leading or trailing zeros,
/// so that two spellings of one value compare equal (`1e23` and `1e+23`, `0.50` and `5e-1`).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &str) -> Self {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], saturating_exponent(&unsigned[at + 1..])),
            None => (unsigned, 0),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut exponent = exponent.saturating_sub(fraction.len() as i64);
        let all = format!("{integer}{fraction}");
        let trimmed = all.trim_start_matches('0');
        let digits = trimmed.trim_end_matches('0');
        exponent = exponent.saturating_add((trimmed.len() - digits.len()) as i64);
        if digits.is_empty() {
            // Zero, whatever its sign or exponent: JCS prints -0 as 0.
            return Self {
                negative: false,
                digits: String::new(),
                exponent: 0,
            };
        }
        Self {
            negative,
            digits: digits.to_owned(),
            exponent,
        }
    }
}

/// An exponent far beyond a double's range still compares as far beyond it.
fn saturating_exponent(text: &str) -> i64 {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = digits.bytes().fold(0i64, |acc, digit| {
        acc.saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'))
    });
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data(json: &str) -> Result<Map<String, Value>, FieldError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        parse(&raw)
    }

    fn refused(json: &str) -> String {
        data(json).unwrap_err().field
    }

    #[test]
    fn numbers_a_double_holds_exactly_are_accepted() {
        for text in [
            "0",
            "-0",
            "0.1",
            "1e23",
            "5e-324",
            "1.7976931348623157e308",
            "1.7976931348623155e308",
            "-1.7976931348623157E+308",
            "9007199254740991",
            "-9007199254740991",
            "9007199254740992",
            "4.50",
            "1E30",
            "0.000000000000000000000000001",
            "123456789012345.67",
        ] {
            assert!(exact_number(text).is_ok(), "{text} should be accepted");
        }
    }

    #[test]
    fn numbers_that_would_change_are_refused() {
        for text in [
            "333333333.33333329",
            "123456789012345678901234567890",
            "12345678901234567.89",
            "12345678901234567890e-5",
            "9007199254740993",
            "18446744073709551615",
            "1152921504606846976",
            "1e400",
            "1e-400",
            "0.30000000000000000001",
        ] {
            assert!(exact_number(text).is_err(), "{text} should be refused");
        }
    }

    /// When two 17-digit forms are equally near a double, RFC 8785 prints the even one, as
    /// JavaScript and Python do; the other (which Rust's `{:?}` may print) denotes another value.
    #[test]
    fn of_two_equally_short_forms_the_one_rfc_8785_prints_is_the_value() {
        assert!(exact_number("-1471777390254262.2").is_ok());
        let err = exact_number("-1471777390254262.3").unwrap_err();
        assert!(err.contains("-1471777390254262.2"), "{err}");
    }

    #[test]
    fn refusals_name_the_member() {
        assert_eq!(
            refused(r#"{"a": {"b": [1, 333333333.33333329]}}"#),
            "event_data.a.b[1]"
        );
        assert_eq!(refused(r#"{"k": "v\u0000w"}"#), "event_data.k");
        assert_eq!(refused(r#"{"k\u0000": 1}"#), "event_data.k\0");
        assert_eq!(refused(r#"{"a": 1, "a": 2}"#), "event_data.a");
        assert_eq!(refused("[1]"), "event_data");
    }

    #[test]
    fn nesting_is_bounded_however_deep_the_input() {
        let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        assert!(data(&nested(MAX_DEPTH)).is_ok());
        let deep = data(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(deep.field, format!("event_data{}", ".a".repeat(MAX_DEPTH)));
        // Far deeper than any stack: refused, not a crash.
        let raw: Box<RawValue> = serde_json::from_str(&nested(100_000))
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&1).unwrap());
        let _ = parse(&raw);
        let arrays = format!("{{\"a\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
        if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(&arrays) {
            assert!(parse(&raw).is_err());
        }
    }

    #[test]
    fn numbers_take_one_representation() {
        let map =
            data(r#"{"a": 1.0, "b": -0, "c": 1e23, "d": 2.5, "e": 9007199254740992}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"a":1,"b":0,"c":1e+23,"d":2.5,"e":9007199254740992.0}"#
        );
    }

    #[test]
    fn what_jsonb_hands_back_reads_as_the_double_sent() {
        // PostgreSQL prints a JSONB numeric in positional notation.
        let max = format!("1{}", "7976931348623157".to_owned() + &"0".repeat(292));
        let read = normalized(
            serde_json::from_str(&format!(r#"{{"max": {max}, "big": 418122821785227200}}"#))
                .unwrap(),
        );
        assert_eq!(read["max"].as_f64(), Some(f64::MAX));
        assert!(read["big"].is_f64());
        assert_eq!(read["big"].as_f64(), Some(4.181228217852272e17));
    }

    proptest! {
        /// Any double printed in shortest form (as JavaScript, Python, Go and serde_json print
        /// them) is accepted, and what is stored, printed and read back again is that double.
        #[test]
        fn shortest_doubles_survive_every_round_trip(bits in any::<u64>()) {
            let double = f64::from_bits(bits);
            prop_assume!(double.is_finite());
            for text in [
                ryu_js::Buffer::new().format_finite(double).to_owned(),
                serde_json::to_string(&double).unwrap(),
            ] {
                let number = exact_number(&text).unwrap();
                prop_assert_eq!(number.as_f64(), Some(if double == 0.0 { 0.0 } else { double }));
                let printed = serde_json::to_string(&number).unwrap();
                let reread: Number = serde_json::from_str(&printed).unwrap();
                prop_assert_eq!(normalize_number(&reread), number.clone());
                // JSONB's positional notation of the same value.
                let positional = positional(&printed);
                let reread: Number = serde_json::from_str(&positional).unwrap();
                prop_assert_eq!(normalize_number(&reread), number);
            }
        }
    }

    /// The number in plain positional notation, as PostgreSQL's numeric prints it.
    fn positional(text: &str) -> String {
        let Decimal {
            negative,
            digits,
            exponent,
        } = Decimal::parse(text);
        if digits.is_empty() {
            return "0".into();
        }
        let sign = if negative { "-" } else { "" };
        if exponent >= 0 {
            format!("{sign}{digits}{}", "0".repeat(exponent as usize))
        } else {
            let shift = (-exponent) as usize;
            if shift >= digits.len() {
                format!("{sign}0.{}{digits}", "0".repeat(shift - digits.len()))
            } else {
                let (int, frac) = digits.split_at(digits.len() - shift);
                format!("{sign}{int}.{frac}")
            }
        }
    }
}

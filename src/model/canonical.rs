//! RFC 8785 (JCS) canonical JSON for payloads: object keys sorted by UTF-16 code units, numbers
//! as ECMAScript prints doubles, strings with JSON's minimal escapes. Written directly over
//! `serde_json::Value` because it runs for every event appended and verified; the property test
//! below holds it byte-for-byte to the `serde_jcs` crate.

use serde_json::{Map, Number, Value};

/// The canonical bytes of a JSON object.
pub fn object_bytes(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_object(&mut out, map);
    out
}

/// The canonical bytes of a JSON string: `"`, its text with JSON's minimal escapes, `"`.
pub fn string_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_string(&mut out, text);
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// Every JSON number is an IEEE-754 double to JCS, printed the ECMAScript way.
fn write_number(out: &mut Vec<u8>, n: &Number) {
    let double = n.as_f64().unwrap_or(f64::NAN);
    out.extend_from_slice(ryu_js::Buffer::new().format(double).as_bytes());
}

/// serde_json's escaping is exactly JCS's: `\"`, `\\`, the five short control escapes, other
/// controls as lowercase `\u00xx`, everything else (including `/` and non-ASCII) verbatim.
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\/\u{7f}\u{e9}\u{1F600}a]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-zA-Z_\u{e9}\u{1F600}\u{ff21}]{0,6}", inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn matches_serde_jcs_byte_for_byte(
            entries in prop::collection::vec(("\\PC{0,8}", json_value()), 0..8)
        ) {
            let map: Map<String, Value> = entries.into_iter().collect();
            let expected = serde_jcs::to_vec(&map).unwrap();
            prop_assert_eq!(
                String::from_utf8(object_bytes(&map)).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn rfc_8785_examples() {
        let map: Map<String, Value> = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],
                "string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(object_bytes(&map)).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }
}

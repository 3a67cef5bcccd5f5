//! CloudEvents 1.0 (<https://github.com/cloudevents/spec>) as a way to write an audit event.
//! Every binding (HTTP structured and binary mode, a broker's message) gathers the context
//! attributes and the data into a [`CloudEvent`]; [`CloudEvent::into_raw_event`] maps it onto the
//! event's fields:
//!
//! | CloudEvents | event |
//! |---|---|
//! | `type` | `event_type` |
//! | `source` | `source` |
//! | `id` | `idempotency_key`, as `ce:<length of source>:<source>:<id>` (`model::idempotency`): an id is unique per source |
//! | `subject` | `entity_id` |
//! | `time` | `occurred_at` |
//! | `data` | `event_data`: a JSON object as it is; any other JSON value (and a binary-mode body of text, `text/*`, XML or with a charset) as `{"data": …}`; other content as `{"data_base64": …, "datacontenttype": …}` |
//! | extension `authid` (the Auth Context extension's actor) | `user_identity`; without it, `source` |
//! | extensions `entity`, `action`, `outcome`, `property`, `ip` | the field of that name |
//!
//! `specversion` must be `1.0`. `datacontenttype` and `dataschema` describe the data and are not
//! kept apart from it; any other attribute is refused (`422`) rather than silently dropped.
//! In the JSON format each attribute's type is checked (the spec's and the Auth Context's are
//! strings; another extension a string, a boolean or a 32-bit integer): a value of another type
//! is refused naming the attribute, never recorded as its text.
//! The data's JSON is kept as its text, so its numbers reach `model::payload`'s exactness
//! checks as sent: the reason this mapping does not go through an SDK's `serde_json::Value`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::value::RawValue;

use super::event::{FieldError, RawEvent};
use super::idempotency::scoped_key;
use super::json::JsonError;
use super::payload::Members;

/// The `Content-Type` of one structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The `Content-Type` of a batch of structured-mode events (a JSON array).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The extension attributes this mapping reads besides [`STRING_ATTRIBUTES`]; any other
/// attribute is refused.
const EXTENSION_ATTRIBUTES: [&str; 5] = ["entity", "action", "outcome", "property", "ip"];

fn is_known_attribute(name: &str) -> bool {
    STRING_ATTRIBUTES.contains(&name) || EXTENSION_ATTRIBUTES.contains(&name)
}

/// An event's data as a binding carries it.
#[derive(Debug, Clone)]
pub enum CloudEventData {
    /// JSON (structured mode's `data`, or a binary-mode body of a JSON content type).
    Json(Box<RawValue>),
    /// Bytes of another content type (structured mode's `data_base64`, or a binary-mode body).
    Binary(Vec<u8>),
}

/// One CloudEvent: its context attributes (extensions included) as strings, and its data.
#[derive(Debug, Clone, Default)]
pub struct CloudEvent {
    pub attributes: BTreeMap<String, String>,
    pub data: Option<CloudEventData>,
}

impl CloudEvent {
    /// One event in the JSON event format (structured mode). Attribute values that are JSON
    /// numbers or booleans (an extension's integer) are kept as their JSON text.
    pub fn from_structured(json: &[u8]) -> Result<Self, FieldError> {
        let Members(members) = serde_json::from_slice(json)
            .map_err(|e| FieldError::new("cloudevent", format!("is not a JSON object: {e}")))?;
        Self::from_members(members)
    }

    /// A batch in the JSON batch format: an array of structured events. Errors name the
    /// event's index, e.g. `[2].type`.
    pub fn from_structured_batch(json: &[u8]) -> Result<Vec<Self>, FieldError> {
        let events: Vec<&RawValue> = serde_json::from_slice(json).map_err(|e| {
            FieldError::new("cloudevents", format!("is not a JSON array of events: {e}"))
        })?;
        events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                Self::from_structured(event.get().as_bytes()).map_err(|e| e.at_index(index))
            })
            .collect()
    }

    /// One event in a binding's binary mode: its attributes (taken from headers), the
    /// `content_type` of its data, which becomes `datacontenttype`, and the data itself.
    /// A JSON content type (or none) makes the data JSON, and then it must be JSON.
    pub fn from_binary(
        mut attributes: BTreeMap<String, String>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, FieldError> {
        if let Some(content_type) = content_type {
            attributes.insert("datacontenttype".into(), content_type.to_owned());
        }
        let data = if body.is_empty() {
            None
        } else if is_json_content_type(content_type) {
            let text =
                std::str::from_utf8(body).map_err(|e| FieldError::new("data", e.to_string()))?;
            let raw = RawValue::from_string(text.trim().to_owned())
                .map_err(|e| FieldError::new("data", format!("is not JSON: {e}")))?;
            Some(CloudEventData::Json(raw))
        } else if let Some(text) = is_text_content_type(content_type)
            .then(|| std::str::from_utf8(body).ok())
            .flatten()
        {
            // Text is what the JSON event format carries as a string in `data`: the same
            // event sent in either mode is then recorded alike.
            let raw = serde_json::value::to_raw_value(text)
                .map_err(|e| FieldError::new("data", e.to_string()))?;
            Some(CloudEventData::Json(raw))
        } else {
            Some(CloudEventData::Binary(body.to_vec()))
        };
        Ok(Self { attributes, data })
    }

    fn from_members(members: Vec<(String, &RawValue)>) -> Result<Self, FieldError> {
        let mut event = Self::default();
        let mut data_member: Option<String> = None;
        for (name, value) in members {
            if name == "data" || name == "data_base64" {
                match data_member.as_deref() {
                    Some(seen) if seen == name => {
                        return Err(FieldError::new(name, "appears twice"));
                    }
                    Some(_) => {
                        return Err(FieldError::new(
                            name,
                            "`data` and `data_base64` are mutually exclusive: an event carries \
                             its data in one of them (`data_base64` for binary data)",
                        ));
                    }
                    None => data_member = Some(name.clone()),
                }
            } else if event.attributes.contains_key(&name) {
                return Err(FieldError::new(name, "appears twice"));
            }
            match name.as_str() {
                "data" => event.data = Some(CloudEventData::Json(value.to_owned())),
                "data_base64" => {
                    let text: String = serde_json::from_str(value.get())
                        .map_err(|_| FieldError::new("data_base64", "must be a string"))?;
                    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
                        FieldError::new("data_base64", format!("is not base64: {e}"))
                    })?;
                    event.data = Some(CloudEventData::Binary(bytes));
                }
                _ => {
                    let text = attribute_text(&name, value)?;
                    event.attributes.insert(name, text);
                }
            }
        }
        Ok(event)
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, FieldError> {
        match self.attribute(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(FieldError::new(
                name,
                "is required by CloudEvents 1.0 and must not be empty",
            )),
        }
    }

    /// The audit event this CloudEvent records (see the module doc for the mapping). Errors
    /// name the CloudEvents attribute.
    pub fn into_raw_event(self) -> Result<RawEvent, FieldError> {
        match self.attribute("specversion") {
            Some("1.0") => {}
            Some(other) => {
                return Err(FieldError::new(
                    "specversion",
                    format!("`{other}` is not supported; send CloudEvents 1.0"),
                ));
            }
            None => return Err(FieldError::new("specversion", "is required (1.0)")),
        }
        if let Some(unknown) = self
            .attributes
            .keys()
            .find(|name| !is_known_attribute(name))
        {
            return Err(FieldError::new(
                unknown.clone(),
                format!(
                    "is not an attribute this service records; it takes {} (see the README)",
                    STRING_ATTRIBUTES
                        .iter()
                        .chain(&EXTENSION_ATTRIBUTES)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let id = self.required("id")?;
        let source = self.required("source")?;
        // A URI reference (RFC 3986) holds no white space.
        if source.chars().any(char::is_whitespace) {
            return Err(FieldError::new(
                "source",
                "must be a URI reference, which holds no white space",
            ));
        }
        let event_type = self.required("type")?;
        let mut fields = serde_json::Map::new();
        let mut put = |field: &str, value: &str| {
            fields.insert(field.to_owned(), value.into());
        };
        put("event_type", event_type);
        put("source", source);
        put("idempotency_key", &scoped_key("ce", source, id));
        put("user_identity", self.attribute("authid").unwrap_or(source));
        for (attribute, field) in [
            ("subject", "entity_id"),
            ("time", "occurred_at"),
            ("entity", "entity"),
            ("action", "action"),
            ("outcome", "outcome"),
            ("property", "property"),
            ("ip", "ip"),
        ] {
            if let Some(value) = self.attribute(attribute) {
                put(field, value);
            }
        }
        let mut text = serde_json::Value::Object(fields).to_string();
        if let Some(data) = self.event_data()? {
            // The data's text goes in as received, so that its numbers are checked as sent.
            text.pop();
            text.push_str(",\"event_data\":");
            text.push_str(data.get());
            text.push('}');
        }
        super::json::parse(text.as_bytes()).map_err(|error| match error {
            JsonError::Invalid(error) => FieldError::new(attribute_of(&error.field), error.message),
            JsonError::Malformed(message) => FieldError::new("data", message),
        })
    }

    fn event_data(&self) -> Result<Option<Box<RawValue>>, FieldError> {
        let wrap = |value: serde_json::Value| {
            serde_json::value::to_raw_value(&value)
                .map_err(|e| FieldError::new("data", e.to_string()))
        };
        match &self.data {
            None => Ok(None),
            Some(CloudEventData::Json(raw)) if raw.get().starts_with('{') => Ok(Some(raw.clone())),
            Some(CloudEventData::Json(raw)) => {
                let text = format!("{{\"data\":{}}}", raw.get());
                RawValue::from_string(text)
                    .map(Some)
                    .map_err(|e| FieldError::new("data", e.to_string()))
            }
            Some(CloudEventData::Binary(bytes)) => {
                let mut data = serde_json::Map::new();
                data.insert("data_base64".into(), STANDARD.encode(bytes).into());
                if let Some(content_type) = self.attribute("datacontenttype") {
                    data.insert("datacontenttype".into(), content_type.into());
                }
                wrap(serde_json::Value::Object(data)).map(Some)
            }
        }
    }
}

/// The attributes whose type is String in CloudEvents 1.0's JSON event format: the spec's own
/// (URI, URI-reference and Timestamp are strings there too) and the Auth Context extension's.
const STRING_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "authid",
    "authtype",
];

/// An attribute's value in the JSON event format, as the text a binary-mode header would carry:
/// a string for the attributes in [`STRING_ATTRIBUTES`]; for any other extension a string, a
/// boolean or an Integer (a whole number within 32 bits), the types the spec gives extensions
/// a JSON value of. Anything else is refused naming the attribute, never turned into text.
fn attribute_text(name: &str, value: &RawValue) -> Result<String, FieldError> {
    if let Ok(text) = serde_json::from_str::<String>(value.get()) {
        return Ok(text);
    }
    if STRING_ATTRIBUTES.contains(&name) {
        return Err(FieldError::new(
            name,
            format!("must be a JSON string (CloudEvents 1.0 types `{name}` as a String)"),
        ));
    }
    if let Ok(flag) = serde_json::from_str::<bool>(value.get()) {
        return Ok(flag.to_string());
    }
    // JSON has one number type: `5.0` is the Integer 5 as much as `5` is.
    let whole = serde_json::from_str::<i64>(value.get()).ok().or_else(|| {
        serde_json::from_str::<f64>(value.get())
            .ok()
            .filter(|n| n.fract() == 0.0 && n.abs() <= f64::from(i32::MAX) + 1.0)
            // Whole and within 32 bits (checked above and below), so nothing is cut off.
            .map(|n| n as i64)
    });
    whole
        .and_then(|n| i32::try_from(n).ok())
        .map(|n| n.to_string())
        .ok_or_else(|| {
            FieldError::new(
                name,
                "must be a string, a boolean or an integer from -2147483648 to 2147483647 \
                 (the types CloudEvents 1.0 gives an extension attribute)",
            )
        })
}

/// A binary-mode header's value, percent-decoded (HTTP binding 3.1.3.2, which the NATS binding
/// follows): a `%` must begin an escape of two hex digits, and the bytes must be UTF-8.
/// `attribute` names the error; `header` is the header as sent.
pub fn percent_decoded(attribute: &str, header: &str, value: &[u8]) -> Result<String, FieldError> {
    if let Some(escape) = invalid_escape(value) {
        return Err(FieldError::new(
            attribute,
            format!(
                "is not percent-encoded: the header `{header}` holds `{escape}`, and a `%` must \
                 be followed by two hex digits (`%25` for a `%` itself)"
            ),
        ));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
        .map(|v| v.into_owned())
        .ok_or_else(|| FieldError::new(attribute, "is not percent-encoded UTF-8"))
}

/// The first `%` escape in a header value that is not `%` and two hex digits, as sent (up to
/// three bytes); `percent_decode_str` would pass it through as it is.
fn invalid_escape(value: &[u8]) -> Option<String> {
    value.iter().enumerate().find_map(|(at, &byte)| {
        let digits = value.get(at + 1..at + 3);
        let valid = digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit));
        (byte == b'%' && !valid)
            .then(|| String::from_utf8_lossy(&value[at..value.len().min(at + 3)]).into_owned())
    })
}

/// The errors of a batch's events, named by their index (`[2].type`), and the one error a
/// batch can hold on its own: two events with the same `source` and `id`, which are one event
/// (CloudEvents 1.0: `source` + `id` identify an event), named `[i].id`.
pub fn into_raw_events(events: Vec<CloudEvent>) -> Result<Vec<RawEvent>, FieldError> {
    let mut first_of_key = std::collections::HashMap::new();
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let raw = event.into_raw_event().map_err(|e| e.at_index(index))?;
            if let Some(key) = &raw.idempotency_key
                && let Some(first) = first_of_key.insert(key.clone(), index)
            {
                return Err(FieldError::new(
                    attribute_of("idempotency_key"),
                    format!(
                        "is the id of event [{first}] from the same `source`: a batch must not \
                         hold one event twice"
                    ),
                )
                .at_index(index));
            }
            Ok(raw)
        })
        .collect()
}

/// Whether a binary-mode body of `content_type` is text: `text/*`, XML, or a type that names
/// its charset.
fn is_text_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let lower = content_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || essence.ends_with("/xml")
        || essence.ends_with("+xml")
        || lower.contains("charset=")
}

/// Whether a binary-mode body of `content_type` is JSON data (absent means JSON, as the
/// spec's JSON event format assumes).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The CloudEvents attribute an event field came from.
fn attribute_of(field: &str) -> String {
    let attribute = match field {
        "event_type" => "type",
        "entity_id" => "subject",
        "occurred_at" => "time",
        "user_identity" => "authid",
        "idempotency_key" => "id",
        "event_data" => "data",
        "." | "" => "cloudevent",
        other => other,
    };
    attribute.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_not_followed_by_two_hex_digits_is_an_invalid_escape() {
        assert_eq!(invalid_escape(b"bad%zz").as_deref(), Some("%zz"));
        assert_eq!(invalid_escape(b"end%4").as_deref(), Some("%4"));
        assert_eq!(invalid_escape(b"%").as_deref(), Some("%"));
        assert_eq!(invalid_escape(b"a%20b%2Fc%25"), None);
        assert_eq!(invalid_escape(b"plain"), None);
        assert_eq!(
            percent_decoded("id", "ce-id", b"a%20b%2Fc%25").unwrap(),
            "a b/c%"
        );
    }

    fn structured(json: &str) -> Result<RawEvent, FieldError> {
        CloudEvent::from_structured(json.as_bytes())?.into_raw_event()
    }

    #[test]
    fn the_attributes_map_onto_the_event() {
        let event = structured(
            r#"{"specversion":"1.0","id":"42","source":"/billing","type":"com.acme.billed",
                "subject":"acct-7","time":"2026-12-06T10:00:00Z","authid":"alice",
                "action":"update","entity":"account","datacontenttype":"application/json",
                "data":{"amount":12.50,"big":9007199254740991}}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(event.event_type, "com.acme.billed");
        assert_eq!(event.user_identity, "alice");
        assert_eq!(event.source.as_deref(), Some("/billing"));
        assert_eq!(event.idempotency_key.as_deref(), Some("ce:8:/billing:42"));
        assert_eq!(event.entity_id.as_deref(), Some("acct-7"));
        assert_eq!(event.entity.as_deref(), Some("account"));
        assert!(event.occurred_at.is_some());
        let data = event.event_data.map(|d| d.get().to_owned());
        assert_eq!(
            data.as_deref(),
            Some(r#"{"amount":12.50,"big":9007199254740991}"#),
            "the data's text as sent"
        );
    }

    #[test]
    fn other_data_is_wrapped_and_the_source_stands_in_for_a_missing_actor() {
        let event =
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":[1,2]}"#)
                .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(event.user_identity, "/s");
        assert_eq!(
            event.event_data.map(|d| d.get().to_owned()).as_deref(),
            Some(r#"{"data":[1,2]}"#)
        );
        let binary = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t",
                "datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            binary.event_data.map(|d| d.get().to_owned()).as_deref(),
            Some(r#"{"data_base64":"AAEC","datacontenttype":"application/octet-stream"}"#)
        );
    }

    #[test]
    fn what_cannot_be_recorded_is_refused_by_attribute() {
        for (json, field) in [
            (r#"{"id":"1","source":"/s","type":"t"}"#, "specversion"),
            (
                r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
                "specversion",
            ),
            (r#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id"),
            (
                r#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#,
                "source",
            ),
            (r#"{"specversion":"1.0","id":"1","source":"/s"}"#, "type"),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","traceparent":"x"}"#,
                "traceparent",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
                "time",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","action":"explode"}"#,
                "action",
            ),
            (
                r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
                "id",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
                "data_base64",
            ),
        ] {
            let error = structured(json).expect_err(json);
            assert_eq!(error.field, field, "{json}: {error:?}");
        }
    }

    #[test]
    fn a_batch_names_the_failing_event() {
        let batch = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},
                         {"specversion":"1.0","id":"2","source":"/s"}]"#;
        let events = CloudEvent::from_structured_batch(batch).unwrap_or_default();
        let errors: Vec<FieldError> = events
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.into_raw_event().err().map(|e| e.at_index(i)))
            .collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "[1].type");
    }

    #[test]
    fn a_context_attribute_must_be_a_json_string() {
        for attribute in STRING_ATTRIBUTES {
            for value in ["5", "1.0", "true", "null", "{}", "[]"] {
                let mut members = serde_json::Map::new();
                for (name, text) in [
                    ("specversion", "1.0"),
                    ("id", "1"),
                    ("source", "/s"),
                    ("type", "t"),
                ] {
                    members.insert(name.into(), text.into());
                }
                members.insert(attribute.into(), serde_json::from_str(value).unwrap());
                let json = serde_json::Value::Object(members).to_string();
                let error = structured(&json).expect_err(&json);
                assert_eq!(error.field, attribute, "{json}: {error:?}");
                assert!(error.message.contains("String"), "{json}: {error:?}");
            }
        }
    }

    #[test]
    fn an_extension_is_a_string_a_boolean_or_a_32_bit_integer() {
        let with_entity = |value: &str| {
            structured(&format!(
                r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","entity":{value}}}"#
            ))
        };
        for (value, recorded) in [
            (r#""invoice""#, "invoice"),
            ("true", "true"),
            ("7", "7"),
            ("-2147483648", "-2147483648"),
            ("2147483647", "2147483647"),
            // JSON has one number type: these are the whole numbers 7 and 1000.
            ("7.0", "7"),
            ("1e3", "1000"),
        ] {
            let event = with_entity(value).unwrap_or_else(|e| panic!("{value}: {e:?}"));
            assert_eq!(event.entity.as_deref(), Some(recorded), "{value}");
        }
        for value in [
            "1.5",
            "2147483648",
            "2147483648.0",
            "-2147483649",
            "null",
            "[1]",
            "{}",
        ] {
            let error = with_entity(value).expect_err(value);
            assert_eq!(error.field, "entity", "{value}: {error:?}");
        }
    }

    #[test]
    fn data_and_data_base64_are_mutually_exclusive() {
        let error = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AA==","data":1}"#,
        )
        .expect_err("both");
        assert_eq!(error.field, "data");
        assert!(error.message.contains("mutually exclusive"), "{error:?}");
        let twice = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data":2}"#,
        )
        .expect_err("twice");
        assert_eq!(
            (twice.field.as_str(), twice.message.as_str()),
            ("data", "appears twice")
        );
    }

    #[test]
    fn a_batch_holding_one_source_and_id_twice_names_the_id() {
        let batch = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},
                         {"specversion":"1.0","id":"1","source":"/other","type":"t"},
                         {"specversion":"1.0","id":"1","source":"/s","type":"t"}]"#;
        let events = CloudEvent::from_structured_batch(batch).unwrap();
        let error = into_raw_events(events).expect_err("one event twice");
        assert_eq!(error.field, "[2].id");
        assert!(error.message.contains("[0]"), "{error:?}");
        let events = CloudEvent::from_structured_batch(
            br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},
                 {"specversion":"1.0","id":"2","source":"/s"}]"#,
        )
        .unwrap();
        assert_eq!(
            into_raw_events(events).expect_err("no type").field,
            "[1].type"
        );
    }

    #[test]
    fn text_is_recorded_alike_in_structured_and_binary_mode() {
        let structured = CloudEvent::from_structured(
            br#"{"specversion":"1.0","id":"t1","source":"/s","type":"t",
                "datacontenttype":"text/plain","data":"hello"}"#,
        )
        .unwrap();
        let attributes: BTreeMap<String, String> = [
            ("specversion", "1.0"),
            ("id", "t1"),
            ("source", "/s"),
            ("type", "t"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let binary =
            CloudEvent::from_binary(attributes, Some("text/plain; charset=utf-8"), b"hello")
                .unwrap();
        let data = |event: &CloudEvent| event.event_data().unwrap().map(|d| d.get().to_owned());
        assert_eq!(data(&structured), Some(r#"{"data":"hello"}"#.to_owned()));
        assert_eq!(data(&binary), data(&structured));
    }
}

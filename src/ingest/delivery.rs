//! One broker message, whatever the broker, turned into the events it records: its body is the
//! event JSON of `POST /events` (an object or an array) or CloudEvents (structured, a batch, or
//! binary mode with the attributes in the message's headers), and every event without an
//! idempotency key of its own gets one from the message's id, so that a redelivered message is
//! a replay.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::model::cloudevent::{CloudEvent, percent_decoded};
use crate::model::idempotency::scoped_key;
use crate::model::json::{self, JsonError};
use crate::model::payload::Members;
use crate::model::{FieldError, RawEvent};

/// What a broker handed over.
#[derive(Debug, Default)]
pub struct Delivery<'a> {
    pub body: &'a [u8],
    /// The message's own id (JetStream's `Nats-Msg-Id`, AMQP's `message-id`), which the
    /// producer sets and keeps across its retries.
    pub message_id: Option<String>,
    /// An id the broker gives the message, stable across redeliveries (JetStream's stream
    /// sequence), for messages without one of their own.
    pub broker_id: Option<String>,
    /// Whose ids these are (`nats:<stream>`, `amqp:<queue>`): the keys derived from them are
    /// scoped by it, so that two streams' or queues' ids never meet.
    pub scope: String,
    /// CloudEvents binary mode: the attributes found in the message's headers.
    pub cloudevent_attributes: BTreeMap<String, String>,
    /// Whether the binding percent-encodes those headers' values (NATS does, as HTTP; AMQP's
    /// typed headers do not).
    pub attributes_percent_encoded: bool,
    pub content_type: Option<String>,
}

impl Delivery<'_> {
    /// The message's events, each with an idempotency key when the message has an id, or why
    /// it cannot be recorded (the reason its dead letter carries).
    pub fn events(&self) -> Result<Vec<RawEvent>, FieldError> {
        let mut events = if self.cloudevent_attributes.contains_key("specversion") {
            vec![self.binary_cloudevent()?]
        } else {
            self.body_events()?
        };
        let id = self.message_id.as_ref().or(self.broker_id.as_ref());
        if let Some(id) = id {
            let single = events.len() == 1;
            let (kind, scope) = self.scope.split_once(':').unwrap_or(("msg", &self.scope));
            for (index, event) in events.iter_mut().enumerate() {
                if event.idempotency_key.is_none() {
                    let id = if single {
                        id.clone()
                    } else {
                        format!("{id}#{index}")
                    };
                    event.idempotency_key = Some(scoped_key(kind, scope, &id));
                }
            }
        }
        Ok(events)
    }

    fn binary_cloudevent(&self) -> Result<RawEvent, FieldError> {
        let mut attributes = self.cloudevent_attributes.clone();
        if self.attributes_percent_encoded {
            for (name, value) in &mut attributes {
                *value = percent_decoded(name, &format!("ce-{name}"), value.as_bytes())?;
            }
        }
        CloudEvent::from_binary(attributes, self.content_type.as_deref(), self.body)?
            .into_raw_event()
    }

    /// The body: one event or an array of them, each the service's event JSON or a structured
    /// CloudEvent (told apart by its `specversion` member).
    fn body_events(&self) -> Result<Vec<RawEvent>, FieldError> {
        let body = std::str::from_utf8(self.body)
            .map_err(|e| FieldError::new("body", format!("is not UTF-8: {e}")))?;
        let first = body.trim_start().as_bytes().first();
        let items: Vec<&RawValue> = if first == Some(&b'[') {
            serde_json::from_str(body)
                .map_err(|e| FieldError::new("body", format!("is not a JSON array: {e}")))?
        } else {
            vec![
                serde_json::from_str(body)
                    .map_err(|e| FieldError::new("body", format!("is not JSON: {e}")))?,
            ]
        };
        let many = items.len() > 1 || first == Some(&b'[');
        // CloudEvents 1.0: `source` and `id` identify an event, so one message holding two
        // with both alike holds one event twice; said of the `id`, as the HTTP batch says it.
        let mut first_of_cloudevent = std::collections::HashMap::new();
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let event = one_event(item).and_then(|(event, cloudevent)| {
                    if let (true, Some(key)) = (cloudevent, &event.idempotency_key)
                        && let Some(first) = first_of_cloudevent.insert(key.clone(), index)
                    {
                        return Err(FieldError::new(
                            "id",
                            format!(
                                "is the id of event [{first}] from the same `source`: a message \
                                 must not hold one event twice"
                            ),
                        ));
                    }
                    Ok(event)
                });
                if many {
                    event.map_err(|e| e.at_index(index))
                } else {
                    event
                }
            })
            .collect()
    }
}

/// One item of the body, and whether it is a CloudEvent.
fn one_event(item: &RawValue) -> Result<(RawEvent, bool), FieldError> {
    let Members(members) = serde_json::from_str(item.get())
        .map_err(|_| FieldError::new("body", "each event must be a JSON object"))?;
    if members.iter().any(|(name, _)| name == "specversion") {
        let event = CloudEvent::from_structured(item.get().as_bytes())?.into_raw_event()?;
        return Ok((event, true));
    }
    json::parse(item.get().as_bytes())
        .map(|event| (event, false))
        .map_err(|error| match error {
            JsonError::Invalid(error) => error,
            JsonError::Malformed(message) => FieldError::new("body", message),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(delivery: &Delivery) -> Vec<Option<String>> {
        delivery
            .events()
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_iter()
            .map(|e| e.idempotency_key)
            .collect()
    }

    #[test]
    fn the_message_id_keys_each_event_unless_it_has_its_own() {
        let one = Delivery {
            body: br#"{"event_type":"t","user_identity":"u"}"#,
            message_id: Some("m-1".into()),
            broker_id: Some("7".into()),
            scope: "nats:AUDIT".into(),
            ..Delivery::default()
        };
        assert_eq!(keys(&one), [Some("nats:5:AUDIT:m-1".to_owned())]);
        let many = Delivery {
            body: br#"[{"event_type":"t","user_identity":"u"},
                       {"event_type":"t","user_identity":"u","idempotency_key":"own"}]"#,
            broker_id: Some("7".into()),
            scope: "nats:AUDIT".into(),
            ..Delivery::default()
        };
        assert_eq!(
            keys(&many),
            [Some("nats:5:AUDIT:7#0".to_owned()), Some("own".to_owned())]
        );
        let none = Delivery {
            body: br#"{"event_type":"t","user_identity":"u"}"#,
            ..Delivery::default()
        };
        assert_eq!(keys(&none), [None]);
    }

    #[test]
    fn cloudevents_come_structured_or_in_headers() {
        let structured = Delivery {
            body: br#"{"specversion":"1.0","id":"9","source":"/s","type":"t","data":{"a":1}}"#,
            message_id: Some("m".into()),
            ..Delivery::default()
        };
        assert_eq!(keys(&structured), [Some("ce:2:/s:9".to_owned())]);
        let binary = Delivery {
            body: br#"{"a":1}"#,
            cloudevent_attributes: [
                ("specversion", "1.0"),
                ("id", "9"),
                ("source", "/s"),
                ("type", "t"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            content_type: Some("application/json".into()),
            ..Delivery::default()
        };
        let events = binary.events().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(events[0].event_type, "t");
        assert_eq!(
            events[0].event_data.as_ref().map(|d| d.get()),
            Some(r#"{"a":1}"#)
        );
    }

    #[test]
    fn percent_encoded_headers_are_decoded_and_a_bad_escape_is_named() {
        let binary = |id: &str| Delivery {
            body: br#"{"a":1}"#,
            cloudevent_attributes: [
                ("specversion", "1.0"),
                ("id", id),
                ("source", "/s%2Fa"),
                ("type", "t"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            attributes_percent_encoded: true,
            content_type: Some("application/json".into()),
            ..Delivery::default()
        };
        assert_eq!(keys(&binary("9%20a")), [Some("ce:4:/s/a:9 a".to_owned())]);
        let error = binary("9%zz").events().unwrap_err();
        assert_eq!(error.field, "id");
        assert!(error.message.contains("`%zz`"), "{error:?}");
    }

    #[test]
    fn one_cloudevent_twice_in_a_message_is_named_by_its_id() {
        let error = Delivery {
            body: br#"[{"specversion":"1.0","id":"9","source":"/s","type":"t"},
                       {"specversion":"1.0","id":"9","source":"/s","type":"u"}]"#,
            ..Delivery::default()
        }
        .events()
        .unwrap_err();
        assert_eq!(error.field, "[1].id");
        assert!(error.message.contains("event [0]"), "{error:?}");
    }

    #[test]
    fn what_cannot_be_read_says_where() {
        for (body, field) in [
            (&b"not json"[..], "body"),
            (br#"{"user_identity":"u"}"#, "event_type"),
            (
                br#"[{"event_type":"t","user_identity":"u"},{"event_type":"t"}]"#,
                "[1].user_identity",
            ),
            (br#"[1]"#, "[0].body"),
        ] {
            let error = Delivery {
                body,
                ..Delivery::default()
            }
            .events()
            .expect_err("refused");
            assert_eq!(error.field, field, "{}", String::from_utf8_lossy(body));
        }
    }
}

//! The context a host application gives its transaction's changes: `pg_logical_emit_message`
//! with the `auditor` prefix and a JSON object (`user_identity`, `ip`, and other fields).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::storable;

/// What a transaction's context messages gave, as of some change: who and from where, the
/// other fields the log takes, and why any were refused.
#[derive(Debug, Clone, Default)]
pub(super) struct Context {
    pub(super) user_identity: Option<String>,
    pub(super) ip: Option<std::net::IpAddr>,
    /// The other fields, recorded as `event_data.context`.
    pub(super) fields: Map<String, Value>,
    /// Each refusal, naming its message (1 for the transaction's first) and field.
    pub(super) refused: Vec<String>,
    messages: usize,
    /// The message (numbered as in `refused`) that gave `user_identity`, `ip`, and the latest
    /// of `fields`: a refusal of the whole event names it too.
    pub(super) user_from: usize,
    pub(super) ip_from: usize,
    pub(super) fields_from: usize,
}

impl Context {
    /// This context with the next message applied. Its fields override the earlier ones; a
    /// field it gives that the log refuses clears the earlier value too (the message meant to
    /// replace it), so a refused `user_identity` falls back to the role, never to an earlier
    /// message's user. Each member is read under `event_data`'s contract (exact numbers, no
    /// U+0000, bounded depth); a key given twice is refused, since which was meant is unknown.
    pub(super) fn with_message(&self, content: &[u8]) -> Self {
        let mut next = self.clone();
        next.messages += 1;
        let mut refusals = Vec::new();
        let members = match serde_json::from_slice::<Members>(content) {
            Ok(Members(members)) => members,
            Err(error) => {
                refusals.push(if error.is_data() {
                    "not a JSON object".to_owned()
                } else {
                    format!("not JSON ({error})")
                });
                Vec::new()
            }
        };
        let mut refuse = |what: String| refusals.push(what);
        let mut seen = HashMap::new();
        for (name, _) in &members {
            *seen.entry(name.clone()).or_insert(0usize) += 1;
        }
        let mut accepted: Vec<(String, Result<Value, String>)> = Vec::new();
        for (name, raw) in members {
            let path = format!("context.{name}");
            let value = if seen[&name] > 1 {
                if accepted.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                Err(format!("{path}: given more than once"))
            } else if name.contains('\0') {
                Err("context: a key holds U+0000".to_owned())
            } else {
                crate::model::payload::parse_member(&raw, &path).map_err(|error| error.to_string())
            };
            accepted.push((name, value));
        }
        for (name, value) in accepted {
            match (name.as_str(), value) {
                ("user_identity", Ok(Value::String(user))) if !user.trim().is_empty() => {
                    next.user_identity = Some(user);
                    next.user_from = next.messages;
                }
                ("user_identity", Ok(Value::Null)) => next.user_identity = None,
                ("user_identity", Ok(other)) => {
                    next.user_identity = None;
                    refuse(format!("context.user_identity: {other} is not a name"));
                }
                ("ip", Ok(Value::Null)) => next.ip = None,
                ("ip", Ok(value)) => {
                    next.ip = value.as_str().and_then(|ip| ip.parse().ok());
                    next.ip_from = next.messages;
                    if next.ip.is_none() {
                        refuse(format!("context.ip: {value} is not an address"));
                    }
                }
                ("user_identity", Err(why)) => {
                    next.user_identity = None;
                    refuse(why);
                }
                ("ip", Err(why)) => {
                    next.ip = None;
                    refuse(why);
                }
                (_, Ok(value)) => {
                    next.fields.insert(name, value);
                    next.fields_from = next.messages;
                }
                (_, Err(why)) => {
                    next.fields.remove(&name);
                    refuse(why);
                }
            }
        }
        let message = next.messages;
        next.refused.extend(
            refusals
                .into_iter()
                .map(|why| storable(format!("message {message}: {why}"))),
        );
        next
    }
}

/// A JSON object's members in their order, repeated keys kept (a map would keep one).
struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

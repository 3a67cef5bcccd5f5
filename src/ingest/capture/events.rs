//! Turning a transaction's changes into events: entity, key, action, changed columns, the old
//! and new rows as the column lists allow, who made them, and column values as JSON.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value};

use super::decode::{Change, ChangeKind, Transaction};
use super::gaps::gap_event;
use super::settings::PostgresCapture;
use super::{storable, unrecordable};
use crate::ingest::pgoutput::{Datum, Relation, format_lsn};
use crate::log::AuditLog;
use crate::model::payload::MAX_EXACT_INTEGER;
use crate::model::{NewEvent, RawEvent};
use crate::store::Store;

/// What is known of the host's tables beyond the slot's descriptions: the primary keys of those
/// whose replica identity is the whole row (with the description they were read for).
pub(super) struct Tables<'a> {
    pub(super) full_row_keys: &'a HashMap<u32, (Arc<Relation>, Vec<String>)>,
}

impl Tables<'_> {
    /// Whether `column` of `relation` is part of the key that names its rows.
    pub(super) fn names_rows(
        &self,
        relation: &Relation,
        column: &crate::ingest::pgoutput::Column,
    ) -> bool {
        if relation.replica_identity != b'f' {
            return column.key;
        }
        self.full_row_keys
            .get(&relation.id)
            .is_some_and(|(_, keys)| keys.contains(&column.name))
    }
}

/// The events of one transaction's changes to the captured tables.
pub(super) fn events_of<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    tables: &Tables<'_>,
    transaction: &Transaction,
) -> Vec<NewEvent> {
    let mut events = Vec::new();
    for (index, narrowed) in transaction.publication_narrowed.iter().enumerate() {
        let key = format!(
            "{}:gap:publication:{}:{index}",
            settings.name,
            format_lsn(transaction.commit_lsn)
        );
        match gap_event(
            log,
            settings,
            ("publication", Some(&settings.publication)),
            narrowed,
            key,
            Some(transaction.committed_at),
        ) {
            Ok(event) => {
                tracing::error!(
                    capture = %settings.name, change = %narrowed,
                    "the publication was narrowed: changes were left out; recorded as a capture.gap"
                );
                events.push(event);
            }
            Err(error) => tracing::error!(%error, "a publication gap cannot be recorded"),
        }
    }
    for (index, added) in transaction.tables_added.iter().enumerate() {
        let table = added["table"].as_str().unwrap_or_default();
        let key = format!(
            "{}:gap:table-added:{}:{index}",
            settings.name,
            format_lsn(transaction.commit_lsn)
        );
        match gap_event(
            log,
            settings,
            (table, None),
            added,
            key,
            Some(transaction.committed_at),
        ) {
            Ok(event) => {
                tracing::warn!(
                    capture = %settings.name, %table, role = %added["role"],
                    "a table was put in the publication by hand: its changes before were not \
                     captured; recorded as a capture.gap"
                );
                events.push(event);
            }
            Err(error) => tracing::error!(%error, "a table's gap cannot be recorded"),
        }
    }
    for (index, change) in transaction.changes.iter().enumerate() {
        let relation = &change.relation;
        if !settings.captures(&relation.schema, &relation.table) {
            continue;
        }
        let context = &change.context.fields;
        let context_user = change.context.user_identity.clone();
        let ip = change.context.ip;
        let row = |datums: &Option<Vec<Datum>>| {
            datums.as_ref().map(|datums| {
                let mut row = Map::new();
                for (column, datum) in relation.columns.iter().zip(datums) {
                    if !settings.copies(&relation.schema, &relation.table, &column.name)
                        || *datum == Datum::Unchanged
                    {
                        continue;
                    }
                    row.insert(column.name.clone(), value_of(column.type_oid, datum));
                }
                row
            })
        };
        let (old, new) = (row(&change.old), row(&change.new));
        // The key names the row, also when `allow_columns` leaves it out of the data; a denied
        // column's value never leaves, even as a key.
        let key_source = change.new.as_ref().or(change.old.as_ref());
        let keys: Vec<String> = relation
            .columns
            .iter()
            .zip(key_source.into_iter().flatten())
            .filter(|(column, _)| tables.names_rows(relation, column))
            .filter(|(column, _)| !settings.denies(&relation.schema, &relation.table, &column.name))
            .filter_map(|(_, datum)| match datum {
                Datum::Text(text) => Some(text.clone()),
                _ => None,
            })
            .collect();
        let entity_id = match keys.len() {
            0 => None,
            1 => keys.into_iter().next(),
            _ => Some(Value::from(keys).to_string()),
        };
        // Only the columns the event may show: that a hidden column changed, and when, is
        // itself what the deny list keeps back.
        let property = changed_columns(relation, change, |column| {
            settings.copies(&relation.schema, &relation.table, column)
        });
        let (action, kind) = match change.kind {
            ChangeKind::Insert => ("create", "create"),
            ChangeKind::Update => ("update", "update"),
            ChangeKind::Delete => ("delete", "delete"),
            ChangeKind::Truncate => ("delete", "truncate"),
        };
        let mut data = Map::new();
        if let ChangeKind::Truncate = change.kind {
            data.insert("truncate".into(), Value::Bool(true));
        }
        data.insert("old".into(), old.map_or(Value::Null, Value::Object));
        data.insert("new".into(), new.map_or(Value::Null, Value::Object));
        if let Some(role) = &change.role {
            data.insert("role".into(), Value::from(role.as_str()));
        }
        // Who: the application's word for it, else the database role, else the database.
        let user_identity = context_user
            .clone()
            .or_else(|| change.role.clone())
            .unwrap_or_else(|| settings.name.clone());
        if !change.context.refused.is_empty() {
            data.insert(
                "context_refused".into(),
                Value::from(change.context.refused.join("; ")),
            );
        }
        let plain_data = data.clone();
        if !context.is_empty() {
            data.insert("context".into(), Value::Object(context.clone()));
        }
        let raw = RawEvent {
            event_type: format!("{}.{}.{kind}", relation.schema, relation.table),
            user_identity,
            action: crate::model::Action::parse(action),
            entity: Some(format!("{}.{}", relation.schema, relation.table)),
            entity_id,
            property: (!property.is_empty()).then_some(property),
            source: Some(settings.name.clone()),
            ip,
            outcome: None,
            occurred_at: Some(transaction.committed_at),
            event_data: serde_json::value::to_raw_value(&Value::Object(data)).ok(),
            idempotency_key: Some(format!(
                "{}:{}:{index}",
                settings.name,
                format_lsn(transaction.commit_lsn)
            )),
        };
        let parsed = log.parse(raw.clone()).or_else(|error| {
            // The application's context may be what the log refuses (a name too long, a
            // number no double holds): the change is then recorded with as much of it as the
            // log takes (its other fields first, then the ip, then the user given up), the
            // refusal said in `context_refused`, rather than lost.
            let by_role = change.role.clone().unwrap_or_else(|| settings.name.clone());
            let kept = |given: bool| {
                if given {
                    &[true, false][..]
                } else {
                    &[false][..]
                }
            };
            let mut variants = Vec::new();
            for &user in kept(context_user.is_some()) {
                for &address in kept(ip.is_some()) {
                    for &fields in kept(!context.is_empty()) {
                        variants.push((user, address, fields));
                    }
                }
            }
            // The first keeps everything: the event just refused.
            for (user, address, fields) in variants.into_iter().skip(1) {
                let mut data = plain_data.clone();
                if fields {
                    data.insert("context".into(), Value::Object(context.clone()));
                }
                // The message that gave what this attempt gives up.
                let given = &change.context;
                let message = if !user && context_user.is_some() {
                    given.user_from
                } else if !address && ip.is_some() {
                    given.ip_from
                } else {
                    given.fields_from
                };
                let refused = given
                    .refused
                    .iter()
                    .cloned()
                    .chain([storable(format!("message {message}: {error}"))])
                    .collect::<Vec<_>>();
                data.insert("context_refused".into(), Value::from(refused.join("; ")));
                let attempt = log.parse(RawEvent {
                    user_identity: if user {
                        raw.user_identity.clone()
                    } else {
                        by_role.clone()
                    },
                    ip: if address { ip } else { None },
                    event_data: serde_json::value::to_raw_value(&Value::Object(data)).ok(),
                    ..raw.clone()
                });
                if attempt.is_ok() {
                    tracing::warn!(
                        capture = %settings.name, %error,
                        "a change's context is refused by the log; recorded with what it takes"
                    );
                    return attempt;
                }
            }
            Err(error)
        });
        match parsed {
            Ok(event) => events.push(event),
            Err(error) => {
                // Nothing of the row or the context: only what names the change, which the log
                // always takes, so that the change is never dropped without a trace.
                tracing::warn!(
                    capture = %settings.name, %error,
                    "a captured change cannot be recorded; recording why (capture.unrecordable)"
                );
                let placeholder = RawEvent {
                    user_identity: format!("capture:{}", settings.name),
                    ip: None,
                    entity_id: None,
                    property: None,
                    event_data: None,
                    ..raw
                };
                match log
                    .parse(placeholder)
                    .ok()
                    .and_then(|e| unrecordable(&e, &error).ok())
                {
                    Some(event) => events.push(event),
                    None => tracing::error!(%error, "a captured change cannot be recorded at all"),
                }
            }
        }
    }
    events
}

/// The columns a change touched: those whose value differs from the old row's when the old row
/// was sent (`REPLICA IDENTITY FULL`), else every column sent.
pub(super) fn changed_columns(
    relation: &Relation,
    change: &Change,
    shown: impl Fn(&str) -> bool,
) -> String {
    let names = relation.columns.iter().enumerate().filter(|(i, column)| {
        if !shown(&column.name) {
            return false;
        }
        let new = change.new.as_ref().and_then(|row| row.get(*i));
        let old = change.old.as_ref().and_then(|row| row.get(*i));
        match (change.kind, old, new) {
            (ChangeKind::Update, Some(old), Some(new)) => old != new && *new != Datum::Unchanged,
            (_, _, Some(new)) => *new != Datum::Unchanged,
            (_, Some(old), None) => !matches!(old, Datum::Null | Datum::Unchanged),
            _ => false,
        }
    });
    names
        .map(|(_, column)| column.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A column's value as JSON: booleans and numbers a double holds exactly as themselves; numbers
/// it cannot hold (`numeric`, `bigint` beyond 2^53) and everything else as their text; `bytea`
/// as base64; `json` and `jsonb` as the JSON they hold when every number in it is exact (as
/// `event_data` takes numbers), else as their text.
pub(super) fn value_of(type_oid: u32, datum: &Datum) -> Value {
    const BOOL: u32 = 16;
    const BYTEA: u32 = 17;
    const JSON: u32 = 114;
    const JSONB: u32 = 3802;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    let Datum::Text(text) = datum else {
        return Value::Null;
    };
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 => match text.parse::<i64>() {
            Ok(n) if n.abs() <= MAX_EXACT_INTEGER => Value::from(n),
            _ => Value::from(text.as_str()),
        },
        FLOAT4 | FLOAT8 => crate::model::payload::exact_number(text)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::from(text.as_str())),
        JSON | JSONB => serde_json::from_str::<Box<serde_json::value::RawValue>>(text)
            .ok()
            .and_then(|raw| crate::model::payload::parse_member(&raw, "column").ok())
            .unwrap_or_else(|| Value::from(text.as_str())),
        BYTEA => match text
            .strip_prefix("\\x")
            .and_then(|hex_digits| hex::decode(hex_digits).ok())
        {
            Some(bytes) => Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => Value::from(text.as_str()),
        },
        _ => Value::from(text.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn json_columns_are_json_when_their_numbers_are_exact() {
        let text = |t: &str| Datum::Text(t.to_owned());
        assert_eq!(
            value_of(3802, &text(r#"{"f": 1.5, "tags": ["a"]}"#)),
            serde_json::json!({"f": 1.5, "tags": ["a"]})
        );
        assert_eq!(
            value_of(3802, &text(r#"{"big": 12345678901234567890}"#)),
            Value::from(r#"{"big": 12345678901234567890}"#),
            "a number a double cannot hold keeps the column as text"
        );
        assert_eq!(value_of(1700, &text("12.50")), Value::from("12.50"));
        assert_eq!(
            value_of(20, &text("9007199254740993")),
            Value::from("9007199254740993")
        );
        assert_eq!(value_of(17, &text("\\x0102")), Value::from("AQI="));
    }
}

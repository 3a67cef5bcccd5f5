//! Reading the slot: its `pgoutput` messages, peeked without being consumed, gathered into
//! whole committed transactions with each change's role and context.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use super::context::Context;
use super::publication::{publication_narrowed, publication_widened};
use super::settings::PostgresCapture;
use super::triggers::MessageKey;
use super::{CONTEXT_PREFIX, PUBLICATION_PREFIX, ROLE_PREFIX};
use crate::ingest::Misconfigured;
use crate::ingest::pgoutput::{Datum, Lsn, Message, OldRow, Relation, format_lsn};

/// One committed transaction's changes, as read from the slot.
pub(super) struct Transaction {
    pub(super) xid: u32,
    pub(super) commit_lsn: Lsn,
    pub(super) end_lsn: Lsn,
    pub(super) committed_at: OffsetDateTime,
    pub(super) changes: Vec<Change>,
    /// The context messages so far, merged: each change takes the context as it stood when
    /// the change was made, so a message applies to the changes after it only.
    pub(super) context: Arc<Context>,
    /// What this transaction did to the publication that leaves changes out (from the
    /// `PUBLICATION_PREFIX` messages of [`ensure_publication_trace`]).
    pub(super) publication_narrowed: Vec<Value>,
    /// The captured tables this transaction put in the publication by hand, as gaps' data
    /// (from the same messages).
    pub(super) tables_added: Vec<Value>,
    /// The publication as the `ALTER PUBLICATION` being run found it.
    pub(super) publication_before: Option<Value>,
}

pub(super) struct Change {
    /// The table as the slot described it when the change was decoded (a later description
    /// in the same read may differ: a key changed since).
    pub(super) relation: Arc<Relation>,
    pub(super) kind: ChangeKind,
    pub(super) old: Option<Vec<Datum>>,
    pub(super) new: Option<Vec<Datum>>,
    /// The database role whose statement made it, from the statement's role message.
    pub(super) role: Option<String>,
    /// The transaction's context as it stood when the change was made.
    pub(super) context: Arc<Context>,
}

#[derive(Clone, Copy)]
pub(super) enum ChangeKind {
    Insert,
    Update,
    Delete,
    /// `TRUNCATE`: every row of the table, none of them named.
    Truncate,
}

/// The next committed transactions in the slot, whole, without consuming them.
///
/// Only transactions that committed before the host's WAL flush position read first are
/// decoded, and that position is returned: when nothing came back, none of the captured tables changed
/// before it.
pub(super) async fn peek(
    pool: &PgPool,
    settings: &PostgresCapture,
    relations: &mut HashMap<u32, Arc<Relation>>,
    key: Option<&MessageKey>,
) -> anyhow::Result<(Vec<Transaction>, Lsn)> {
    // The flush position, not the write position: decoding reads only flushed WAL, and a
    // commit written but not yet flushed (`synchronous_commit = off`) must not be passed by
    // the advance of a peek that could not see it.
    let upto: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(pool)
            .await?;
    let upto = Lsn::try_from(upto)?;
    let rows = sqlx::query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, $3, \
         'proto_version', '1', 'publication_names', $4, 'messages', 'true')",
    )
    .bind(&settings.slot)
    .bind(format_lsn(upto))
    .bind(i32::try_from(settings.batch_changes).unwrap_or(i32::MAX))
    .bind(&settings.publication)
    .fetch_all(pool)
    .await
    .map_err(|error| publication_missing(settings, error))?;
    let mut transactions = Vec::new();
    let mut open: Option<Transaction> = None;
    for row in rows {
        let data: Vec<u8> = row.try_get("data")?;
        match Message::parse(&data)? {
            Message::Begin {
                committed_at, xid, ..
            } => {
                open = Some(Transaction {
                    xid,
                    commit_lsn: 0,
                    end_lsn: 0,
                    committed_at,
                    changes: Vec::new(),
                    context: Arc::default(),
                    publication_narrowed: Vec::new(),
                    tables_added: Vec::new(),
                    publication_before: None,
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                committed_at,
            } => {
                if let Some(mut transaction) = open.take() {
                    transaction.commit_lsn = commit_lsn;
                    transaction.end_lsn = end_lsn;
                    transaction.committed_at = committed_at;
                    transactions.push(transaction);
                }
            }
            Message::Relation(relation) => {
                relations.insert(relation.id, Arc::new(relation));
            }
            Message::Insert { relation, new } => push(
                &mut open,
                relations,
                relation,
                ChangeKind::Insert,
                None,
                Some(new),
            ),
            Message::Update { relation, old, new } => {
                let old = old.map(|old| known_values(relations, relation, old));
                push(
                    &mut open,
                    relations,
                    relation,
                    ChangeKind::Update,
                    old,
                    Some(new),
                );
            }
            Message::Delete { relation, old } => {
                let old = known_values(relations, relation, old);
                push(
                    &mut open,
                    relations,
                    relation,
                    ChangeKind::Delete,
                    Some(old),
                    None,
                );
            }
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == CONTEXT_PREFIX => {
                let Some(transaction) = open.as_mut() else {
                    continue;
                };
                let context = transaction.context.with_message(&content);
                let refused = &context.refused[transaction.context.refused.len()..];
                if !refused.is_empty() {
                    tracing::warn!(
                        capture = %settings.name, refused = %refused.join("; "),
                        "a context message is refused in part; the changes after it keep what \
                         the log takes of it, and say what was refused (event_data.context_refused)"
                    );
                }
                transaction.context = Arc::new(context);
            }
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == PUBLICATION_PREFIX => {
                let Some(transaction) = open.as_mut() else {
                    continue;
                };
                let Some(body) = signed(key, settings, &prefix, transaction, &content) else {
                    continue;
                };
                let Ok(state) = serde_json::from_slice::<Value>(body) else {
                    continue;
                };
                if state["publication"] != settings.publication.as_str() {
                    continue;
                }
                if state["event"] == "ddl_command_start" {
                    transaction.publication_before = Some(state);
                    continue;
                }
                let before = transaction.publication_before.take();
                if let Some(narrowed) = publication_narrowed(settings, before.as_ref(), &state) {
                    transaction.publication_narrowed.push(narrowed);
                }
                if let Some(key) = key {
                    transaction.tables_added.extend(publication_widened(
                        settings,
                        before.as_ref(),
                        &state,
                        &key.capture_role,
                    ));
                }
            }
            Message::Logical {
                transactional: false,
                prefix,
                ..
            } if prefix == CONTEXT_PREFIX => {
                tracing::warn!(
                    capture = %settings.name,
                    "a context message was sent outside the transaction \
                     (pg_logical_emit_message(false, …)): it applies to no change; send it \
                     with true, before the changes it describes"
                );
            }
            // Sent after each statement on a captured table (`ROLE_PREFIX`): its role made the
            // changes before it that have none yet.
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == ROLE_PREFIX => {
                let Some(transaction) = open.as_mut() else {
                    continue;
                };
                let Some(body) = signed(key, settings, &prefix, transaction, &content) else {
                    continue;
                };
                if let Ok(role) = std::str::from_utf8(body) {
                    for change in transaction.changes.iter_mut().rev() {
                        if change.role.is_some() {
                            break;
                        }
                        change.role = Some(role.to_owned());
                    }
                }
            }
            Message::Truncate {
                relations: truncated,
            } => {
                for relation in truncated {
                    push(
                        &mut open,
                        relations,
                        relation,
                        ChangeKind::Truncate,
                        None,
                        None,
                    );
                }
            }
            Message::Logical { .. } | Message::Other(_) => {}
        }
    }
    Ok((transactions, upto))
}

/// The body of a message that claims to come from the capture's triggers, if it does (see
/// [`MessageKey`]); one that does not is warned of and passed over: any role that writes a
/// captured table can send messages of every prefix.
fn signed<'a>(
    key: Option<&MessageKey>,
    settings: &PostgresCapture,
    prefix: &str,
    transaction: &Transaction,
    content: &'a [u8],
) -> Option<&'a [u8]> {
    let body = key.and_then(|key| key.verify(prefix, transaction.xid, content));
    if body.is_none() {
        tracing::warn!(
            capture = %settings.name, prefix, xid = transaction.xid,
            "a message in the prefix of the capture's triggers was not sent by them (its \
             signature does not verify): passed over; someone may be passing their changes off \
             as another role's, or faking a change to the publication"
        );
    }
    body
}

/// The peek's failure; `Misconfigured` when the slot holds changes made while the publication
/// was missing (dropped, or renamed): the slot cannot be read past them, whatever is retried.
fn publication_missing(settings: &PostgresCapture, error: sqlx::Error) -> anyhow::Error {
    let missing = error.as_database_error().is_some_and(|e| {
        e.code().as_deref() == Some("42704") && e.message().contains("publication")
    });
    if !missing {
        return error.into();
    }
    Misconfigured(format!(
        "the replication slot `{slot}` holds changes made while the publication `{publication}` \
         did not exist (dropped, or renamed, since the capture last read it): the slot cannot \
         be read past them. Drop the slot (`SELECT pg_drop_replication_slot('{slot}')`): the capture \
         then makes a new one and records the changes in between as a capture.gap",
        slot = settings.slot,
        publication = settings.publication,
    ))
    .into()
}

/// An old row's values as far as they were sent: of a key-only row, the columns outside the
/// replica identity are unknown (`Unchanged`, left out of the event), not null.
pub(super) fn known_values(
    relations: &HashMap<u32, Arc<Relation>>,
    relation: u32,
    old: OldRow,
) -> Vec<Datum> {
    if !old.key_only {
        return old.datums;
    }
    let columns = relations.get(&relation).map(|r| r.columns.as_slice());
    old.datums
        .into_iter()
        .enumerate()
        .map(|(i, datum)| match columns.and_then(|c| c.get(i)) {
            Some(column) if column.key => datum,
            _ => Datum::Unchanged,
        })
        .collect()
}

pub(super) fn push(
    open: &mut Option<Transaction>,
    relations: &HashMap<u32, Arc<Relation>>,
    relation: u32,
    kind: ChangeKind,
    old: Option<Vec<Datum>>,
    new: Option<Vec<Datum>>,
) {
    let Some(relation) = relations.get(&relation).cloned() else {
        // pgoutput describes each table before its first change in a session.
        tracing::warn!(relation, "a change to a table never described");
        return;
    };
    if let Some(transaction) = open {
        transaction.changes.push(Change {
            relation,
            kind,
            old,
            new,
            role: None,
            context: Arc::clone(&transaction.context),
        });
    }
}

/// The primary key's columns of the table `relation` (its OID), in key order; none for a table
/// without one. Only for a `REPLICA IDENTITY FULL` table, whose `Relation` message marks every
/// column as the key: of any other, the message's own key flags name the row as it was when
/// the change was made, which the catalog read now may no longer say.
pub(super) async fn primary_key(pool: &PgPool, relation: u32) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "WITH identity AS ( \
           SELECT i.* FROM pg_index i WHERE i.indrelid = $1::oid AND i.indisprimary) \
         SELECT a.attname::text FROM identity i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         ORDER BY k.n",
    )
    .bind(i64::from(relation))
    .fetch_all(pool)
    .await?)
}

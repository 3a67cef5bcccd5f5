//! Exporting a tenant's events as a stream of bytes, a page at a time, so that memory stays
//! constant whatever the log's length: NDJSON (the form `auditor verify --export` checks) or
//! CSV (the form a spreadsheet opens).

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{Map, Value, json};

use super::access_log::{Access, query_details};
use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::integrity::export::preamble;
use crate::model::FIELDS;
use crate::model::fields::Flag;
use crate::model::{Event, EventQuery, Seq, TenantId};
use crate::store::{Pages, Store, StoreError};

/// How an export writes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line. Without filters, the lines `auditor export` writes for the
    /// tenant (checkpoints, chain head, then every event with every hashed field), which
    /// `auditor verify --export` checks with no database; with filters, the matching events
    /// alone, each with its hashed fields.
    Ndjson,
    /// RFC 4180 CSV (CRLF line ends) with a header row ([`CSV_COLUMNS`]); objects as compact JSON, absent
    /// values empty, and every cell that a spreadsheet would take for a formula neutralised.
    Csv,
}

impl ExportFormat {
    /// `ndjson` or `csv`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ndjson" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    /// The media type of the body.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

/// Events per page read (at most `EventQuery::MAX_LIMIT`, a query's page): two pages (the one being sent and the next, fetched meanwhile) and
/// one rendered chunk are what an export holds, a few MiB, whatever the log's length.
const PAGE: u32 = 1_000;

/// The CSV columns, in declared order: what a person reading the log needs (the fields a
/// client sends, and where, when, by whom and in which chain position the event was recorded),
/// without the verification material that only the NDJSON form carries.
pub fn csv_columns() -> impl Iterator<Item = &'static str> {
    const RECORDED: [&str; 8] = [
        "id",
        "seq",
        "tenant",
        "recorded_at",
        "recorded_by",
        "redacted_at",
        "amends",
        "hash",
    ];
    FIELDS
        .iter()
        .filter(|field| field.flags.contains(&Flag::Client) || RECORDED.contains(&field.name))
        .map(|field| field.name)
}

/// An export under way: the tenant, the last `seq` it covers, and its matches still to read.
pub struct Export<S: Store> {
    /// The tenant exported.
    pub tenant: TenantId,
    format: ExportFormat,
    /// The first chunk: the preamble or the CSV header.
    head: Bytes,
    source: Source<S>,
}

enum Source<S: Store> {
    /// Every event up to the head: a scan by `seq`.
    All(Pages<S>),
    /// The events a query matches, up to `until`.
    Matching {
        store: S,
        tenant: TenantId,
        query: EventQuery,
        until: Seq,
    },
    Done,
}

impl<S: Store> AuditLog<S> {
    /// Every event of the caller's tenant that `query` matches (its filters, `since` and
    /// `until`, after its cursor), in `seq` order, up to the chain head as it is now; events
    /// appended meanwhile are left to the next export. The read is recorded in the system log
    /// first. `query.limit` and `query.order` are ignored: an export is every match, ascending.
    pub async fn export(
        &self,
        principal: &Principal,
        mut query: EventQuery,
        format: ExportFormat,
    ) -> Result<Export<S>, LogError> {
        let tenant = Self::tenant_of(principal);
        let (lines, head) = preamble(&self.store, &tenant).await?;
        let until = head.unwrap_or(Seq(0));
        let mut details = query_details(&query, 0);
        details.remove("returned");
        details.remove("limit");
        details.remove("order");
        details.insert("format".into(), json!(format.extension()));
        details.insert("through_seq".into(), json!(until.0));
        self.record_access(principal, Access::read("export", details))
            .await?;

        let whole = query.filters.is_empty()
            && query.since.is_none()
            && query.until.is_none()
            && query.after.is_none();
        let head = match format {
            ExportFormat::Ndjson if whole => ndjson_lines(&lines),
            ExportFormat::Ndjson => Bytes::new(),
            ExportFormat::Csv => csv_header(),
        };
        query.limit = PAGE;
        query.order = crate::model::Order::Asc;
        let source = if until == Seq(0) {
            Source::Done
        } else if whole {
            Source::All(Pages::of_size(
                self.store.clone(),
                tenant.clone(),
                Some(until),
                PAGE,
            ))
        } else {
            Source::Matching {
                store: self.store.clone(),
                tenant: tenant.clone(),
                query,
                until,
            }
        };
        Ok(Export {
            tenant,
            format,
            head,
            source,
        })
    }
}

impl<S: Store> Export<S> {
    /// The export's bytes, a page of events per chunk. A store error ends the stream with
    /// that error after the complete events before it, so a transfer cut short is never taken
    /// for a whole export.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let Self {
            format,
            head,
            source,
            ..
        } = self;
        let first = stream::iter((!head.is_empty()).then_some(Ok(head)));
        let rest = stream::try_unfold(source, move |source| async move {
            let (events, next) = next_page(source).await?;
            Ok::<_, StoreError>(events.map(|events| (render(format, &events), next)))
        });
        first.chain(rest)
    }
}

/// The next page of events and what remains; `None` when none remain.
async fn next_page<S: Store>(
    source: Source<S>,
) -> Result<(Option<Vec<Event>>, Source<S>), StoreError> {
    match source {
        Source::Done => Ok((None, Source::Done)),
        Source::All(mut pages) => match pages.next().await? {
            Some(page) => Ok((Some(page), Source::All(pages))),
            None => Ok((None, Source::Done)),
        },
        Source::Matching {
            store,
            tenant,
            mut query,
            until,
        } => {
            let mut events = store.query(&tenant, &query).await?;
            let more = events.len() > PAGE as usize;
            events.truncate(PAGE as usize);
            events.retain(|event| event.seq <= until);
            let Some(last) = events.last().map(|event| event.seq) else {
                return Ok((None, Source::Done));
            };
            let next = if more && last < until {
                query.after = Some(last);
                Source::Matching {
                    store,
                    tenant,
                    query,
                    until,
                }
            } else {
                Source::Done
            };
            Ok((Some(events), next))
        }
    }
}

fn render(format: ExportFormat, events: &[Event]) -> Bytes {
    match format {
        ExportFormat::Ndjson => {
            let mut out = Vec::with_capacity(events.len() * 512);
            for event in events {
                // An `Event` always serialises: its maps have string keys.
                if serde_json::to_writer(&mut out, event).is_ok() {
                    out.push(b'\n');
                }
            }
            Bytes::from(out)
        }
        ExportFormat::Csv => csv_rows(events),
    }
}

fn ndjson_lines(lines: &[Value]) -> Bytes {
    let mut out = Vec::new();
    for line in lines {
        let _ = serde_json::to_writer(&mut out, line);
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// A CSV writer with RFC 4180's CRLF line ends.
fn csv_writer(capacity: usize) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(capacity))
}

fn csv_header() -> Bytes {
    let mut writer = csv_writer(256);
    let _ = writer.write_record(csv_columns());
    Bytes::from(writer.into_inner().unwrap_or_default())
}

fn csv_rows(events: &[Event]) -> Bytes {
    let mut writer = csv_writer(events.len() * 256);
    for event in events {
        let Ok(Value::Object(fields)) = serde_json::to_value(event) else {
            continue;
        };
        let _ = writer.write_record(csv_columns().map(|name| cell(&fields, name)));
    }
    Bytes::from(writer.into_inner().unwrap_or_default())
}

/// One CSV cell: text as it is, absent as empty, anything else as compact JSON; then, as OWASP
/// recommends against CSV injection, a cell that begins with `=`, `+`, `-`, `@`, a tab or a
/// carriage return gets a leading `'`, so that a spreadsheet shows it as text instead of
/// evaluating it.
fn cell(fields: &Map<String, Value>, name: &str) -> String {
    let text = match fields.get(name) {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_neutralised() {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "a": "=HYPERLINK(\"http://x\")", "b": "+1", "c": "-1", "d": "@SUM(A1)",
            "e": "\tx", "f": "\rx", "g": "plain", "h": null, "i": {"k": "=v"}, "j": 7,
        }))
        .unwrap();
        let cells: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "missing"]
            .iter()
            .map(|name| cell(&fields, name))
            .collect();
        assert_eq!(
            cells,
            [
                "'=HYPERLINK(\"http://x\")",
                "'+1",
                "'-1",
                "'@SUM(A1)",
                "'\tx",
                "'\rx",
                "plain",
                "",
                "{\"k\":\"=v\"}",
                "7",
                ""
            ]
        );
    }

    #[test]
    fn csv_columns_are_the_readable_fields_in_declared_order() {
        let columns: Vec<&str> = csv_columns().collect();
        assert_eq!(&columns[..4], ["id", "seq", "tenant", "event_type"]);
        for hidden in [
            "salt_secret",
            "erased",
            "leaf_hash",
            "prev_hash",
            "request_hash",
        ] {
            assert!(!columns.contains(&hidden), "{hidden}");
        }
        assert!(columns.contains(&"event_data") && columns.contains(&"hash"));
    }
}

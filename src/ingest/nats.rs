//! NATS JetStream: a durable pull consumer on an existing stream, filtered by subject. Each
//! fetched batch is recorded in one commit where it can be; a message is acknowledged after its
//! events are committed. The message's id is its `Nats-Msg-Id` header, or else the stream and
//! sequence JetStream gave it, so a redelivery is a replay. A message that cannot be recorded
//! is published to `dead_letter_subject` (its bytes, its headers, and `Auditor-Error` saying
//! why) and then acknowledged; while the database is down, messages are not acknowledged
//! (asked to be redelivered after the back-off) and the consumer waits.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::{Backoff, Broker, Misconfigured, default_tenant, run_until_stopped, settle};
use crate::log::AuditLog;
use crate::model::TenantId;
use crate::store::Store;

/// `[[ingest.nats]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:4222`.
    pub url: String,
    /// An existing stream.
    pub stream: String,
    /// The durable consumer's name; created when missing.
    pub consumer: String,
    /// The subject filter, e.g. `audit.>`.
    pub subject: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Where messages that cannot be recorded go.
    pub dead_letter_subject: String,
    /// Messages fetched, and recorded, at a time.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds JetStream waits for an acknowledgement before it redelivers.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
}

fn default_batch() -> usize {
    256
}
fn default_ack_wait_secs() -> u64 {
    30
}

/// How long one fetch waits for messages before it returns what it has.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// Consumes until `stop`, reconnecting with a back-off after any failure.
pub async fn run<S: Store>(log: AuditLog<S>, settings: NatsSettings, stop: CancellationToken) {
    let what = format!(
        "NATS consumer `{}` of `{}`",
        settings.consumer, settings.stream
    );
    run_until_stopped(&what, &stop, |mut backoff| {
        let (log, settings, stop) = (&log, &settings, &stop);
        async move { (consume(log, settings, stop, &mut backoff).await, backoff) }
    })
    .await;
}

async fn consume<S: Store>(
    log: &AuditLog<S>,
    settings: &NatsSettings,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let address = crate::config::DatabaseUrl::new(settings.url.clone()).redacted();
    let client = async_nats::connect(&settings.url)
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to NATS at {address}: {error}"))?;
    let context = jetstream::new(client.clone());
    let mut stream = context
        .get_stream(&settings.stream)
        .await
        .map_err(|error| {
            use jetstream::context::GetStreamErrorKind;
            match error.kind() {
                GetStreamErrorKind::JetStream(cause)
                    if cause.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    anyhow::Error::new(Misconfigured(format!(
                        "NATS at {address} has no JetStream stream `{}`: create it (e.g. `nats \
                     stream add {} --subjects '{}'`), or name an existing one in `stream`",
                        settings.stream, settings.stream, settings.subject
                    )))
                }
                _ => anyhow::anyhow!(
                    "cannot read the stream `{}` at {address}: {error}",
                    settings.stream
                ),
            }
        })?;
    // A stream deleted and made again under its name counts its sequence from 1 again: its
    // creation time keeps the keys derived from sequences apart.
    let created = stream.info().await?.created.unix_timestamp_nanos();
    let scope = format!("nats:{}@{created}", settings.stream);
    let wanted = pull::Config {
        durable_name: Some(settings.consumer.clone()),
        filter_subject: settings.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(settings.ack_wait_secs),
        max_ack_pending: i64::try_from(settings.batch.saturating_mul(4)).unwrap_or(-1),
        ..Default::default()
    };
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(&settings.consumer, wanted.clone())
        .await?;
    // A durable consumer made before keeps its settings unless told: a changed `subject`
    // would otherwise be logged as consumed while the old filter still applies.
    let existing = consumer.cached_info().config.clone();
    let unread = consumer.cached_info().num_pending
        + u64::try_from(consumer.cached_info().num_ack_pending).unwrap_or(0);
    if (
        &existing.filter_subject,
        existing.ack_wait,
        existing.max_ack_pending,
    ) != (
        &wanted.filter_subject,
        wanted.ack_wait,
        wanted.max_ack_pending,
    ) {
        consumer = stream.update_consumer(wanted).await.map_err(|error| {
            Misconfigured(format!(
                "the durable consumer `{}` exists with other settings (subject `{}`) and cannot \
                 be updated to this configuration's: {error}; delete it, or name another consumer",
                settings.consumer, existing.filter_subject
            ))
        })?;
        if existing.filter_subject != settings.subject && unread > 0 {
            // The messages the old filter took and were not yet acknowledged: those outside
            // the new filter are never delivered to this consumer again.
            tracing::warn!(
                consumer = %settings.consumer,
                subject = %settings.subject,
                was = %existing.filter_subject,
                unread,
                "the durable consumer's subject changed while messages of the old one were \
                 unread: those the new subject does not match will not be consumed; put the \
                 old subject back to read them first"
            );
        }
        tracing::info!(
            consumer = %settings.consumer,
            subject = %settings.subject,
            was = %existing.filter_subject,
            "updated the durable consumer to the configuration"
        );
    }
    let tenant = TenantId::parse(&settings.tenant).map_err(anyhow::Error::msg)?;
    let recorded_by = format!("nats:{}", settings.consumer);
    // Acknowledging a message of a work-queue or interest stream deletes it: a dead letter
    // that comes back to this consumer (which passes over dead letters) would be lost.
    let retention = stream.cached_info().config.retention;
    if retention != jetstream::stream::RetentionPolicy::Limits
        && super::subject_matches(&settings.subject, &settings.dead_letter_subject)
    {
        return Err(Misconfigured(format!(
            "dead_letter_subject `{}` is within subject `{}` of a stream whose retention is \
             {}: the consumer would acknowledge, and so delete, its own dead letters; \
             choose a dead-letter subject outside the consumer's filter",
            settings.dead_letter_subject,
            settings.subject,
            match retention {
                jetstream::stream::RetentionPolicy::WorkQueue => "work-queue",
                _ => "interest",
            }
        ))
        .into());
    }
    if !check_dead_letters_are_kept(&context, settings).await? {
        tracing::warn!(
            dead_letter_subject = %settings.dead_letter_subject,
            "no JetStream stream keeps the dead-letter subject: dead letters are published \
             without confirmation, and lost unless something subscribes to it"
        );
    }
    tracing::info!(
        stream = %settings.stream,
        consumer = %settings.consumer,
        subject = %settings.subject,
        "consuming from NATS JetStream"
    );
    let broker = JetStream {
        client: &client,
        context: &context,
        settings,
        scope: &scope,
    };
    while !stop.is_cancelled() {
        let mut batch = consumer
            .batch()
            .max_messages(settings.batch)
            .expires(FETCH_EXPIRES)
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        if messages.is_empty() {
            continue;
        }
        let target = (&tenant, recorded_by.as_str());
        if !settle(log, &broker, target, &messages, backoff, stop).await? {
            break;
        }
    }
    Ok(())
}

/// A stream of interest retention keeps a message only while a consumer wants it: when the one
/// that would store the dead letters has no consumer whose filter takes the dead-letter subject,
/// each dead letter would be discarded as soon as it was stored, and its original acknowledged.
/// Checked at start and again before each dead letter (that consumer may have gone since).
/// Returns whether a stream keeps the subject: with none, dead letters are published plainly
/// (see [`dead_letter`]).
async fn check_dead_letters_are_kept(
    context: &jetstream::Context,
    settings: &NatsSettings,
) -> anyhow::Result<bool> {
    let subject = &settings.dead_letter_subject;
    let Ok(name) = context.stream_by_subject(subject.as_str()).await else {
        return Ok(false);
    };
    let mut stream = context.get_stream(&name).await?;
    if stream.info().await?.config.retention != jetstream::stream::RetentionPolicy::Interest {
        return Ok(true);
    }
    let mut consumers = stream.consumers();
    while let Some(consumer) = consumers.next().await {
        let config = consumer?.config;
        // No filter at all reads every subject of the stream.
        let reads = (config.filter_subject.is_empty() && config.filter_subjects.is_empty())
            || std::iter::once(&config.filter_subject)
                .chain(&config.filter_subjects)
                .any(|filter| !filter.is_empty() && super::subject_matches(filter, subject));
        // This consumer passes over its dead letters, acknowledging them.
        let ours =
            name == settings.stream && config.durable_name.as_ref() == Some(&settings.consumer);
        if reads && !ours {
            return Ok(true);
        }
    }
    Err(Misconfigured(format!(
        "stream `{name}` keeps dead_letter_subject `{subject}` with interest retention, and no \
         consumer of it reads that subject: every dead letter would be discarded at once; add a \
         consumer for it, or keep dead letters in a stream with limits or work-queue retention"
    ))
    .into())
}

/// The JetStream side of a consumer.
struct JetStream<'a> {
    client: &'a async_nats::Client,
    context: &'a jetstream::Context,
    settings: &'a NatsSettings,
    /// `nats:<stream>@<created>`, which the keys derived from message ids are scoped by.
    scope: &'a str,
}

impl Broker for JetStream<'_> {
    type Message = Message;

    fn delivery<'m>(&self, message: &'m Message) -> Delivery<'m> {
        Delivery {
            scope: self.scope.to_owned(),
            ..delivery(message)
        }
    }

    /// A message on this consumer's own dead-letter subject that carries `Auditor-Error` is a
    /// dead letter come back (the subject lies within the filter): not an event. The header
    /// alone, anywhere else, is no reason to pass a message over.
    fn is_dead_letter(&self, message: &Message) -> bool {
        let dead = message.subject.as_str() == self.settings.dead_letter_subject
            && message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(DEAD_LETTER_ERROR).is_some());
        if dead {
            tracing::info!(subject = %message.subject, "passing over a dead letter of this consumer");
        }
        dead
    }

    async fn acknowledge(&self, message: &Message) {
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, "could not acknowledge a NATS message; it will be replayed");
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> anyhow::Result<()> {
        dead_letter(self, message, reason).await
    }

    async fn redeliver(&self, message: &Message, after: Duration) -> anyhow::Result<()> {
        if let Err(error) = message.ack_with(AckKind::Nak(Some(after))).await {
            tracing::debug!(%error, "could not ask for a redelivery; it comes after ack_wait");
        }
        Ok(())
    }
}

fn delivery(message: &Message) -> Delivery<'_> {
    let headers = message.headers.as_ref();
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|value| value.as_str().to_owned())
    };
    let mut cloudevent_attributes = BTreeMap::new();
    for (name, values) in headers.iter().flat_map(|h| h.iter()) {
        let name = name.to_string().to_ascii_lowercase();
        if let (Some(attribute), Some(value)) = (name.strip_prefix("ce-"), values.first()) {
            cloudevent_attributes.insert(attribute.to_owned(), value.as_str().to_owned());
        }
    }
    Delivery {
        body: &message.payload,
        // JetStream takes an empty id for none, and so does this service.
        message_id: header("Nats-Msg-Id").filter(|id| !id.is_empty()),
        broker_id: message
            .info()
            .ok()
            .map(|info| format!("seq-{}", info.stream_sequence)),
        cloudevent_attributes,
        attributes_percent_encoded: true,
        scope: String::new(),
        content_type: header("Content-Type").or_else(|| header("content-type")),
    }
}

/// Publishes the message, as received, to the dead-letter subject with the reason, and waits for
/// the stream that keeps dead letters to confirm it. With no stream on that subject, it is
/// published plainly (and logged), since a dead letter must never hold up the stream.
async fn dead_letter(
    broker: &JetStream<'_>,
    message: &Message,
    reason: &str,
) -> anyhow::Result<()> {
    let JetStream {
        client,
        context,
        settings,
        ..
    } = *broker;
    // With no stream on the subject, the publish below says so.
    check_dead_letters_are_kept(context, settings).await?;
    // Several consumers of one stream each dead-letter a poison message, under their own ids.
    let (dead_letter_subject, consumer) = (&settings.dead_letter_subject, &settings.consumer);
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(DEAD_LETTER_ERROR, reason);
    headers.insert("Auditor-Subject", message.subject.as_str());
    // The dead letter gets an id of its own below; a fixed message republished under its
    // original id is still one event.
    if let Some(original) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
        headers.insert("Auditor-Original-Msg-Id", original.as_str());
    }
    // A dead letter written again after a redelivery is one dead letter; another consumer's
    // dead letter of the same message is another.
    if let Ok(info) = message.info() {
        headers.insert(
            "Auditor-Original-Seq",
            info.stream_sequence.to_string().as_str(),
        );
        headers.insert(
            "Nats-Msg-Id",
            // The stream's creation time too (in `scope`): a stream made again counts from 1.
            format!("dead:{}:{consumer}:{}", broker.scope, info.stream_sequence).as_str(),
        );
    }
    // A message near the server's size limit does not fit beside the headers added: its head
    // goes, marked, and the whole stays in its stream at `Auditor-Original-Seq`.
    let limit = client.server_info().max_payload;
    let mut payload = message.payload.clone();
    let room = limit.saturating_sub(headers_size(&headers) + DEAD_LETTER_MARGIN);
    if payload.len() > room {
        headers.insert("Auditor-Truncated-From", payload.len().to_string().as_str());
        payload.truncate(room);
    }
    use async_nats::jetstream::context::PublishErrorKind;
    let published = match context
        .publish_with_headers(
            dead_letter_subject.to_owned(),
            headers.clone(),
            payload.clone(),
        )
        .await
    {
        Ok(ack) => ack.await,
        Err(error) => Err(error),
    };
    match published {
        Ok(_) => Ok(()),
        // A stream that refuses it (too large for it, full) leaves the dead letter nowhere:
        // the message stays unacknowledged, to be tried again.
        Err(error) if error.kind() != PublishErrorKind::StreamNotFound => Err(anyhow::anyhow!(
            "the stream that keeps `{dead_letter_subject}` refused the dead letter: {error}"
        )),
        Err(_) => {
            tracing::warn!(
                %dead_letter_subject,
                "no JetStream stream keeps the dead-letter subject; published without confirmation"
            );
            client
                .publish_with_headers(dead_letter_subject.to_owned(), headers, payload)
                .await?;
            client.flush().await?;
            Ok(())
        }
    }
}

/// The header a dead letter carries its reason in.
const DEAD_LETTER_ERROR: &str = "Auditor-Error";

/// Bytes kept free below the server's payload limit for the protocol's own framing.
const DEAD_LETTER_MARGIN: usize = 1024;

/// The size of `headers` as NATS sends them (`name: value\r\n` each, and the preamble).
fn headers_size(headers: &async_nats::HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| AsRef::<str>::as_ref(name).len() + value.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    lines + "NATS/1.0\r\n\r\n".len()
}

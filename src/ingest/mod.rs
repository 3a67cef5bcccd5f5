//! Other ways in: consumers of message brokers, run inside `serve`. Each is a thin adapter that
//! turns its broker's messages into events ([`delivery`]) and records them through the core
//! ([`crate::log::AuditLog`]), the same writer and group commit as `POST /events`:
//!
//! - at least once in: a message is acknowledged only after its events are committed (or, when
//!   it cannot be recorded, after it is safely in the dead-letter destination);
//! - exactly once stored: each event's idempotency key comes from the message's id, so a
//!   redelivery is a replay;
//! - while the database is unavailable, messages stay unacknowledged and the consumer backs off
//!   (1 s doubling to 30 s) instead of spinning.

pub mod amqp;
pub mod capture;
pub mod delivery;
pub mod nats;
pub mod pgoutput;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::log::{AuditLog, LogError};
use crate::model::{FieldError, NewEvent, RawEvent, TenantId};
use crate::store::Store;

/// `[[ingest.nats]]` and `[[ingest.amqp]]`: the consumers `serve` runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<nats::NatsSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amqp: Vec<amqp::AmqpSettings>,
}

impl IngestSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut consumers = std::collections::HashSet::new();
        for nats in &self.nats {
            // A dead letter within `subject` comes back to the consumer, which passes over
            // what carries `Auditor-Error`; one with no subject, or a wildcard, goes nowhere.
            let subject = &nats.dead_letter_subject;
            if subject.is_empty()
                || subject
                    .split('.')
                    .any(|token| token.is_empty() || token == "*" || token == ">")
                || subject.chars().any(char::is_whitespace)
            {
                return Err(format!(
                    "ingest.nats: dead_letter_subject `{subject}` is not a subject a message \
                     can be published to (tokens separated by `.`, no wildcards or spaces)"
                ));
            }
            if !consumers.insert((&nats.url, &nats.stream, &nats.consumer)) {
                return Err(format!(
                    "ingest.nats: consumer `{}` of stream `{}` is configured twice",
                    nats.consumer, nats.stream
                ));
            }
            if nats.batch == 0 {
                return Err("ingest.nats: batch must be at least 1".into());
            }
            // Refused here, with the reason, rather than retried for ever as if unreachable.
            nats.url
                .parse::<async_nats::ServerAddr>()
                .map_err(|error| {
                    format!("ingest.nats: url is not a NATS server address: {error}")
                })?;
        }
        for amqp in &self.amqp {
            if amqp.dead_letter_queue == amqp.queue {
                return Err(format!(
                    "ingest.amqp: dead_letter_queue must not be the queue consumed (`{}`)",
                    amqp.queue
                ));
            }
            if amqp.prefetch == 0 {
                return Err("ingest.amqp: prefetch must be at least 1".into());
            }
            amqp.url
                .parse::<lapin::uri::AMQPUri>()
                .map_err(|error| format!("ingest.amqp: url is not an AMQP URI: {error}"))?;
        }
        let tenants = self
            .nats
            .iter()
            .map(|n| &n.tenant)
            .chain(self.amqp.iter().map(|a| &a.tenant));
        for tenant in tenants {
            TenantId::parse(tenant).map_err(|e| format!("ingest: {e}"))?;
            if tenant == crate::log::access_log::SYSTEM_TENANT {
                return Err("ingest: no consumer may write the system log `_system`".into());
            }
        }
        Ok(())
    }
}

/// Whether the NATS subject filter `filter` (`*` one token, `>` the rest) takes `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in filter.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Starts every configured consumer; each runs until `stop`, finishing the batch in hand.
pub fn spawn<S: Store>(
    log: &AuditLog<S>,
    settings: &IngestSettings,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let nats = settings
        .nats
        .iter()
        .map(|nats| tokio::spawn(nats::run(log.clone(), nats.clone(), stop.clone())));
    let amqp = settings
        .amqp
        .iter()
        .map(|amqp| tokio::spawn(amqp::run(log.clone(), amqp.clone(), stop.clone())));
    nats.chain(amqp).collect()
}

/// Starts every configured capture; each runs until `stop`, committing the changes in hand.
pub fn spawn_capture<S: Store>(
    log: &AuditLog<S>,
    settings: &capture::CaptureSettings,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    settings
        .postgres
        .iter()
        .map(|host| tokio::spawn(capture::run(log.clone(), host.clone(), stop.clone())))
        .collect()
}

/// What a consumer needs of its broker once it knows what became of a message.
pub(crate) trait Broker {
    type Message;

    /// The message as the core reads it.
    fn delivery<'m>(&self, message: &'m Self::Message) -> delivery::Delivery<'m>;

    /// Its events are committed. A failed acknowledgement only means a redelivery, a replay.
    async fn acknowledge(&self, message: &Self::Message);

    /// It can never be recorded: it goes, with `reason`, where dead letters go, confirmed.
    async fn dead_letter(&self, message: &Self::Message, reason: &str) -> anyhow::Result<()>;

    /// The database could not take it: it is to come again, not before `after`.
    async fn redeliver(&self, message: &Self::Message, after: Duration) -> anyhow::Result<()>;

    /// Whether it is a dead letter of this service (one that came back on a subject the
    /// consumer reads): acknowledged and passed over, never recorded or dead-lettered again.
    fn is_dead_letter(&self, _message: &Self::Message) -> bool {
        false
    }
}

/// Records `messages` through `log` and settles each with `broker`: acknowledged once
/// committed, dead-lettered (then acknowledged) when refused, redelivered when the database
/// could not take it, after which the back-off is waited out. False when `stop` came during
/// that wait.
pub(crate) async fn settle<S: Store, B: Broker>(
    log: &AuditLog<S>,
    broker: &B,
    (tenant, recorded_by): (&TenantId, &str),
    messages: &[B::Message],
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let (passed_over, messages): (Vec<&B::Message>, Vec<&B::Message>) = messages
        .iter()
        .partition(|message| broker.is_dead_letter(message));
    for message in passed_over {
        broker.acknowledge(message).await;
    }
    let decoded = messages
        .iter()
        .map(|message| broker.delivery(message).events())
        .collect();
    let fates = record_messages(log, tenant, recorded_by, decoded).await;
    let mut retry = false;
    for (message, fate) in messages.into_iter().zip(fates) {
        let counted = match &fate {
            Fate::Committed => "committed",
            Fate::Refused(_) => "dead_lettered",
            Fate::Retry => "retried",
        };
        metrics::counter!(
            crate::metrics::BROKER_MESSAGES,
            "consumer" => recorded_by.to_owned(),
            "fate" => counted
        )
        .increment(1);
        match fate {
            Fate::Committed => broker.acknowledge(message).await,
            Fate::Refused(reason) => match broker.dead_letter(message, &reason).await {
                Ok(()) => {
                    tracing::warn!(%reason, "a message cannot be recorded; dead-lettered");
                    broker.acknowledge(message).await;
                }
                // Kept unacknowledged rather than lost; the others of the batch go on.
                Err(error) => {
                    tracing::error!(
                        %reason, error = crate::telemetry::error_chain(error.as_ref()),
                        "a message cannot be recorded, nor dead-lettered; it will be tried again"
                    );
                    retry = true;
                    broker
                        .redeliver(message, backoff.redelivery_delay())
                        .await?;
                }
            },
            Fate::Retry => {
                retry = true;
                broker
                    .redeliver(message, backoff.redelivery_delay())
                    .await?;
            }
        }
    }
    if retry {
        return Ok(backoff.wait(stop).await);
    }
    backoff.reset();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_destinations_that_cannot_work_are_refused() {
        let nats = nats::NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            stream: "AUDIT".into(),
            consumer: "auditor".into(),
            subject: "audit.>".into(),
            tenant: "default".into(),
            dead_letter_subject: "dead.audit".into(),
            batch: 256,
            ack_wait_secs: 30,
        };
        let amqp = amqp::AmqpSettings {
            url: "amqp://127.0.0.1".into(),
            queue: "audit".into(),
            tenant: "default".into(),
            dead_letter_queue: "audit.dead".into(),
            prefetch: 10,
        };
        let settings = |nats, amqp| IngestSettings {
            nats: vec![nats],
            amqp: vec![amqp],
        };
        assert!(settings(nats.clone(), amqp.clone()).validate().is_ok());
        // URLs that reach no broker are refused when read, not retried as if it were down.
        let bad_nats = nats::NatsSettings {
            url: "nats://127.0.0.1:notaport".into(),
            ..nats.clone()
        };
        assert!(settings(bad_nats, amqp.clone()).validate().is_err());
        let bad_amqp = amqp::AmqpSettings {
            url: "amqp://127.0.0.1:notaport".into(),
            ..amqp.clone()
        };
        assert!(settings(nats.clone(), bad_amqp).validate().is_err());
        // Within the consumer's own filter: it passes over its dead letters (the and
        // the README's example).
        let within = nats::NatsSettings {
            dead_letter_subject: "audit.dead".into(),
            ..nats.clone()
        };
        assert!(settings(within, amqp.clone()).validate().is_ok());
        for nowhere in ["", "audit.*", "audit.>", "audit..dead", "audit dead"] {
            let nats = nats::NatsSettings {
                dead_letter_subject: nowhere.into(),
                ..nats.clone()
            };
            assert!(
                settings(nats, amqp.clone()).validate().is_err(),
                "{nowhere:?}"
            );
        }
        let twice = IngestSettings {
            nats: vec![nats.clone(), nats.clone()],
            amqp: vec![],
        };
        assert!(twice.validate().is_err());
        let looping_amqp = amqp::AmqpSettings {
            dead_letter_queue: "audit".into(),
            ..amqp.clone()
        };
        assert!(settings(nats.clone(), looping_amqp).validate().is_err());
        let system = amqp::AmqpSettings {
            tenant: "_system".into(),
            ..amqp
        };
        assert!(settings(nats, system).validate().is_err());
    }

    #[test]
    fn subject_filters_match_as_nats_does() {
        assert!(subject_matches("audit.>", "audit.dead"));
        assert!(subject_matches("audit.*", "audit.dead"));
        assert!(!subject_matches("audit.*", "audit.dead.letters"));
        assert!(!subject_matches("audit.events", "audit.dead"));
        assert!(!subject_matches("audit.>", "audit"));
        assert!(subject_matches("audit.dead", "audit.dead"));
    }
}

/// What became of one message.
#[derive(Debug)]
pub enum Fate {
    /// Its events are committed (or were already): acknowledge it.
    Committed,
    /// It can never be recorded, for this reason: dead-letter it, then acknowledge it.
    Refused(String),
    /// The database could not take it now: leave it unacknowledged, for redelivery.
    Retry,
}

/// Records each message's events in `tenant` as `recorded_by`: all of them in one commit when
/// they all go in, else message by message, so that one refused message refuses only itself.
/// Returns each message's fate, in order.
pub async fn record_messages<S: Store>(
    log: &AuditLog<S>,
    tenant: &TenantId,
    recorded_by: &str,
    messages: Vec<Result<Vec<RawEvent>, FieldError>>,
) -> Vec<Fate> {
    let mut fates = Vec::with_capacity(messages.len());
    let mut parsed: Vec<(usize, Vec<NewEvent>)> = Vec::new();
    for (index, message) in messages.into_iter().enumerate() {
        let events = message.and_then(|raws| {
            raws.into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    log.parse(raw).map_err(|e| match e {
                        LogError::Invalid(error) => error.at_index(i),
                        other => FieldError::new("event", other.to_string()),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match events {
            Ok(events) if events.is_empty() => {
                fates.push(Fate::Refused("the message carries no event".into()));
            }
            Ok(events) => {
                fates.push(Fate::Retry);
                parsed.push((index, events));
            }
            Err(error) => fates.push(Fate::Refused(refusal(&error))),
        }
    }
    let keys: Vec<&str> = parsed
        .iter()
        .flat_map(|(_, events)| events.iter().filter_map(|e| e.idempotency_key.as_deref()))
        .collect();
    let distinct_keys = keys.len() == keys.iter().collect::<std::collections::HashSet<_>>().len();
    if parsed.len() > 1 && distinct_keys {
        let all: Vec<NewEvent> = parsed.iter().flat_map(|(_, e)| e.clone()).collect();
        match log.record_in(tenant.clone(), recorded_by, all).await {
            Ok(_) => {
                for (index, _) in &parsed {
                    fates[*index] = Fate::Committed;
                }
                return fates;
            }
            Err(error) if retry_later(&error) => return fates,
            // One of them is refused: find which, one by one.
            Err(_) => {}
        }
    }
    for (index, events) in parsed {
        fates[index] = match log.record_in(tenant.clone(), recorded_by, events).await {
            Ok(_) => Fate::Committed,
            Err(error) if retry_later(&error) => {
                tracing::warn!(%error, "could not record a message; it stays unacknowledged");
                Fate::Retry
            }
            Err(error) => Fate::Refused(error.to_string()),
        };
    }
    fates
}

fn refusal(error: &FieldError) -> String {
    format!("`{}` {}", error.field, error.message)
}

/// Whether an error is the database's, not the message's: the message waits for redelivery.
fn retry_later(error: &LogError) -> bool {
    !matches!(
        error,
        LogError::Invalid(_)
            | LogError::InvalidQuery(_)
            | LogError::IdempotencyConflict(_)
            | LogError::Conflict(_)
            | LogError::NotFound(_)
    )
}

/// The tenant a consumer writes to unless configured otherwise.
pub(crate) fn default_tenant() -> String {
    "default".into()
}

/// Runs `attempt` until it returns `Ok` (it saw `stop`), waiting out the back-off after each
/// failure, which is logged as `what`'s.
pub(crate) async fn run_until_stopped<F, Fut>(what: &str, stop: &CancellationToken, mut attempt: F)
where
    F: FnMut(Backoff) -> Fut,
    Fut: Future<Output = (anyhow::Result<()>, Backoff)>,
{
    let mut backoff = Backoff::default();
    loop {
        let (outcome, returned) = attempt(backoff).await;
        backoff = returned;
        match outcome {
            Ok(()) => return,
            Err(error) => {
                let misconfigured = error.downcast_ref::<Misconfigured>().is_some();
                // The whole chain of causes, not just the outermost.
                let error = crate::telemetry::error_chain(error.as_ref());
                if misconfigured {
                    tracing::error!(
                        %error,
                        "{what} cannot start as configured; trying again every 30 s until it is fixed"
                    );
                    backoff.exhaust();
                } else {
                    tracing::warn!(%error, "{what} failed; retrying");
                }
                metrics::counter!(crate::metrics::CONSUMER_FAILURES, "consumer" => what.to_owned())
                    .increment(1);
                if !backoff.wait(stop).await {
                    return;
                }
            }
        }
    }
}

/// A set-up that cannot work as configured (a named table without a replica identity, a
/// dead-letter subject whose stream would discard its messages): it takes someone to fix it, so
/// it is logged as an error and tried again at the longest back-off.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Misconfigured(pub String);

/// Waits out a consumer's back-off after a failure: 1 s, doubling to 30 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(30);

    /// Sleeps for the next delay; false when `stop` came first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = Duration::from_secs(1 << self.failures.min(5)).min(Self::MAX);
        self.failures += 1;
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The next wait is the longest.
    fn exhaust(&mut self) {
        self.failures = self.failures.max(5);
    }

    /// The delay a message waits before its redelivery is asked for.
    pub(crate) fn redelivery_delay(&self) -> Duration {
        Duration::from_secs(1 << self.failures.min(5)).min(Self::MAX)
    }
}

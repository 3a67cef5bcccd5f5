//! RabbitMQ (AMQP 0-9-1): a consumer on a queue, with manual acknowledgements and `prefetch`
//! unacknowledged messages at most. The messages that have arrived are recorded together, in
//! one commit where they can be, and each is acknowledged after its events are committed. A
//! message's id is its `message-id` property (or its events' own keys): a producer that sets
//! neither gets no protection from a redelivery. A message that cannot be recorded is
//! published to `dead_letter_queue` (through the default exchange, with publisher confirms) with
//! its bytes, its properties and an `auditor-error` header saying why, and then acknowledged;
//! while the database is down, messages are returned to the queue and the consumer waits.
//!
//! CloudEvents come structured in the body, or in binary mode with the attributes as
//! `cloudEvents:<name>` (or `cloudEvents_<name>`) headers, as the CloudEvents AMQP binding has
//! them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::{Backoff, Broker, Misconfigured, default_tenant, run_until_stopped, settle};
use crate::log::AuditLog;
use crate::model::TenantId;
use crate::store::Store;

/// `[[ingest.amqp]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:5672/%2f` (the virtual host percent-encoded).
    pub url: String,
    /// The queue consumed; declared durable when it does not exist.
    pub queue: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Where messages that cannot be recorded go; declared durable when it does not exist.
    pub dead_letter_queue: String,
    /// Unacknowledged messages the broker may hand over at once, and so recorded together.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
}

fn default_prefetch() -> u16 {
    1000
}

/// How long the consumer waits for more messages to join the ones it has before it records
/// them.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// Consumes until `stop`, reconnecting with a back-off after any failure.
pub async fn run<S: Store>(log: AuditLog<S>, settings: AmqpSettings, stop: CancellationToken) {
    let what = format!("AMQP consumer of `{}`", settings.queue);
    run_until_stopped(&what, &stop, |mut backoff| {
        let (log, settings, stop) = (&log, &settings, &stop);
        async move { (consume(log, settings, stop, &mut backoff).await, backoff) }
    })
    .await;
}

/// Makes sure `queue` exists: a queue declared already (of any kind, quorum or classic) is
/// used as it is; a missing one is declared durable.
async fn ensure_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let probe = connection.create_channel().await?;
    if probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "ok".into()).await;
        return Ok(());
    }
    // A failed passive declaration closes its channel: declare on a new one.
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "ok".into()).await;
    Ok(())
}

/// The dead-letter queue must keep what it is given: an existing one is declared again as a
/// durable classic queue without arguments, then as a durable quorum queue; the broker refuses
/// both (`PRECONDITION_FAILED`) for a queue that is not durable or has arguments such as a
/// length limit or a TTL, which would discard confirmed dead letters. Limits set by a policy
/// are not seen by AMQP and so not checked.
async fn check_dead_letters_are_kept(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for arguments in [FieldTable::default(), quorum] {
        // A refused declaration closes its channel: one channel per try.
        let channel = connection.create_channel().await?;
        if channel
            .queue_declare(queue.into(), durable, arguments)
            .await
            .is_ok()
        {
            let _ = channel.close(200, "ok".into()).await;
            return Ok(());
        }
    }
    Err(Misconfigured(format!(
        "dead_letter_queue `{queue}` exists with settings that may discard dead letters (not \
         durable, or with arguments such as x-max-length or x-message-ttl): it must be a durable \
         classic or quorum queue without limits; delete it (the consumer declares it) or name \
         another"
    ))
    .into())
}

async fn consume<S: Store>(
    log: &AuditLog<S>,
    settings: &AmqpSettings,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    // Named, so that an operator finds it in `rabbitmqctl list_connections`.
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("auditor {}", settings.queue).into());
    let connection = Connection::connect(&settings.url, properties)
        .await
        .map_err(|error| {
            let address = crate::config::DatabaseUrl::new(settings.url.clone()).redacted();
            anyhow::anyhow!("cannot connect to RabbitMQ at {address}: {error}")
        })?;
    ensure_queue(&connection, &settings.queue).await?;
    ensure_queue(&connection, &settings.dead_letter_queue).await?;
    check_dead_letters_are_kept(&connection, &settings.dead_letter_queue).await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "auditor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %settings.queue, "consuming from AMQP");
    let tenant = TenantId::parse(&settings.tenant).map_err(anyhow::Error::msg)?;
    let recorded_by = format!("amqp:{}", settings.queue);
    let broker = Rabbit {
        connection: &connection,
        dead_letters: &dead_letters,
        dead_letter_queue: &settings.dead_letter_queue,
        queue: &settings.queue,
    };
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let Some(first) = first else {
            anyhow::bail!("the broker cancelled the consumer");
        };
        let mut messages = vec![first?];
        while messages.len() < usize::from(settings.prefetch) {
            match tokio::time::timeout(GATHER_WAIT, consumer.next()).await {
                Ok(Some(message)) => messages.push(message?),
                Ok(None) | Err(_) => break,
            }
        }
        let target = (&tenant, recorded_by.as_str());
        if !settle(log, &broker, target, &messages, backoff, stop).await? {
            break;
        }
    }
    // Messages not acknowledged go back to the queue when the channel closes.
    let _ = channel.close(200, "stopping".into()).await;
    let _ = connection.close(200, "stopping".into()).await;
    Ok(())
}

/// The RabbitMQ side of a consumer.
struct Rabbit<'a> {
    connection: &'a Connection,
    /// A channel in confirm mode, for the dead letters.
    dead_letters: &'a Channel,
    dead_letter_queue: &'a str,
    /// The queue consumed, which the keys derived from message ids are scoped by.
    queue: &'a str,
}

impl Broker for Rabbit<'_> {
    type Message = AmqpDelivery;

    fn delivery<'m>(&self, message: &'m AmqpDelivery) -> Delivery<'m> {
        Delivery {
            scope: format!("amqp:{}", self.queue),
            ..delivery(message)
        }
    }

    async fn acknowledge(&self, message: &AmqpDelivery) {
        if let Err(error) = message.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, "could not acknowledge an AMQP message; it will be redelivered");
        }
    }

    async fn dead_letter(&self, message: &AmqpDelivery, reason: &str) -> anyhow::Result<()> {
        dead_letter(self, message, reason).await
    }

    /// Back to the queue at once; the consumer's back-off keeps it from spinning.
    async fn redeliver(&self, message: &AmqpDelivery, _after: Duration) -> anyhow::Result<()> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        message.nack(requeue).await?;
        Ok(())
    }
}

fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Timestamp(n) => Some(n.to_string()),
        _ => None,
    }
}

fn delivery(message: &AmqpDelivery) -> Delivery<'_> {
    let properties = &message.properties;
    let mut cloudevent_attributes = BTreeMap::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let name = name.as_str();
            let attribute = name
                .strip_prefix("cloudEvents:")
                .or_else(|| name.strip_prefix("cloudEvents_"));
            if let (Some(attribute), Some(value)) = (attribute, text_of(value)) {
                cloudevent_attributes.insert(attribute.to_owned(), value);
            }
        }
    }
    Delivery {
        body: &message.data,
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.is_empty()),
        broker_id: None,
        cloudevent_attributes,
        attributes_percent_encoded: false,
        scope: String::new(),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|t| t.as_str().to_owned()),
    }
}

/// Publishes the message, as received, to the dead-letter queue with the reason, and waits
/// for the broker to confirm it. Published `mandatory`: a dead-letter queue deleted since the
/// start returns it instead of dropping it, and is then declared again for a second try.
async fn dead_letter(
    broker: &Rabbit<'_>,
    message: &AmqpDelivery,
    reason: &str,
) -> anyhow::Result<()> {
    if publish_dead_letter(broker, message, reason).await? {
        return Ok(());
    }
    tracing::warn!(
        queue = %broker.dead_letter_queue,
        "the dead-letter queue is gone; declaring it again"
    );
    ensure_queue(broker.connection, broker.dead_letter_queue).await?;
    if publish_dead_letter(broker, message, reason).await? {
        return Ok(());
    }
    anyhow::bail!(
        "the dead-letter queue `{}` takes no messages",
        broker.dead_letter_queue
    )
}

/// True once the broker confirmed the dead letter in its queue; false when it came back
/// unroutable.
async fn publish_dead_letter(
    broker: &Rabbit<'_>,
    message: &AmqpDelivery,
    reason: &str,
) -> anyhow::Result<bool> {
    let channel = broker.dead_letters;
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("auditor-error"),
        AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
    );
    let properties: BasicProperties = message
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirmation = channel
        .basic_publish(
            "".into(),
            broker.dead_letter_queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &message.data,
            properties,
        )
        .await?
        .await?;
    if confirmation.is_nack() {
        anyhow::bail!("the broker refused the dead letter");
    }
    Ok(confirmation.take_message().is_none())
}

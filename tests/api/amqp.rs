//! RabbitMQ into the log (`[[ingest.amqp]]`), against the machine's RabbitMQ: every message
//! stored once through a SIGKILL of the service, a poison message dead-lettered without holding
//! up the rest, a database that refuses writes and comes back, the consumer's connection closed
//! by the broker, and CloudEvents in the AMQP binding's binary mode.

use std::time::Duration;

use auditor::config::Settings;
use auditor::ingest::amqp::AmqpSettings;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, ServerProcess, TestDb, assert_gapless_chain, settings_for, spawn_with,
};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A queue of the test's own and its dead-letter queue.
struct TestQueue {
    queue: String,
    channel: Channel,
    connection: Connection,
}

impl TestQueue {
    async fn create() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ is up");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let queue = format!("audit.{id}");
        for name in [queue.clone(), format!("{queue}.dead")] {
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        Self {
            queue,
            channel,
            connection,
        }
    }

    fn settings(&self) -> AmqpSettings {
        AmqpSettings {
            url: AMQP_URL.into(),
            queue: self.queue.clone(),
            tenant: "default".into(),
            dead_letter_queue: format!("{}.dead", self.queue),
            prefetch: 500,
        }
    }

    fn toml(&self) -> String {
        let s = self.settings();
        format!(
            "[[ingest.amqp]]\nurl = \"{}\"\nqueue = \"{}\"\ntenant = \"default\"\n\
             dead_letter_queue = \"{}\"\nprefetch = {}\n",
            s.url, s.queue, s.dead_letter_queue, s.prefetch
        )
    }

    /// Publishes `body` persistently, with `message-id` when `id` is given, and waits for the
    /// broker's confirmation.
    async fn publish(&self, id: Option<&str>, body: &[u8], properties: BasicProperties) {
        let mut properties = properties.with_delivery_mode(2);
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack());
    }

    /// Waits (30 s at most) until the dead-letter queue exists: the consumer declares it again
    /// when a dead letter finds it gone, which may be after later messages are committed.
    async fn wait_for_the_dead_letter_queue(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        loop {
            // A failed passive declaration closes its channel: each try has its own.
            let channel = self.connection.create_channel().await.unwrap();
            let dead = format!("{}.dead", self.queue);
            let declared = channel
                .queue_declare(dead.as_str().into(), passive, FieldTable::default())
                .await;
            if declared.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dead-letter queue was not declared again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes the dead letters off their queue: each one's `auditor-error` and body.
    async fn dead_letters(&self, expected: usize) -> Vec<(String, Vec<u8>)> {
        let mut consumer = self
            .channel
            .basic_consume(
                format!("{}.dead", self.queue).as_str().into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut letters = Vec::new();
        while letters.len() < expected {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .expect("a dead letter")
                .unwrap()
                .unwrap();
            let error = message
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("auditor-error").cloned());
            let error = match error {
                Some(AMQPValue::LongString(text)) => {
                    String::from_utf8_lossy(text.as_bytes()).into_owned()
                }
                other => panic!("no auditor-error header: {other:?}"),
            };
            message.ack(BasicAckOptions::default()).await.unwrap();
            letters.push((error, message.data.clone()));
        }
        letters
    }
}

fn event(i: usize) -> Vec<u8> {
    crate::helpers::numbered_event("amqp.event", i)
}

fn with_amqp(db: &TestDb, amqp: AmqpSettings) -> Settings {
    let mut settings = settings_for(db);
    settings.ingest.amqp = vec![amqp];
    settings
}

/// 10,000 messages with a `message-id`; the service is SIGKILLed midway and started again:
/// every message is stored once, in one gapless chain.
async fn every_message_is_stored_once_through_a_sigkill(backend: Backend) {
    const MESSAGES: usize = 10_000;
    let amqp = TestQueue::create().await;
    for i in 0..MESSAGES {
        amqp.publish(
            Some(&format!("msg-{i}")),
            &event(i),
            BasicProperties::default(),
        )
        .await;
    }
    let db = TestDb::new(backend).await;
    let config = db.dir.path().join("auditor.toml");
    std::fs::write(&config, amqp.toml()).unwrap();
    let mut server =
        ServerProcess::serve_with_env(&db, &[("AUDITOR_CONFIG", config.to_str().unwrap())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count_events("default").await < 2_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let before_restart = db.count_events("default").await;
    assert!(
        before_restart < MESSAGES as i64,
        "killed midway: {before_restart}"
    );

    let app = spawn_with(db.share(), with_amqp(&db, amqp.settings())).await;
    db.wait_for_events("default", MESSAGES as i64, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.count_events("default").await, MESSAGES as i64);
    let events = app.all_events().await;
    assert_gapless_chain(&events);
    let mut seen: Vec<u64> = events
        .iter()
        .map(|e| {
            serde_json::to_value(&e.event_data).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..MESSAGES as u64).collect::<Vec<_>>());
    let recorded_by = format!("amqp:{}", amqp.queue);
    assert!(events.iter().all(|e| e.recorded_by == recorded_by));
}

async fn poison_is_dead_lettered_and_a_refusing_database_holds_messages(backend: Backend) {
    let amqp = TestQueue::create().await;
    let db = TestDb::new(backend).await;
    let app = spawn_with(db.share(), with_amqp(&db, amqp.settings())).await;
    let plain = BasicProperties::default;
    amqp.publish(Some("good-1"), &event(1), plain()).await;
    amqp.publish(Some("poison"), b"this is not an event", plain())
        .await;
    amqp.publish(Some("good-2"), &event(2), plain()).await;
    db.wait_for_events("default", 2, Duration::from_secs(30))
        .await;
    let letters = amqp.dead_letters(1).await;
    assert_eq!(letters[0].1, b"this is not an event");
    assert!(letters[0].0.contains("body"), "{}", letters[0].0);

    db.refuse_inserts("default").await;
    for i in 3..6 {
        amqp.publish(Some(&format!("good-{i}")), &event(i), plain())
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.count_events("default").await, 2);
    db.accept_inserts().await;
    db.wait_for_events("default", 5, Duration::from_secs(60))
        .await;
    assert_gapless_chain(&app.all_events().await);
}

/// A dead-letter queue deleted while the service runs is declared again, and the dead letter
/// kept in it; an empty `message-id` is no id (two such messages are two events).
async fn a_deleted_dead_letter_queue_comes_back_and_empty_ids_are_none(backend: Backend) {
    let amqp = TestQueue::create().await;
    let db = TestDb::new(backend).await;
    let _app = spawn_with(db.share(), with_amqp(&db, amqp.settings())).await;
    let plain = BasicProperties::default;
    amqp.publish(Some(""), &event(1), plain()).await;
    amqp.publish(Some(""), &event(2), plain()).await;
    db.wait_for_events("default", 2, Duration::from_secs(30))
        .await;

    amqp.channel
        .queue_delete(
            format!("{}.dead", amqp.queue).as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    amqp.publish(
        Some("poison"),
        b"not an event after the queue went",
        plain(),
    )
    .await;
    amqp.publish(Some("good-3"), &event(3), plain()).await;
    db.wait_for_events("default", 3, Duration::from_secs(30))
        .await;
    amqp.wait_for_the_dead_letter_queue().await;
    let letters = amqp.dead_letters(1).await;
    assert_eq!(letters[0].1, b"not an event after the queue went");
}

/// The broker closes the consumer's connection (as a broker restart or failover does); the
/// consumer reconnects, and a binary-mode CloudEvent sent meanwhile is recorded once.
async fn the_consumer_reconnects_and_takes_cloudevents_in_headers(backend: Backend) {
    let amqp = TestQueue::create().await;
    let db = TestDb::new(backend).await;
    let app = spawn_with(db.share(), with_amqp(&db, amqp.settings())).await;
    amqp.publish(Some("first"), &event(1), BasicProperties::default())
        .await;
    db.wait_for_events("default", 1, Duration::from_secs(30))
        .await;

    let connection_of = |queue: &str| {
        let connections = std::process::Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&connections.stdout)
            .lines()
            .find(|line| line.contains(&format!("auditor {queue}")))
            .map(|line| line.split('\t').next().unwrap_or_default().to_owned())
    };
    let pid = connection_of(&amqp.queue).expect("the consumer's connection is listed");
    // The listing below, not rabbitmqctl's exit status, says whether it is gone.
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "the test closes it"])
        .output()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while connection_of(&amqp.queue).as_deref() == Some(pid.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:id", "inv-9"),
        ("cloudEvents:source", "/billing"),
        ("cloudEvents:type", "com.acme.invoice.paid"),
        ("cloudEvents:authid", "dora"),
    ] {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }
    let cloudevent = BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into());
    for _ in 0..2 {
        amqp.publish(None, br#"{"amount": 12.5}"#, cloudevent.clone())
            .await;
    }
    db.wait_for_events("default", 2, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        db.count_events("default").await,
        2,
        "the repeat is a replay"
    );
    let events = app.all_events().await;
    let paid: Value = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(paid["event_type"], "com.acme.invoice.paid");
    assert_eq!(paid["user_identity"], "dora");
    assert_eq!(paid["idempotency_key"], "ce:8:/billing:inv-9");
    assert_eq!(paid["event_data"], json!({"amount": 12.5}));
}

/// A dead-letter queue that may discard what it confirms (not durable, or with a length limit)
/// keeps the consumer from starting: a poison message would be acknowledged, then lost.
#[tokio::test]
async fn a_dead_letter_queue_that_discards_is_refused() {
    let amqp = TestQueue::create().await;
    let limited = format!("{}.limited", amqp.queue);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    amqp.channel
        .queue_declare(
            limited.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let settings = AmqpSettings {
        dead_letter_queue: limited.clone(),
        ..amqp.settings()
    };
    let _app = spawn_with(db.share(), with_amqp(&db, settings)).await;
    amqp.publish(Some("good-1"), &event(1), BasicProperties::default())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.count_events("default").await, 0, "not started");
    let waiting = amqp
        .channel
        .queue_declare(
            amqp.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(waiting.message_count(), 1, "the message waits in its queue");
}

crate::both_backends!(
    a_deleted_dead_letter_queue_comes_back_and_empty_ids_are_none,
    every_message_is_stored_once_through_a_sigkill,
    poison_is_dead_lettered_and_a_refusing_database_holds_messages,
    the_consumer_reconnects_and_takes_cloudevents_in_headers,
);

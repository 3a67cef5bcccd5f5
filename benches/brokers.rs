//! Events per second through each message broker, end to end: a producer publishes
//! `BENCH_BROKER_EVENTS` messages (one event each, with a message id, confirmed by the broker) as
//! fast as the broker takes them while the service consumes them; the clock runs from the first
//! publish until the last event is committed. The service runs in this process, on the machine's
//! NATS JetStream (127.0.0.1:4222) and RabbitMQ (127.0.0.1:5672).
//!
//! `cargo bench --bench brokers`. Environment: `BENCH_BROKER_EVENTS` (default 100000),
//! `BENCH_BACKENDS` (default "sqlite postgres"), `BENCH_BROKERS` (default "nats amqp"),
//! `AUDITOR_BENCH_DATABASE_URL` (a PostgreSQL where a scratch database may be created).
//! Prints one line per broker and backend: `broker backend events/s`.

mod common;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use auditor::config::{DatabaseUrl, Settings};
use auditor::ingest::amqp::AmqpSettings;
use auditor::ingest::nats::NatsSettings;
use common::{BenchDatabase, env_number};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

const NATS_URL: &str = "nats://127.0.0.1:4222";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Publishes awaiting the broker's confirmation at once.
const IN_FLIGHT: usize = 2_000;

fn body(i: u64) -> Vec<u8> {
    let n = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    serde_json::json!({
        "event_type": "bench.broker",
        "user_identity": format!("broker-{}", n % 997),
        "action": "create",
        "entity": "account",
        "entity_id": n.to_string(),
        "event_data": {"account_id": n % 100_003, "note": "load test", "n": n}
    })
    .to_string()
    .into_bytes()
}

/// The database's event count, as the service sees it committed.
async fn count(url: &str) -> i64 {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(path).expect("open");
            conn.busy_timeout(Duration::from_secs(5)).expect("busy");
            conn.query_row(
                "SELECT count(*) FROM events WHERE tenant = 'default'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0)
        })
        .await
        .expect("count")
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant = 'default'")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0)
    }
}

async fn wait_for(url: &str, events: i64) {
    while count(url).await < events {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves `url` with `settings`' consumers until the returned token is cancelled.
async fn serve(
    url: &str,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut Settings),
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut settings = Settings::defaults();
    settings.database_url = DatabaseUrl::new(url);
    settings.admin_password = Some(auditor::config::Secret::new("bench-admin-password"));
    settings.integrity.signing_key_file = dir.join("auditor.key");
    settings.audit_reads = false;
    configure(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            auditor::server::serve_with_listener(settings, listener, stop, true)
                .await
                .expect("serve");
        }
    });
    // Migrated and consuming once the (empty) log answers a count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (stop, server)
}

async fn nats_rate(url: &str, dir: &std::path::Path, events: u64) -> f64 {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let client = async_nats::connect(NATS_URL).await.expect("NATS");
    let context = jetstream::new(client);
    let stream_name = format!("BENCH_{id}");
    context
        .get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("bench.{id}.>"), format!("bench.{id}-dead")],
            ..Default::default()
        })
        .await
        .expect("stream");
    let nats = NatsSettings {
        url: NATS_URL.into(),
        stream: stream_name.clone(),
        consumer: "auditor".into(),
        subject: format!("bench.{id}.>"),
        tenant: "default".into(),
        dead_letter_subject: format!("bench.{id}-dead"),
        batch: 256,
        ack_wait_secs: 30,
    };
    let (stop, server) = serve(url, dir, |s| s.ingest.nats = vec![nats]).await;
    let started = Instant::now();
    let subject = format!("bench.{id}.events");
    let mut pending = FuturesUnordered::new();
    for i in 0..events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let ack = context
            .publish_with_headers(subject.clone(), headers, body(i).into())
            .await
            .expect("publish");
        pending.push(ack.into_future());
        while pending.len() >= IN_FLIGHT {
            pending.next().await.expect("pending").expect("ack");
        }
    }
    while let Some(ack) = pending.next().await {
        ack.expect("ack");
    }
    wait_for(url, events as i64).await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = server.await;
    let _ = context.delete_stream(&stream_name).await;
    rate
}

async fn amqp_rate(url: &str, dir: &std::path::Path, events: u64) -> f64 {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let queue = format!("bench.{id}");
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for name in [queue.clone(), format!("{queue}.dead")] {
        channel
            .queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .expect("queue");
    }
    let amqp = AmqpSettings {
        url: AMQP_URL.into(),
        queue: queue.clone(),
        tenant: "default".into(),
        dead_letter_queue: format!("{queue}.dead"),
        prefetch: 1000,
    };
    let (stop, server) = serve(url, dir, |s| s.ingest.amqp = vec![amqp]).await;
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..events {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("m-{i}").into());
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body(i),
                properties,
            )
            .await
            .expect("publish");
        pending.push(confirm);
        while pending.len() >= IN_FLIGHT {
            pending.next().await.expect("pending").expect("confirm");
        }
    }
    while let Some(confirm) = pending.next().await {
        confirm.expect("confirm");
    }
    wait_for(url, events as i64).await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = server.await;
    for name in [queue.clone(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
    rate
}

#[tokio::main]
async fn main() {
    auditor::tls::install_crypto_provider();
    let events = env_number("BENCH_BROKER_EVENTS", 100_000);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite postgres".into());
    let brokers = std::env::var("BENCH_BROKERS").unwrap_or_else(|_| "nats amqp".into());
    for broker in brokers.split_whitespace() {
        for backend in backends.split_whitespace() {
            let dir = tempfile::tempdir().expect("temp dir");
            let database = if backend == "postgres" {
                Some(BenchDatabase::create("auditor_bench_broker").await)
            } else {
                None
            };
            let url = match &database {
                Some(db) => db.url.clone(),
                None => format!("sqlite://{}", dir.path().join("auditor.db").display()),
            };
            let rate = match broker {
                "nats" => nats_rate(&url, dir.path(), events).await,
                "amqp" => amqp_rate(&url, dir.path(), events).await,
                other => panic!("unknown broker {other}"),
            };
            println!("{broker} {backend} {rate:.0}");
            if let Some(db) = database {
                db.drop_now().await;
            }
        }
    }
}

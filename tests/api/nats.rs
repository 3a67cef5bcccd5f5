//! NATS JetStream into the log (`[[ingest.nats]]`), against the machine's NATS server (and, to
//! restart the broker, one the test starts itself): every message stored once through a SIGKILL
//! of the service, a poison message dead-lettered without holding up the rest, a database that
//! refuses writes and comes back, and a broker that restarts.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use auditor::config::Settings;
use auditor::ingest::nats::NatsSettings;
use serde_json::Value;

use crate::helpers::{
    Backend, ServerProcess, TestDb, assert_gapless_chain, settings_for, spawn_with,
};

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A stream of the test's own (subjects `audit.<id>.>`) and one for its dead letters.
struct TestStream {
    url: String,
    id: String,
    context: jetstream::Context,
}

impl TestStream {
    async fn create(url: &str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let client = async_nats::connect(url).await.expect("NATS is up");
        let context = jetstream::new(client);
        for (name, subject) in [
            (format!("AUDIT_{id}"), format!("audit.{id}.>")),
            (format!("DEAD_{id}"), format!("dead.{id}")),
        ] {
            context
                .get_or_create_stream(stream::Config {
                    name,
                    subjects: vec![subject],
                    ..Default::default()
                })
                .await
                .expect("create a stream");
        }
        Self {
            url: url.to_owned(),
            id,
            context,
        }
    }

    fn settings(&self) -> NatsSettings {
        NatsSettings {
            url: self.url.clone(),
            stream: format!("AUDIT_{}", self.id),
            consumer: "auditor".into(),
            subject: format!("audit.{}.>", self.id),
            tenant: "default".into(),
            dead_letter_subject: format!("dead.{}", self.id),
            batch: 256,
            ack_wait_secs: 30,
        }
    }

    fn toml(&self) -> String {
        let s = self.settings();
        format!(
            "[[ingest.nats]]\nurl = \"{}\"\nstream = \"{}\"\nconsumer = \"{}\"\nsubject = \"{}\"\n\
             tenant = \"default\"\ndead_letter_subject = \"{}\"\n",
            s.url, s.stream, s.consumer, s.subject, s.dead_letter_subject
        )
    }

    /// Publishes `body`, with `Nats-Msg-Id` when `id` is given, and waits for the stream's ack.
    async fn publish(&self, id: Option<&str>, body: &[u8]) {
        let mut headers = HeaderMap::new();
        if let Some(id) = id {
            headers.insert("Nats-Msg-Id", id);
        }
        self.context
            .publish_with_headers(
                format!("audit.{}.events", self.id),
                headers,
                body.to_vec().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("the stream took it");
    }

    /// The dead letters so far: each one's `Auditor-Error` and body.
    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        self.dead_letters_with("Auditor-Error").await
    }

    /// Every message in the stream `name` (`AUDIT_<id>` or `DEAD_<id>`), in order.
    async fn messages(&self, name: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let stream = self.context.get_stream(name).await.unwrap();
        let count = stream.get_info().await.unwrap().state.messages;
        let mut messages = Vec::new();
        for sequence in 1..=count {
            messages.push(stream.get_raw_message(sequence).await.unwrap());
        }
        messages
    }

    /// The dead letters so far: each one's header `name` and body.
    async fn dead_letters_with(&self, name: &str) -> Vec<(String, Vec<u8>)> {
        let mut letters = Vec::new();
        for message in self.messages(&format!("DEAD_{}", self.id)).await {
            let error = message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            letters.push((error, message.payload.to_vec()));
        }
        letters
    }
}

fn event(i: usize) -> Vec<u8> {
    crate::helpers::numbered_event("nats.event", i)
}

fn with_nats(db: &TestDb, nats: NatsSettings) -> Settings {
    let mut settings = settings_for(db);
    settings.ingest.nats = vec![nats];
    settings
}

/// 10,000 messages, half with a `Nats-Msg-Id` and half keyed by their stream sequence; the
/// service is SIGKILLed midway and started again: every message is stored once, in one
/// gapless chain.
async fn every_message_is_stored_once_through_a_sigkill(backend: Backend) {
    const MESSAGES: usize = 10_000;
    let nats = TestStream::create(NATS_URL).await;
    for i in 0..MESSAGES {
        let id = format!("msg-{i}");
        nats.publish((i % 2 == 0).then_some(id.as_str()), &event(i))
            .await;
    }
    let db = TestDb::new(backend).await;
    let config = db.dir.path().join("auditor.toml");
    std::fs::write(&config, nats.toml()).unwrap();
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

    let settings = with_nats(&db, nats.settings());
    let app = spawn_with(db.share(), settings).await;
    db.wait_for_events("default", MESSAGES as i64, Duration::from_secs(120))
        .await;
    // Redeliveries of what was committed but not acknowledged are replays, not new events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.count_events("default").await, MESSAGES as i64);
    let events = app.all_events().await;
    assert_gapless_chain(&events);
    let mut seen: Vec<u64> = events
        .iter()
        .map(|e| {
            let data: Value = serde_json::to_value(&e.event_data).unwrap();
            data["i"].as_u64().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..MESSAGES as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.recorded_by == "nats:auditor"));
}

/// A message that is not an event goes to the dead-letter subject with the reason; the ones
/// after it are recorded. While the database refuses writes, nothing is acknowledged or
/// dead-lettered, and once it takes them the waiting messages flow in.
async fn poison_is_dead_lettered_and_a_refusing_database_holds_messages(backend: Backend) {
    let nats = TestStream::create(NATS_URL).await;
    let db = TestDb::new(backend).await;
    let app = spawn_with(db.share(), with_nats(&db, nats.settings())).await;
    nats.publish(Some("good-1"), &event(1)).await;
    nats.publish(Some("poison"), b"this is not an event").await;
    nats.publish(Some("incomplete"), br#"{"event_type": "no.user"}"#)
        .await;
    nats.publish(Some("good-2"), &event(2)).await;
    db.wait_for_events("default", 2, Duration::from_secs(30))
        .await;
    let letters = nats.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].1, b"this is not an event");
    assert!(letters[0].0.contains("body"), "{}", letters[0].0);
    assert!(letters[1].0.contains("user_identity"), "{}", letters[1].0);
    let originals = nats.dead_letters_with("Auditor-Original-Msg-Id").await;
    assert_eq!(originals[0].0, "poison", "the producer's own id, kept");

    db.refuse_inserts("default").await;
    for i in 3..6 {
        nats.publish(Some(&format!("good-{i}")), &event(i)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.count_events("default").await, 2);
    assert_eq!(
        nats.dead_letters().await.len(),
        2,
        "refusals are not the messages' fault"
    );
    db.accept_inserts().await;
    db.wait_for_events("default", 5, Duration::from_secs(60))
        .await;
    assert_gapless_chain(&app.all_events().await);
}

/// The README's layout: the dead-letter subject within the consumed one. No consumer records
/// or dead-letters a dead letter again (here a second one reads nothing else); a dead letter's
/// id names its consumer; an empty `Nats-Msg-Id` is no id; a poison message too large to be
/// published again with the added headers is dead-lettered with its head only.
async fn dead_letters_within_the_subject_are_passed_over_and_kept_per_consumer(backend: Backend) {
    let nats = TestStream::create(NATS_URL).await;
    let db = TestDb::new(backend).await;
    let within = format!("audit.{}.dead", nats.id);
    let first = NatsSettings {
        dead_letter_subject: within.clone(),
        ..nats.settings()
    };
    let second = NatsSettings {
        consumer: "auditor2".into(),
        subject: format!("audit.{}.dead", nats.id),
        ..first.clone()
    };
    let mut settings = settings_for(&db);
    settings.ingest.nats = vec![first, second];
    let app = spawn_with(db.share(), settings).await;

    nats.publish(Some(""), &event(1)).await;
    nats.publish(Some(""), &event(2)).await;
    nats.publish(Some("poison"), b"not an event").await;
    let limit = nats.context.client().server_info().max_payload;
    nats.publish(Some("huge"), &vec![b'y'; limit - 64]).await;
    nats.publish(Some("good-3"), &event(3)).await;
    // The header alone, off the dead-letter subject, passes nothing over.
    let mut forged = HeaderMap::new();
    forged.insert("Nats-Msg-Id", "forged");
    forged.insert("Auditor-Error", "whatever");
    nats.context
        .publish_with_headers(format!("audit.{}.events", nats.id), forged, event(4).into())
        .await
        .unwrap()
        .await
        .unwrap();
    db.wait_for_events("default", 4, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        db.count_events("default").await,
        4,
        "two empty ids, two events; and one with a forged Auditor-Error"
    );

    let mut letters = Vec::new();
    for message in nats.messages(&format!("AUDIT_{}", nats.id)).await {
        if message.subject.as_str() == within {
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            letters.push((
                header("Nats-Msg-Id"),
                header("Auditor-Truncated-From"),
                message.payload.len(),
            ));
        }
    }
    // The first consumer's two dead letters (the poison and the huge one), kept in the stream
    // and passed over by both consumers; the second consumer reads only the dead letters.
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[0].0.contains(":auditor:"), "{letters:?}");
    assert_eq!(letters[0].1, "");
    assert_eq!(letters[1].1, (limit - 64).to_string());
    assert!(letters[1].2 < limit - 64, "{letters:?}");
    assert_gapless_chain(&app.all_events().await);
}

/// A NATS server of the test's own, with JetStream in a directory of its own, on `port`.
fn start_nats_server(port: u16, store: &std::path::Path) -> std::process::Child {
    std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server")
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server on {port} did not start");
}

async fn the_consumer_carries_on_after_the_broker_restarts(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile::tempdir().unwrap();
    let mut broker = start_nats_server(port, store.path());
    wait_for_port(port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let nats = TestStream::create(&url).await;
    let db = TestDb::new(backend).await;
    let _app = spawn_with(db.share(), with_nats(&db, nats.settings())).await;
    for i in 0..100 {
        nats.publish(Some(&format!("before-{i}")), &event(i)).await;
    }
    db.wait_for_events("default", 100, Duration::from_secs(30))
        .await;

    broker.kill().unwrap();
    broker.wait().unwrap();
    let mut broker = start_nats_server(port, store.path());
    wait_for_port(port).await;
    let nats = TestStream::create_existing(&url, &nats.id).await;
    for i in 100..200 {
        nats.publish(Some(&format!("after-{i}")), &event(i)).await;
    }
    db.wait_for_events("default", 200, Duration::from_secs(90))
        .await;
    broker.kill().unwrap();
    let _ = broker.wait();
}

impl TestStream {
    /// The streams of `id`, on a broker that kept them across its restart.
    async fn create_existing(url: &str, id: &str) -> Self {
        let client = async_nats::connect(url).await.expect("NATS is up");
        Self {
            url: url.to_owned(),
            id: id.to_owned(),
            context: jetstream::new(client),
        }
    }
}

/// PostgreSQL goes away under the consumer (its connections cut) and comes back: the messages
/// published meanwhile wait, unacknowledged, and are all stored once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_out_a_database_outage() {
    let nats = TestStream::create(NATS_URL).await;
    let settings = nats.settings();
    let (app, proxy) =
        crate::lifecycle::spawn_behind_proxy_with(|s| s.ingest.nats = vec![settings]).await;
    nats.publish(Some("before"), &event(0)).await;
    app.db
        .wait_for_events("default", 1, Duration::from_secs(30))
        .await;
    proxy.cut().await;
    for i in 1..=50 {
        nats.publish(Some(&format!("during-{i}")), &event(i)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.db.count_events("default").await,
        1,
        "nothing while it is down"
    );
    assert!(
        nats.dead_letters().await.is_empty(),
        "an outage is no message's fault"
    );
    proxy.restore();
    app.db
        .wait_for_events("default", 51, Duration::from_secs(90))
        .await;
    assert_gapless_chain(&app.all_events().await);
}

/// A dead letter is never given up for lost: a stream that refuses it (here one whose message
/// size limit is too small for it) leaves the original unacknowledged, to be dead-lettered once
/// the stream takes it; and a dead-letter subject kept by an interest stream on which no
/// consumer reads it (each dead letter would be discarded at once) keeps the consumer from
/// starting until such a consumer exists, and holds a poison message back while that consumer
/// is gone.
async fn dead_letters_are_never_discarded(backend: Backend) {
    let nats = TestStream::create(NATS_URL).await;
    let dead = format!("DEAD_{}", nats.id);
    let mut config = nats
        .context
        .get_stream(&dead)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_message_size = 16;
    nats.context.update_stream(&config).await.unwrap();
    let db = TestDb::new(backend).await;
    let mut app = spawn_with(db.share(), with_nats(&db, nats.settings())).await;
    nats.publish(
        Some("poison"),
        b"this is not an event, and longer than 16 bytes",
    )
    .await;
    nats.publish(Some("good-1"), &event(1)).await;
    db.wait_for_events("default", 1, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        nats.dead_letters().await.is_empty(),
        "refused by its stream"
    );
    let audit = nats
        .context
        .get_stream(format!("AUDIT_{}", nats.id))
        .await
        .unwrap();
    // The good event's acknowledgement may reach the server after its commit: wait until the
    // count settles, then hold it, so that a poison dropped later is still seen.
    let unacknowledged = || async {
        let info = audit.consumer_info("auditor").await.unwrap().clone();
        info.num_ack_pending + info.num_pending as usize
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while unacknowledged().await > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(unacknowledged().await, 1, "the poison is kept");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(unacknowledged().await, 1, "the poison is still kept");
    config.max_message_size = -1;
    nats.context.update_stream(&config).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while nats.dead_letters().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered once the stream takes it"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let letters = nats.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].1.starts_with(b"this is not an event"));
    let mut ack_pending = usize::MAX;
    for _ in 0..50 {
        ack_pending = audit
            .consumer_info("auditor")
            .await
            .unwrap()
            .num_ack_pending;
        if ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ack_pending, 0, "acknowledged once dead-lettered");
    app.stop().await.unwrap();

    // Dead letters on a subject of an interest stream that no consumer reads.
    let interest = format!("INTEREST_{}", nats.id);
    let subject = format!("deadinterest.{}", nats.id);
    nats.context
        .get_or_create_stream(stream::Config {
            name: interest.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .unwrap();
    let settings = NatsSettings {
        consumer: "interested".into(),
        dead_letter_subject: subject.clone(),
        ..nats.settings()
    };
    let mut app = spawn_with(db.share(), with_nats(&db, settings)).await;
    nats.publish(Some("good-2"), &event(2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.count_events("default").await, 1, "not started");
    let reader = jetstream::consumer::pull::Config {
        durable_name: Some("dead-letter-reader".into()),
        filter_subject: subject,
        ..Default::default()
    };
    nats.context
        .create_consumer_on_stream(reader.clone(), &interest)
        .await
        .unwrap();
    db.wait_for_events("default", 2, Duration::from_secs(60))
        .await;

    // That reader gone while the consumer runs: a poison message waits, unacknowledged, for it.
    let interest_stream = nats.context.get_stream(&interest).await.unwrap();
    interest_stream
        .delete_consumer("dead-letter-reader")
        .await
        .unwrap();
    nats.publish(Some("poison-2"), b"not an event either").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let consumer = audit.consumer_info("interested").await.unwrap().clone();
    assert_eq!(
        consumer.num_ack_pending + consumer.num_pending as usize,
        1,
        "the poison is kept while nothing would keep its dead letter"
    );
    nats.context
        .create_consumer_on_stream(reader, &interest)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut interest_stream = nats.context.get_stream(&interest).await.unwrap();
        if interest_stream.info().await.unwrap().state.messages == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered once a reader is back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await.unwrap();
}

/// A durable consumer made before takes the configuration's subject (and acknowledgement
/// settings) when the service starts again with others: what is logged as consumed is.
async fn a_changed_subject_is_applied_to_the_durable_consumer(backend: Backend) {
    let nats = TestStream::create(NATS_URL).await;
    let db = TestDb::new(backend).await;
    let mut app = spawn_with(db.share(), with_nats(&db, nats.settings())).await;
    nats.publish(Some("first"), &event(1)).await;
    db.wait_for_events("default", 1, Duration::from_secs(30))
        .await;
    app.stop().await.unwrap();

    let narrowed = NatsSettings {
        subject: format!("audit.{}.only", nats.id),
        ack_wait_secs: 20,
        ..nats.settings()
    };
    let mut app = spawn_with(db.share(), with_nats(&db, narrowed)).await;
    // `events` is outside the new filter; `only` within it.
    nats.publish(Some("outside"), &event(2)).await;
    nats.context
        .publish_with_headers(
            format!("audit.{}.only", nats.id),
            async_nats::HeaderMap::new(),
            event(3).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    db.wait_for_events("default", 2, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.count_events("default").await,
        2,
        "the old filter no longer applies"
    );
    let stream = nats
        .context
        .get_stream(format!("AUDIT_{}", nats.id))
        .await
        .unwrap();
    let info = stream.consumer_info("auditor").await.unwrap();
    assert_eq!(
        info.config.filter_subject,
        format!("audit.{}.only", nats.id)
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(20));
    app.stop().await.unwrap();
}

crate::both_backends!(
    a_changed_subject_is_applied_to_the_durable_consumer,
    dead_letters_are_never_discarded,
    dead_letters_within_the_subject_are_passed_over_and_kept_per_consumer,
    every_message_is_stored_once_through_a_sigkill,
    poison_is_dead_lettered_and_a_refusing_database_holds_messages,
    the_consumer_carries_on_after_the_broker_restarts,
);

/// A stream that does not exist, or a server that does not answer, is said in words that name
/// them and where (without the URL's password), not as the client library's bare error.
#[tokio::test]
async fn a_missing_stream_or_server_is_named() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = db.dir.path().join("auditor.toml");
    std::fs::write(
        &config,
        "[[ingest.nats]]\nurl = \"nats://127.0.0.1:4222\"\nstream = \"NO_SUCH_STREAM\"\n\
         consumer = \"auditor\"\nsubject = \"nowhere.>\"\ndead_letter_subject = \"nowhere.dead\"\n\
         [[ingest.nats]]\nurl = \"nats://user:hunter2@127.0.0.1:1\"\nstream = \"S\"\n\
         consumer = \"c\"\nsubject = \"s.>\"\ndead_letter_subject = \"s.dead\"\n",
    )
    .unwrap();
    let mut server =
        ServerProcess::serve_with_env(&db, &[("AUDITOR_CONFIG", config.to_str().unwrap())]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.terminate();
    let (_, log) = server.wait();
    assert!(
        log.contains("has no JetStream stream `NO_SUCH_STREAM`"),
        "{log}"
    );
    assert!(
        log.contains("cannot connect to NATS at nats://user:***@127.0.0.1:1"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}

/// A durable consumer whose subject is changed while messages of the old subject are unread:
/// those the new subject does not match will not be consumed, and the service says so.
#[tokio::test]
async fn a_subject_changed_over_unread_messages_is_warned_of() {
    let nats = TestStream::create(NATS_URL).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let config = db.dir.path().join("auditor.toml");
    std::fs::write(&config, nats.toml()).unwrap();
    let env = [("AUDITOR_CONFIG", config.to_str().unwrap())];
    let mut server = ServerProcess::serve_with_env(&db, &env);
    nats.publish(Some("first"), &event(1)).await;
    db.wait_for_events("default", 1, Duration::from_secs(30))
        .await;
    server.terminate();
    server.wait();

    nats.publish(Some("unread-1"), &event(2)).await;
    nats.publish(Some("unread-2"), &event(3)).await;
    let old = format!("audit.{}.>", nats.id);
    let narrowed = nats
        .toml()
        .replace(&old, &format!("audit.{}.only", nats.id));
    std::fs::write(&config, narrowed).unwrap();
    let mut server = ServerProcess::serve_with_env(&db, &env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.terminate();
    let (_, log) = server.wait();
    assert!(
        log.contains("subject changed while messages of the old one were unread")
            && log.contains("unread=2"),
        "{log}"
    );
}

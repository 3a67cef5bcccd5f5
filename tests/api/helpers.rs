//! `spawn_app(backend)`: a real server on a random port over its own fresh database.

use std::path::PathBuf;

use auditor::auth::Role;
use auditor::auth::users;
use auditor::config::{DatabaseUrl, Secret};
use auditor::integrity::{Digest, chain_hash, leaf_hash};
use auditor::model::{Event, TenantScope};
use auditor::server::ServeError;
use auditor::store::{PgStore, PostingOptions, SqliteStore, Store};
use auditor::{Settings, serve_with_listener};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The migrations after `applied` that this build embeds for `backend`, in order: one per
/// numbered file in `src/store/migrations/<backend>/`.
pub fn migrations_after(backend: Backend, applied: i64) -> Vec<i64> {
    let dir = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/store/migrations")
        .join(dir);
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.split('_').next()?.parse().ok()
        })
        .filter(|&version| version > applied)
        .collect();
    versions.sort_unstable();
    versions
}

pub const ADMIN: (&str, &str) = ("admin", "secret");
pub const WRITER: (&str, &str) = ("writer", "writer-password-1");
pub const READER: (&str, &str) = ("reader", "reader-password-1");

/// An error of a statement run directly on the database.
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// A database of its own for one test: a temp SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// Holds the SQLite file and the signing key.
    pub dir: tempfile::TempDir,
}

/// The PostgreSQL where tests create their databases (`AUDITOR_TEST_DATABASE_URL`).
pub fn postgres_admin_url() -> String {
    std::env::var("AUDITOR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path: PathBuf = dir.path().join("auditor.db");
                Self {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    dir,
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                // `scripts/test` names its run, so that it drops its own databases only.
                let run = std::env::var("AUDITOR_TEST_RUN").unwrap_or_default();
                let name = format!("auditor_test_{run}{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at {admin_url} (AUDITOR_TEST_DATABASE_URL): {e}; run ./scripts/test, which starts one")
                    });
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("database URL ends with /database");
                Self {
                    backend,
                    url: format!("{base}/{name}"),
                    dir: tempfile::tempdir().expect("temp dir"),
                }
            }
        }
    }

    /// Another handle on the same database, for a second server. The original must outlive it:
    /// it owns the SQLite file and the signing key, which `settings_for(original)` points at.
    pub fn share(&self) -> Self {
        Self {
            backend: self.backend,
            url: self.url.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Runs SQL directly, as someone with database access (not through the service) would.
    pub async fn execute(&self, sql: &str) -> Result<u64, DbError> {
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path();
                let sql = sql.to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path)?;
                    conn.busy_timeout(std::time::Duration::from_secs(5))?;
                    let before = conn.total_changes();
                    conn.execute_batch(&sql)?;
                    Ok(conn.total_changes() - before)
                })
                .await
                .expect("the statement's thread")
            }
            Backend::Postgres => {
                let sql = sqlx::AssertSqlSafe(sql.to_owned());
                let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                Ok(sqlx::raw_sql(sql).execute(&mut conn).await?.rows_affected())
            }
        }
    }

    /// How many events `tenant` has, counted in the database itself.
    pub async fn count_events(&self, tenant: &str) -> i64 {
        let sql = "SELECT count(*) FROM events WHERE tenant = $1";
        match self.backend {
            Backend::Sqlite => {
                let (path, tenant) = (self.sqlite_path(), tenant.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).expect("open");
                    conn.busy_timeout(std::time::Duration::from_secs(5))
                        .expect("busy timeout");
                    conn.query_row(&sql.replace("$1", "?1"), [tenant], |row| row.get(0))
                        .expect("count")
                })
                .await
                .expect("the count's thread")
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .bind(tenant)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count")
            }
        }
    }

    /// Waits until `tenant` holds exactly `expected` events (never more), for at most `within`.
    pub async fn wait_for_events(&self, tenant: &str, expected: i64, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let count = self.count_events(tenant).await;
            if count == expected {
                return;
            }
            assert!(
                count < expected,
                "{count} events stored, more than {expected}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} of {expected} events stored within {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Makes the database refuse every new event of `tenant` (a trigger raising an error), as a
    /// full disk or a broken constraint would; [`TestDb::accept_inserts`] undoes it.
    pub async fn refuse_inserts(&self, tenant: &str) {
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.tenant = '{tenant}' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            ),
            Backend::Postgres => format!(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.tenant = '{tenant}' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW \
                 EXECUTE FUNCTION refuse()"
            ),
        };
        self.execute(&sql).await.expect("the refusing trigger");
    }

    pub async fn accept_inserts(&self) {
        let sql = match self.backend {
            Backend::Sqlite => "DROP TRIGGER refuse",
            Backend::Postgres => "DROP TRIGGER refuse ON events",
        };
        self.execute(sql).await.expect("drop the refusing trigger");
    }

    /// The SQLite database's file.
    pub fn sqlite_path(&self) -> PathBuf {
        assert_eq!(self.backend, Backend::Sqlite, "sqlite_path is for SQLite");
        PathBuf::from(self.url.trim_start_matches("sqlite://"))
    }

    /// A connection of its own to the SQLite file, outside the service.
    pub fn sqlite_connection(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.sqlite_path()).expect("open the SQLite file")
    }

    /// Runs a query directly and returns its first column, which must be text (PostgreSQL).
    pub async fn fetch_strings(&self, sql: &str) -> Result<Vec<String>, sqlx::Error> {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "fetch_strings is for PostgreSQL"
        );
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
    }

    /// The SQLite store with tiny postings runs, so that the tests' few events go through
    /// every stage (tail, flushed runs, merges across tiers) while the suite runs.
    pub async fn sqlite(&self) -> SqliteStore {
        let postings = PostingOptions {
            run_events: 4,
            fanout: 3,
            chunk_rows: 7,
        };
        SqliteStore::connect_with(&self.url, 4, postings)
            .await
            .expect("open sqlite")
    }

    pub async fn postgres(&self) -> PgStore {
        PgStore::connect(&self.url, 4).await.expect("open postgres")
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub settings: Settings,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), ServeError>>>,
}

/// `command` with the signing key and log origin of `app`, as the `auditor` commands that
/// read or check its log need them.
pub fn with_log_key<'a>(
    command: &'a mut std::process::Command,
    app: &TestApp,
) -> &'a mut std::process::Command {
    command
        .env(
            "AUDITOR_INTEGRITY__SIGNING_KEY_FILE",
            &app.settings.integrity.signing_key_file,
        )
        .env(
            "AUDITOR_INTEGRITY__LOG_ORIGIN",
            &app.settings.integrity.log_origin,
        )
}

pub fn settings_for(db: &TestDb) -> Settings {
    let mut settings = Settings::defaults();
    settings.database_url = DatabaseUrl::new(db.url.clone());
    settings.admin_password = Some(Secret::new(ADMIN.1));
    settings.database.max_connections = 4;
    settings.integrity.signing_key_file = db.dir.path().join("auditor.key");
    settings.integrity.log_origin = "auditor.test/log".into();
    settings
}

/// Starts the server on `127.0.0.1:0` over a fresh database, with `admin`, `writer` and `reader`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    let settings = settings_for(&db);
    let app = spawn_with(db, settings).await;
    app.add_user(WRITER.0, Role::Writer, WRITER.1).await;
    app.add_user(READER.0, Role::Reader, READER.1).await;
    app
}

/// Like [`spawn_app`], but with the users added before the server starts, so that no change to
/// them is still on its way to the server (a notification, the next SQLite poll) when the test
/// begins: for tests of what the server keeps in memory.
pub async fn spawn_app_with_users_in_place(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => add_test_users(&db.sqlite().await).await,
        Backend::Postgres => add_test_users(&db.postgres().await).await,
    }
    let settings = settings_for(&db);
    spawn_with(db, settings).await
}

/// Migrates and adds `admin`, `writer` and `reader`, as [`spawn_app`] has them.
pub async fn add_test_users<S: Store>(store: &S) {
    store.migrate().await.expect("migrate");
    users::bootstrap_admin(store, Some(ADMIN.1.into()))
        .await
        .expect("add admin");
    for (name, role, password) in [
        (WRITER.0, Role::Writer, WRITER.1),
        (READER.0, Role::Reader, READER.1),
    ] {
        users::add(store, name, role, TenantScope::All, password.into())
            .await
            .expect("add user");
    }
}

/// An HTTP client for the tests. The process's rustls provider is installed first: the service's
/// own key-set client needs one, and shares its TLS build with this one.
pub fn http_client() -> reqwest::Client {
    auditor::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// The same, built from `builder`.
pub fn http_client_from(builder: reqwest::ClientBuilder) -> reqwest::Client {
    auditor::tls::install_crypto_provider();
    builder.build().expect("HTTP client")
}

pub async fn spawn_with(db: TestDb, settings: Settings) -> TestApp {
    let (address, shutdown, server) = start(settings.clone()).await;
    let mut app = TestApp {
        address,
        client: http_client(),
        db,
        settings,
        shutdown,
        server: Some(server),
    };
    app.wait_until_serving().await;
    app
}

async fn start(
    settings: Settings,
) -> (
    String,
    CancellationToken,
    JoinHandle<Result<(), ServeError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_with_listener(
        settings,
        listener,
        shutdown.clone(),
        true,
    ));
    (address, shutdown, server)
}

impl TestApp {
    pub async fn add_user(&self, name: &str, role: Role, password: &str) {
        self.add_user_in(name, role, TenantScope::All, password)
            .await;
    }

    /// Adds a user who acts in `tenant` only (or in all).
    pub async fn add_user_in(&self, name: &str, role: Role, tenant: TenantScope, password: &str) {
        let secret = password.to_owned();
        match self.db.backend {
            Backend::Sqlite => {
                users::add(&self.db.sqlite().await, name, role, tenant, secret).await
            }
            Backend::Postgres => {
                users::add(&self.db.postgres().await, name, role, tenant, secret).await
            }
        }
        .expect("add user");
    }

    pub async fn remove_user(&self, name: &str) {
        match self.db.backend {
            Backend::Sqlite => self.db.sqlite().await.remove_user(name).await,
            Backend::Postgres => self.db.postgres().await.remove_user(name).await,
        }
        .expect("remove user");
    }

    pub fn request(&self, method: Method, path: &str, who: Option<(&str, &str)>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.address));
        match who {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    pub async fn post_json(&self, path: &str, who: (&str, &str), body: &Value) -> Response {
        self.request(Method::POST, path, Some(who))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str, who: (&str, &str)) -> Response {
        self.request(Method::GET, path, Some(who))
            .send()
            .await
            .expect("request")
    }

    /// GET as admin, expecting 200, returning the JSON body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let response = self.get(path, ADMIN).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }

    /// The whole log, page by page, in `seq` order.
    pub async fn all_events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut path = "/events?limit=1000".to_owned();
        loop {
            let page = self.get_ok(&path).await;
            let batch: Vec<Event> = serde_json::from_value(page["events"].clone()).expect("events");
            events.extend(batch);
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/events?limit=1000&cursor={cursor}"),
                None => return events,
            }
        }
    }

    /// POSTs events as admin, expecting 201, returning the JSON body.
    pub async fn record(&self, body: Value) -> Value {
        let response = self.post_json("/events", ADMIN, &body).await;
        assert_eq!(response.status(), 201, "POST /events {body}");
        response.json().await.expect("json")
    }

    /// The listener is bound before the server starts, so this request waits in the backlog
    /// until migrations and the admin bootstrap are done and the server accepts it.
    async fn wait_until_serving(&mut self) {
        let health = self
            .client
            .get(format!("{}/healthz", self.address))
            .send()
            .await;
        if let Err(error) = health {
            let outcome = match self.server.take() {
                Some(server) => format!("{:?}", server.await),
                None => "not running".into(),
            };
            panic!("the server did not start ({error}); it ended with {outcome}");
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Stops the server and starts a new one over the same database.
    pub async fn restart(&mut self) {
        self.stop().await.expect("clean stop");
        let (address, shutdown, server) = start(self.settings.clone()).await;
        self.address = address;
        self.shutdown = shutdown;
        self.server = Some(server);
        self.wait_until_serving().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `auditor` binary serving `db` on a random port, its log collected. SIGKILLed on drop.
pub struct ServerProcess {
    child: std::process::Child,
    pub address: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    pub fn serve(db: &TestDb) -> Self {
        Self::serve_with_env(db, &[])
    }

    pub fn serve_with_env(db: &TestDb, env: &[(&str, &str)]) -> Self {
        Self::serve_on(db, "127.0.0.1:0", env)
    }

    /// Serving on `listen` (an address with port 0 for a random port).
    pub fn serve_on(db: &TestDb, listen: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
            .env_remove("AUDITOR_CONFIG")
            .envs(env.iter().copied())
            .args(["serve", "--migrate", "--listen", listen])
            .args(["--database-url", &db.url])
            .env(
                "AUDITOR_INTEGRITY__SIGNING_KEY_FILE",
                &settings_for(db).integrity.signing_key_file,
            )
            .env("AUDITOR_ADMIN_PASSWORD", ADMIN.1)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start auditor");
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let address = loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).expect("read the log");
            assert!(read > 0, "server exited before listening");
            log.lock().expect("log").push_str(&line);
            if let Some(address) = listening_address(&line) {
                break address;
            }
        };
        // The server logs every request: keep draining, or a full pipe would stall it.
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().expect("log").push_str(&format!("{line}\n"));
            }
        });
        Self {
            child,
            address,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as an operator stopping the service would.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit within `limit` (killing it and failing the test
    /// otherwise); returns its status and everything it logged.
    pub fn wait_within(
        &mut self,
        limit: std::time::Duration,
    ) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        while self.child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                self.kill();
                panic!("the server did not exit within {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.wait()
    }

    /// Waits for the process to exit; returns its status and everything it logged.
    pub fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("wait");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.log.lock().expect("log").clone();
        (status, log)
    }
}

/// The address from the "listening" line, in either log format.
fn listening_address(line: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["address"].as_str().map(str::to_owned);
    }
    let rest = line.split("address=").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of the `i`th event a producer sends in the broker tests: `event_type`, by
/// `producer`, with `{"i": i}` to tell the events apart.
pub fn numbered_event(event_type: &str, i: usize) -> Vec<u8> {
    serde_json::json!({"event_type": event_type, "user_identity": "producer", "event_data": {"i": i}})
        .to_string()
        .into_bytes()
}

/// Asserts that `events` (one tenant's log, in order) is the whole chain: `seq` 1..=n without
/// gaps, each `prev_hash` the previous `hash`, and each `hash` recomputed from the event.
pub fn assert_gapless_chain(events: &[Event]) {
    let mut prev = Digest::ZERO;
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.seq.0, index as i64 + 1, "seq without gaps");
        assert_eq!(event.prev_hash, prev, "prev_hash of seq {}", event.seq);
        assert_eq!(
            event.hash,
            chain_hash(&prev, &leaf_hash(event).unwrap()),
            "hash of seq {}",
            event.seq
        );
        prev = event.hash;
    }
}

/// Runs an async test body once per backend, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A submission of `events` (client JSON) to `tenant`, validated as the service does.
pub fn submission(tenant: &str, events: Value) -> auditor::model::Submission {
    use auditor::model::{Limits, NewEvent, RawEvent, Submission, TenantId};
    let raws: Vec<RawEvent> = serde_json::from_value(events).expect("raw events");
    Submission::new(
        TenantId::new(tenant),
        "tester",
        raws.into_iter()
            .map(|raw| NewEvent::parse(raw, &Limits::default()).expect("a valid event"))
            .collect(),
    )
}

/// The events of an append outcome that recorded something; panics on any other outcome.
pub fn created(outcome: &auditor::store::Appended) -> &[Event] {
    match outcome {
        auditor::store::Appended::Created { events, .. } => events,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// The redaction event the log appends for `target` (as `AuditLog::redact` builds it).
pub fn redaction(target: &auditor::model::Event) -> auditor::model::Submission {
    use auditor::model::{Limits, NewEvent, RawEvent, Submission};
    let raw: RawEvent = serde_json::from_value(serde_json::json!({
        "event_type": "audit.redacted", "user_identity": "admin", "action": "delete",
        "event_data": {"reason": "erasure request"}
    }))
    .unwrap();
    let mut event = NewEvent::parse_own(raw, &Limits::default()).unwrap();
    event.amends = Some(target.id);
    event.amends_hash = Some(target.hash);
    event.erases = Some(auditor::model::Erasure {
        targets: auditor::model::ErasureTargets::Event(target.id),
        fields: vec![auditor::model::Personal::EventData],
        reason: "erasure request".into(),
    });
    Submission::new(target.tenant.clone(), "admin", vec![event])
}

/// The Merkle tree of `leaves` as stored before migration 0007, as SQL for `backend`: a
/// `merkle_nodes` row per interior node and the head's `frontier` (the hashes of the complete
/// subtrees making up the tree, largest first). Returns the SQL and that frontier's root.
pub fn pre_tiles_tree_sql(backend: Backend, tenant: &str, leaves: &[Digest]) -> (String, Digest) {
    use auditor::integrity::merkle::node_hash;
    let blob = |hex: String| match backend {
        Backend::Sqlite => format!("x'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::bytea"),
    };
    let mut frontier: Vec<Digest> = Vec::new();
    let mut rows = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let (mut hash, mut index, mut level) = (*leaf, i as u64, 0);
        while index & 1 == 1 {
            hash = node_hash(&frontier.pop().unwrap(), &hash);
            index >>= 1;
            level += 1;
            rows.push(format!(
                "('{tenant}', {level}, {index}, {})",
                blob(hash.to_hex())
            ));
        }
        frontier.push(hash);
    }
    let mut sql = String::new();
    for chunk in rows.chunks(500) {
        sql += &format!(
            "INSERT INTO merkle_nodes (tenant, level, idx, hash) VALUES {};\n",
            chunk.join(", ")
        );
    }
    let stored: String = frontier.iter().map(Digest::to_hex).collect();
    sql += &format!(
        "UPDATE chain_heads SET frontier = {} WHERE tenant = '{tenant}';",
        blob(stored)
    );
    let root = frontier
        .iter()
        .rev()
        .copied()
        .reduce(|right, left| node_hash(&left, &right))
        .unwrap_or_else(auditor::integrity::merkle::empty_root);
    (sql, root)
}

/// A common table expression, `postings (run, field, value, seq)`, with a row per posting of
/// SQLite's `posting_lists` (migration 0010), for tests to count and compare postings in SQL on
/// any connection. It decodes the blocks' LEB128 differences itself, apart from the store.
pub const POSTINGS_CTE: &str = "\
     WITH RECURSIVE \
     walk (run, field, value, seq, rest, pending, shift) AS ( \
         SELECT run, field, value, first_seq, seqs, 0, 0 FROM posting_lists \
         UNION ALL \
         SELECT run, field, value, \
             CASE WHEN ((instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 1, 1)) - 1) * 16 \
                 + instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 2, 1)) - 1) < 128 \
                 THEN seq + pending + (((instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 1, 1)) - 1) * 16 \
                 + instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 2, 1)) - 1) << shift) ELSE seq END, \
             substr(rest, 2), \
             CASE WHEN ((instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 1, 1)) - 1) * 16 \
                 + instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 2, 1)) - 1) < 128 \
                 THEN 0 ELSE pending + ((((instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 1, 1)) - 1) * 16 \
                 + instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 2, 1)) - 1) - 128) << shift) END, \
             CASE WHEN ((instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 1, 1)) - 1) * 16 \
                 + instr('0123456789ABCDEF', substr(hex(substr(rest, 1, 1)), 2, 1)) - 1) < 128 \
                 THEN 0 ELSE shift + 7 END \
         FROM walk WHERE length(rest) > 0 \
     ), \
     postings (run, field, value, seq) AS ( \
         SELECT run, field, value, seq FROM walk WHERE shift = 0 \
     ) ";

/// SQL that takes a migrated SQLite database back to its schema before migration 0009: the
/// per-field indexes and `event_data_index` instead of the postings (those of the flushed runs),
/// checkpoints without the predecessor column of 0012, and users without the tenant of 0013 nor
/// the tokens of 0014, the capture positions of 0015, the viewer sessions of 0016 nor the
/// tenant numbers of 0017 (0011 runs again harmlessly: it copies the events into a table of
/// their own, keyed by `(tenant, seq)` as before 0017, whose `key` column it leaves behind).
pub fn pre_postings_schema_sql() -> String {
    format!(
        "DROP TABLE tenant_numbers; \
         DROP TABLE ui_sessions; DROP TABLE capture_positions; DROP TABLE api_tokens; \
         ALTER TABLE users DROP COLUMN tenant; \
         DROP INDEX checkpoints_one_successor; \
         ALTER TABLE checkpoints DROP COLUMN predecessor_size; \
         CREATE TABLE event_data_index (tenant TEXT NOT NULL, path TEXT NOT NULL, \
             value ANY NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tenant, path, value, seq)) \
             STRICT, WITHOUT ROWID; \
         {POSTINGS_CTE} \
         INSERT INTO event_data_index SELECT r.tenant, substr(p.field, 12), p.value, p.seq \
             FROM postings AS p JOIN posting_runs AS r ON r.id = p.run AND r.state = 'live' \
             WHERE p.field LIKE 'event\\_data.%' ESCAPE '\\'; \
         DROP TABLE posting_lists; DROP TABLE posting_runs; \
         CREATE INDEX events_user_identity ON events (tenant, user_identity, seq); \
         CREATE INDEX events_event_type ON events (tenant, event_type, seq); \
         CREATE INDEX events_entity ON events (tenant, entity, seq) WHERE entity IS NOT NULL; \
         CREATE INDEX events_action ON events (tenant, action, seq) WHERE action IS NOT NULL; \
         CREATE INDEX events_entity_id ON events (tenant, entity_id, seq) \
             WHERE entity_id IS NOT NULL; \
         CREATE INDEX events_property ON events (tenant, property, seq) \
             WHERE property IS NOT NULL; \
         CREATE INDEX events_source ON events (tenant, source, seq) WHERE source IS NOT NULL; \
         CREATE INDEX events_ip ON events (tenant, ip, seq) WHERE ip IS NOT NULL; \
         CREATE INDEX events_outcome ON events (tenant, outcome, seq) WHERE outcome IS NOT NULL; \
         CREATE INDEX events_recorded_by ON events (tenant, recorded_by, seq); \
         PRAGMA user_version = 8;"
    )
}

/// Takes a database at the latest migration back to the tree storage of migration 0006 (no
/// tiles; `merkle_nodes` and `chain_heads.frontier`, empty), marking 0007 as not applied.
pub fn pre_tiles_schema_sql(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            pre_postings_schema_sql()
                + "DROP TABLE tiles; \
             ALTER TABLE chain_heads ADD COLUMN frontier BLOB NOT NULL DEFAULT x''; \
             ALTER TABLE chain_heads DROP COLUMN partial_tiles; \
             CREATE TABLE merkle_nodes (tenant TEXT NOT NULL, level INTEGER NOT NULL, \
                 idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (tenant, level, idx)) \
                 WITHOUT ROWID; \
             CREATE TRIGGER merkle_nodes_are_never_changed BEFORE UPDATE ON merkle_nodes \
                 BEGIN SELECT RAISE(ABORT, 'merkle_nodes is append-only'); END; \
             CREATE TRIGGER merkle_nodes_are_never_deleted BEFORE DELETE ON merkle_nodes \
                 BEGIN SELECT RAISE(ABORT, 'merkle_nodes is append-only'); END; \
             PRAGMA user_version = 6;"
        }
        Backend::Postgres => "DROP TABLE tiles; \
             ALTER TABLE chain_heads ADD COLUMN frontier BYTEA NOT NULL DEFAULT ''::bytea, \
                 DROP COLUMN partial_tiles; \
             CREATE TABLE merkle_nodes (tenant TEXT NOT NULL, level INT NOT NULL, \
                 idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (tenant, level, idx)); \
             CREATE TRIGGER merkle_nodes_are_never_changed \
                 BEFORE UPDATE OR DELETE OR TRUNCATE ON merkle_nodes \
                 FOR EACH STATEMENT EXECUTE FUNCTION reject_change(); \
             DELETE FROM _sqlx_migrations WHERE version = 7;"
            .to_owned(),
    }
}

/// Rewrites every log in `db` as the service recorded logs before leaf version 2 (SQLite
/// migration 0011, PostgreSQL 0008), for tests that build an old database with today's code:
/// each event gets leaf version 1, no salt secret, the unsalted `event_data_hash`, the request
/// fingerprint in `fingerprints` (by tenant and `seq`; others keep theirs), and its leaf and
/// chain hashes recomputed; the tiles and chain heads follow. The log must hold no erased event.
/// Returns the rewritten events of each tenant, in `seq` order.
pub async fn rewrite_as_version_1(
    db: &TestDb,
    fingerprints: &std::collections::HashMap<(String, i64), Digest>,
) -> Vec<Event> {
    use auditor::integrity::Frontier;

    let events: Vec<Event> = match db.backend {
        Backend::Sqlite => all_events(&db.sqlite().await).await,
        Backend::Postgres => all_events(&db.postgres().await).await,
    };
    let bytes = |data: &[u8]| match db.backend {
        Backend::Sqlite => format!("x'{}'", hex::encode(data)),
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(data)),
    };
    let mut sql = String::new();
    let mut rewritten = Vec::new();
    let mut by_tenant: Vec<(String, Vec<Event>)> = Vec::new();
    for event in events {
        match by_tenant.last_mut() {
            Some((tenant, list)) if *tenant == event.tenant.as_str() => list.push(event),
            _ => by_tenant.push((event.tenant.as_str().to_owned(), vec![event])),
        }
    }
    for (tenant, events) in by_tenant {
        let mut prev = Digest::ZERO;
        let mut frontier = Frontier::default();
        sql.push_str(&format!("DELETE FROM tiles WHERE tenant = '{tenant}';\n"));
        for mut event in events {
            assert!(event.erased.is_none(), "seq {} is erased", event.seq);
            event.leaf_version = 1;
            event.salt_secret = None;
            event.event_data_hash = event
                .event_data
                .as_ref()
                .map(|data| Digest::sha256(&[&auditor::model::canonical::object_bytes(data)]));
            if let Some(fingerprint) = fingerprints.get(&(tenant.clone(), event.seq.0)) {
                event.request_hash = *fingerprint;
            }
            event.leaf_hash = leaf_hash(&event).unwrap();
            event.prev_hash = prev;
            event.hash = chain_hash(&prev, &event.leaf_hash);
            prev = event.hash;
            for tile in frontier.push(event.leaf_hash) {
                let hashes: Vec<u8> = tile.hashes.iter().flat_map(|h| h.0).collect();
                sql.push_str(&format!(
                    "INSERT INTO tiles (tenant, level, idx, hashes) VALUES ('{tenant}', {}, {}, {});\n",
                    tile.id.level,
                    tile.id.index,
                    bytes(&hashes)
                ));
            }
            let data_hash = event
                .event_data_hash
                .map_or("NULL".to_owned(), |h| bytes(&h.0));
            sql.push_str(&format!(
                "UPDATE events SET leaf_version = 1, salt_secret = NULL, event_data_hash = {}, \
                 request_hash = {}, leaf_hash = {}, prev_hash = {}, hash = {} \
                 WHERE tenant = '{tenant}' AND seq = {};\n",
                data_hash,
                bytes(&event.request_hash.0),
                bytes(&event.leaf_hash.0),
                bytes(&event.prev_hash.0),
                bytes(&event.hash.0),
                event.seq.0
            ));
            rewritten.push(event);
        }
        sql.push_str(&format!(
            "UPDATE chain_heads SET hash = {}, partial_tiles = {} WHERE tenant = '{tenant}';\n",
            bytes(&prev.0),
            bytes(&frontier.to_bytes())
        ));
    }
    match db.backend {
        Backend::Sqlite => {
            // SQLite cannot switch triggers off: they are dropped and created again.
            let (names, triggers): (Vec<String>, Vec<String>) = db
                .sqlite_connection()
                .prepare(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' \
                     AND tbl_name IN ('events', 'tiles')",
                )
                .unwrap()
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .unzip();
            let drop: String = names
                .iter()
                .map(|name| format!("DROP TRIGGER {name};\n"))
                .collect();
            let create: String = triggers.iter().map(|t| format!("{t};\n")).collect();
            db.execute(&format!("BEGIN;\n{drop}{sql}{create}COMMIT;"))
                .await
                .unwrap();
        }
        Backend::Postgres => {
            db.execute(&format!(
                "BEGIN; SET LOCAL session_replication_role = replica;\n{sql}COMMIT;"
            ))
            .await
            .unwrap();
        }
    }
    rewritten
}

/// Every event of every tenant, by tenant then `seq`.
async fn all_events<S: Store>(store: &S) -> Vec<Event> {
    let mut events = Vec::new();
    for tenant in store.tenants().await.unwrap() {
        events.extend(
            store
                .scan(&tenant, auditor::model::Seq(0), 1_000_000)
                .await
                .unwrap(),
        );
    }
    events
}

/// The columns PostgreSQL's migration 0008 adds to `events`, for a test that writes with
/// today's store into a database migrated only partway (0008 adds them only if missing).
pub const VERSION_2_COLUMNS_POSTGRES: &str = "ALTER TABLE events \
    ALTER COLUMN user_identity DROP NOT NULL, ADD COLUMN salt_secret BYTEA, \
    ADD COLUMN erased JSONB, ADD COLUMN leaf_version INT8 NOT NULL DEFAULT 1";

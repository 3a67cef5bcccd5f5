//! Server lifecycle: open the store, check migrations, make sure an admin exists, run the writer
//! and the HTTP server until `shutdown` fires, then drain in-flight requests and the write queue.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Authenticator;
use crate::auth::jwt::JwtVerifier;
use axum_server::tls_rustls::RustlsConfig;

use crate::auth::throttle::Throttle;
use crate::auth::users::{self, Bootstrap, UserError};
use crate::config::Settings;
use crate::integrity::{LogSigner, checkpointer};
use crate::log::{AuditLog, Writer};
use crate::store::{Store, StoreError, UnsupportedUrl};

/// How long the start waits for the store to begin watching the users table (a first poll on
/// SQLite, LISTEN on PostgreSQL); the server starts anyway after it.
const USERS_WATCH_START_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Url(#[from] UnsupportedUrl),
    #[error("could not open the database: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the database has {} pending migration(s) ({:?}); run `auditor migrate` first, or start with `auditor serve --migrate`",
        .0.len(), .0
    )]
    PendingMigrations(Vec<i64>),
    #[error("could not create the first admin: {0}")]
    Bootstrap(#[from] UserError),
    #[error(transparent)]
    SigningKey(#[from] crate::integrity::checkpoint::KeyError),
    #[error("could not read admin_password_file: {0}")]
    AdminPasswordFile(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("auth.jwt: {0}")]
    Jwt(String),
    #[error("no [[capture.postgres]] is configured: nothing to capture")]
    NothingToCapture,
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` is cancelled. Tests pass a `127.0.0.1:0` listener; `main` passes the
/// configured address and a token cancelled by SIGTERM/SIGINT.
pub async fn serve_with_listener(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    migrate: bool,
) -> Result<(), ServeError> {
    let url = settings.database_url.expose().to_owned();
    crate::with_store!(&url, settings.database.max_connections, |store| {
        serve_store(store, settings, listener, shutdown, migrate).await
    })
}

async fn serve_store<S: Store>(
    store: S,
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    migrate: bool,
) -> Result<(), ServeError> {
    if migrate {
        store.migrate().await?;
    }
    let pending = store.pending_migrations().await?;
    if !pending.is_empty() {
        return Err(ServeError::PendingMigrations(pending));
    }
    // Before anything starts: a certificate that does not load fails the start at once.
    let tls = match settings.tls.files() {
        Some((cert_file, key_file)) => Some((
            RustlsConfig::from_config(Arc::new(crate::tls::server_config(cert_file, key_file)?)),
            cert_file.to_owned(),
            key_file.to_owned(),
        )),
        None => None,
    };
    bootstrap(&store, &settings).await?;
    // Before serving: a database where this cannot work (e.g. PostgreSQL partitions that this
    // user may not create) fails the start rather than an append at the next month.
    store.maintain().await?;

    let (signer, writer, writer_task) = start_writing(&store, &settings)?;
    let stop_background = CancellationToken::new();
    let checkpoints = checkpointer::spawn(
        store.clone(),
        Arc::clone(&signer),
        settings.checkpoint_schedule(),
        stop_background.clone(),
    );
    let maintenance = crate::store::spawn_maintenance(store.clone(), stop_background.clone());
    let users = store.watch_users(stop_background.clone());
    // Until the watch vouches for the users table, each request reads its user's row.
    if tokio::time::timeout(USERS_WATCH_START_TIMEOUT, users.confirmed())
        .await
        .is_err()
    {
        tracing::warn!(
            "not yet watching the users table for changes; authenticating from the table until then"
        );
    }
    let auth = Authenticator::new(
        store.clone(),
        users,
        Duration::from_secs(settings.auth.cache_ttl_secs),
    )
    .map_err(|e| ServeError::Bootstrap(UserError::Invalid(e.to_string())))?;
    let auth = match settings.auth.jwt.clone() {
        Some(jwt) => auth.with_jwt(JwtVerifier::new(jwt).await.map_err(ServeError::Jwt)?),
        None => auth,
    };
    let closing = writer.clone();
    let log =
        AuditLog::new(store, writer, signer, settings.limits()).audit_reads(settings.audit_reads);
    let retention = crate::log::retention::spawn(
        log.clone(),
        settings.retention_policy(),
        stop_background.clone(),
    );
    let mut consumers = crate::ingest::spawn(&log, &settings.ingest, &stop_background);
    consumers.extend(crate::ingest::spawn_capture(
        &log,
        &settings.capture,
        &stop_background,
    ));
    let metrics_listener = match settings.metrics.listen {
        Some(address) => Some(serve_metrics(&log, address, shutdown.clone()).await?),
        None => None,
    };
    let state = AppState {
        log,
        auth: Arc::new(auth),
        throttle: Arc::new(Throttle::new(settings.throttle_settings())),
        shutdown: shutdown.clone(),
        sessions: api::SessionOptions {
            policy: settings.session_policy(),
            secure: tls.is_some()
                || settings
                    .public_origin()
                    .is_some_and(|origin| origin.starts_with("https://")),
            public_origin: settings.public_origin(),
            login: settings
                .auth
                .jwt
                .as_ref()
                .and_then(|jwt| jwt.login.clone())
                .map(Arc::new),
        },
    };
    let app = api::router(state, settings.http_limits());
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        database = %settings.database_url,
        tls = tls.is_some(),
        "auditor listening"
    );
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "serving plain HTTP on a non-loopback address: passwords and tokens cross the \
             network in clear text; set tls.cert_file and tls.key_file (or --tls-cert/--tls-key)"
        );
    }
    // The client's address keys the limit on failed authentications.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            tokio::select! {
                served = serving => served?,
                () = grace_expired(&shutdown) => {}
            }
        }
        Some((config, cert_file, key_file)) => {
            let reload =
                crate::tls::reload_on_sighup(config.clone(), cert_file, key_file, shutdown.clone());
            let handle = axum_server::Handle::new();
            tokio::spawn({
                let (handle, shutdown) = (handle.clone(), shutdown.clone());
                async move {
                    shutdown.cancelled().await;
                    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                }
            });
            axum_server::from_tcp_rustls(listener.into_std()?, config)?
                .handle(handle)
                .serve(app)
                .await?;
            let _ = reload.await;
        }
    }
    // The background tasks stop first: retention and the broker consumers hold writer handles,
    // and the writer stops only once every handle is gone. A retention batch already queued,
    // and the broker messages in hand, are still committed (and acknowledged).
    stop_background.cancel();
    if let Some(metrics_listener) = metrics_listener {
        let _ = metrics_listener.await;
    }
    let _ = checkpoints.await;
    let _ = maintenance.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    for consumer in consumers {
        let _ = consumer.await;
    }
    // What is queued is committed and answered; a connection cut off after the grace may still
    // hold a handle, so the writer is told to stop rather than left waiting for it.
    closing.close();
    let _ = writer_task.await;
    tracing::info!("auditor stopped");
    Ok(())
}

/// How long the server waits, after SIGTERM, for requests in flight and open streams to finish
/// (a client that stopped reading holds its connection open): then they are cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Completes `SHUTDOWN_GRACE` after `shutdown`, warning that connections are being cut off.
async fn grace_expired(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    tracing::warn!(
        grace_secs = SHUTDOWN_GRACE.as_secs(),
        "connections still open after the shutdown grace are cut off"
    );
}

/// What every way of running the log needs before it takes events: the signing key (made at
/// the first start), the metrics recorder, and the writer task.
fn start_writing<S: Store>(
    store: &S,
    settings: &Settings,
) -> Result<(Arc<LogSigner>, Writer, tokio::task::JoinHandle<()>), ServeError> {
    let signer = Arc::new(LogSigner::load_or_generate(
        &settings.signing_key_path(),
        &settings.integrity.log_origin,
    )?);
    crate::metrics::install();
    let (writer, writer_task) = Writer::spawn(store.clone(), settings.writer_options());
    Ok((signer, writer, writer_task))
}

/// Serves `/metrics` alone on `address` until `shutdown`.
async fn serve_metrics<S: Store>(
    log: &AuditLog<S>,
    address: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let listener = TcpListener::bind(address).await.map_err(|e| {
        ServeError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {address}: {e}"),
        ))
    })?;
    tracing::info!(listen = %listener.local_addr()?, "metrics listening");
    let private = match address.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.is_unique_local(),
    };
    if !private {
        tracing::warn!(
            listen = %address,
            "metrics.listen is not a loopback or private address: /metrics, which names every \
             tenant, is served without credentials to whoever reaches it"
        );
    }
    let app = api::metrics::standalone(log.clone());
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the metrics listener failed");
        }
    }))
}

/// Runs the configured change captures alone (`auditor capture`), with the writer and the
/// checkpointer they need, until `shutdown`; the changes in hand are committed first.
pub async fn capture_only(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let url = settings.database_url.expose().to_owned();
    crate::with_store!(&url, settings.database.max_connections, |store| {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            return Err(ServeError::PendingMigrations(pending));
        }
        let (signer, writer, writer_task) = start_writing(&store, &settings)?;
        let checkpoints = checkpointer::spawn(
            store.clone(),
            Arc::clone(&signer),
            settings.checkpoint_schedule(),
            shutdown.clone(),
        );
        let log = AuditLog::new(store, writer, signer, settings.limits());
        let captures = crate::ingest::spawn_capture(&log, &settings.capture, &shutdown);
        if captures.is_empty() {
            return Err(ServeError::NothingToCapture);
        }
        for capture in captures {
            let _ = capture.await;
        }
        shutdown.cancel();
        let _ = checkpoints.await;
        drop(log);
        let _ = writer_task.await;
        tracing::info!("capture stopped");
        Ok(())
    })
}

/// The file, next to the signing key, where a generated first admin password is left when no
/// terminal is there to show it.
pub const GENERATED_PASSWORD_FILE: &str = "initial-admin-password";

/// Shows the first admin's generated password once, never through the log: on a terminal, on
/// stderr; otherwise (a service, a container, JSON logs collected from stderr) in the file
/// [`GENERATED_PASSWORD_FILE`], mode 0600, and the log says where. When that file cannot be
/// written, the log says how to make the admin again, rather than holding the password.
fn show_generated_password(settings: &Settings, secret: &str) {
    use std::io::IsTerminal;
    let admin = users::BOOTSTRAP_ADMIN;
    if std::io::stderr().is_terminal() {
        // A closed stderr (`serve 2>&1 | head`) loses the text but must not stop the server.
        let _ = writeln!(
            std::io::stderr(),
            "\n  No users existed, so an admin was created.\n  user:     {admin}\n  password: {secret}\n  This password is shown only once; store it now.\n",
        );
        return;
    }
    let path = settings
        .signing_key_path()
        .with_file_name(GENERATED_PASSWORD_FILE);
    // One left by an earlier first start (of a database since thrown away) is stale.
    let _ = std::fs::remove_file(&path);
    match crate::private_file::create(&path, format!("{secret}\n").as_bytes()) {
        Ok(()) => tracing::warn!(
            user = admin, path = %path.display(),
            "no users existed, so an admin was created; its generated password is in this file \
             (mode 0600): store it elsewhere, then delete the file"
        ),
        Err(error) => tracing::error!(
            user = admin, path = %path.display(), %error,
            "no users existed, so an admin was created, but its generated password cannot be \
             written to this file (and is never logged): make the admin again with \
             `auditor user remove admin` and `auditor user add admin --role admin`, or start \
             with AUDITOR_ADMIN_PASSWORD or admin_password_file on a new database"
        ),
    }
}

async fn bootstrap<S: Store>(store: &S, settings: &Settings) -> Result<(), ServeError> {
    let configured = match (&settings.admin_password, &settings.admin_password_file) {
        (Some(secret), _) => Some(secret.expose().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(ServeError::AdminPasswordFile)?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    match users::bootstrap_admin(store, configured).await? {
        Bootstrap::NotNeeded => {}
        Bootstrap::Configured => {
            tracing::info!(
                user = users::BOOTSTRAP_ADMIN,
                "created the first admin from the configured password"
            );
        }
        Bootstrap::Generated(secret) => show_generated_password(settings, &secret),
    }
    Ok(())
}

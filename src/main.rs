//! The `auditor` binary: parse the command line, set up logging, run the subcommand.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use auditor::auth::{tokens, users};
use auditor::cli::{Cli, Command, KeyCommand, TokenCommand, UserCommand};
use auditor::config::{self, DEFAULT_CONFIG, Overrides, Settings, TlsSettings};
use auditor::integrity::verify::{self, Problem, Verified};
use auditor::integrity::{LogSigner, NoteVerifier, export as log_export};
use auditor::log::access_log::{self, Access};
use auditor::model::{Action, Scopes, TenantId, TenantScope};
use auditor::store::Store;
use auditor::{telemetry, with_store};
use clap::Parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// glibc's allocator fragments under the service's many small, short-lived allocations across
/// threads (JSON values, rows): mimalloc is faster here and keeps peak RSS down.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error = auditor::telemetry::error_chain(error.as_ref());
            let _ = writeln!(std::io::stderr(), "error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides {
        database_url: cli.database_url.clone(),
        ..Overrides::default()
    };
    let migrate_on_start = match &cli.command {
        Command::Serve {
            listen,
            migrate,
            log_format,
            tls_cert,
            tls_key,
        } => {
            overrides.listen = *listen;
            overrides.log_format = *log_format;
            if tls_cert.is_some() {
                overrides.tls = Some(TlsSettings {
                    cert_file: tls_cert.clone(),
                    key_file: tls_key.clone(),
                });
            }
            *migrate
        }
        _ => false,
    };
    match cli.command {
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            return Ok(());
        }
        // Needs no configuration or database: it is only a yardstick for the benchmark.
        Command::BenchCeiling { listen } => return bench_ceiling(listen).await,
        // A client of a server elsewhere: neither this machine's configuration nor a database.
        Command::Events { command } => {
            if cli.database_url.is_some() {
                anyhow::bail!(
                    "`auditor events` asks a running server (--server or AUDITOR_URL); \
                     --database-url is for the commands that open the database themselves"
                );
            }
            return Ok(auditor::client::run(command).await?);
        }
        _ => {}
    }
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    telemetry::init(settings.log_format);
    for name in config::unknown_env_names(std::env::vars().map(|(name, _)| name)) {
        tracing::warn!(variable = %name, "ignoring unknown AUDITOR_* environment variable");
    }

    match cli.command {
        Command::Serve { .. } => serve(settings, migrate_on_start).await,
        Command::Capture => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            auditor::server::capture_only(settings, shutdown).await?;
            Ok(())
        }
        Command::Migrate => migrate(&settings).await,
        Command::User { command } => user(&settings, command).await,
        Command::Token { command } => token(&settings, command).await,
        Command::Verify {
            public_keys,
            checkpoints,
            export,
            tenants,
        } => {
            let logs = Logs {
                public_keys: &public_keys,
                checkpoint_files: &checkpoints,
                tenants: &tenants,
            };
            verify(&settings, logs, export.as_deref()).await
        }
        Command::Export { output } => export(&settings, output.as_deref()).await,
        Command::Key {
            command: KeyCommand::Show { tenant },
        } => {
            let tenant = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!(e))?;
            let signer = signer(&settings)?;
            println!("{}", signer.verifier_key(&tenant));
            Ok(())
        }
        Command::DefaultConfig | Command::BenchCeiling { .. } | Command::Events { .. } => Ok(()),
    }
}

async fn serve(settings: Settings, migrate: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    auditor::serve_with_listener(settings, listener, shutdown, migrate).await?;
    Ok(())
}

async fn bench_ceiling(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    telemetry::init(config::LogFormat::Text);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    auditor::api::ceiling::serve(listener, shutdown).await?;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
    shutdown.cancel();
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    with_store!(settings.database_url.expose(), 2, |store| {
        let pending = store.pending_migrations().await?;
        store.migrate().await?;
        println!(
            "applied {} migration(s) to {}",
            pending.len(),
            settings.database_url
        );
        Ok(())
    })
}

async fn token(settings: &Settings, command: TokenCommand) -> anyhow::Result<()> {
    with_store!(settings.database_url.expose(), 2, |store| {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            bail!("the database has pending migrations; run `auditor migrate` first");
        }
        match command {
            TokenCommand::Create {
                name,
                tenant,
                scopes,
                expires_in,
            } => {
                let tenant = TenantScope::parse(&tenant).map_err(|e| anyhow::anyhow!(e))?;
                let scopes = Scopes::parse(&scopes)
                    .map_err(|name| anyhow::anyhow!("`{name}` is not a scope"))?;
                let lifetime = expires_in
                    .map(|text| tokens::parse_lifetime(&text))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e))?;
                let details = json!({"name": name, "token_tenant": tenant.as_str(),
                                     "scopes": scopes.to_string()});
                let created = tokens::create(&store, &name, tenant, scopes, lifetime);
                let (record, token) = record_cli_change(
                    &store,
                    settings,
                    Access::change("token.create", Action::Create, object(details)),
                    created,
                )
                .await?;
                let expiry = record.expires_at.map_or("never".to_owned(), rfc3339);
                println!(
                    "created token `{name}` for tenant {} with scopes {}, expiring {expiry}; \
                     it is shown once, below:",
                    record.tenant, record.scopes
                );
                println!("{token}");
            }
            TokenCommand::List => {
                println!(
                    "{:<24} {:<16} {:<12} {:<32} SCOPES",
                    "NAME", "TENANT", "STATE", "EXPIRES"
                );
                let now = time::OffsetDateTime::now_utc();
                for token in store.list_tokens().await? {
                    let state = match (token.revoked_at, token.is_valid_at(now)) {
                        (Some(_), _) => "revoked",
                        (None, false) => "expired",
                        (None, true) => "active",
                    };
                    let expires = token.expires_at.map_or("never".to_owned(), rfc3339);
                    println!(
                        "{:<24} {:<16} {:<12} {:<32} {}",
                        token.name,
                        token.tenant.as_str(),
                        state,
                        expires,
                        token.scopes
                    );
                }
            }
            TokenCommand::Revoke { name } => {
                let Some(token) = store
                    .list_tokens()
                    .await?
                    .into_iter()
                    .find(|t| t.name == name)
                else {
                    bail!("no token named `{name}`");
                };
                if token.revoked_at.is_some() {
                    println!("token `{name}` was revoked already");
                    return Ok(());
                }
                let details = json!({"name": name, "token_tenant": token.tenant.as_str(),
                                     "scopes": token.scopes.to_string()});
                let revoked = store.revoke_token(&name, time::OffsetDateTime::now_utc());
                record_cli_change(
                    &store,
                    settings,
                    Access::change("token.revoke", Action::Delete, object(details)),
                    revoked,
                )
                .await?;
                println!("revoked token `{name}`");
            }
        }
        Ok(())
    })
}

async fn user(settings: &Settings, command: UserCommand) -> anyhow::Result<()> {
    with_store!(settings.database_url.expose(), 2, |store| {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            bail!("the database has pending migrations; run `auditor migrate` first");
        }
        match command {
            UserCommand::Add { name, role, tenant } => {
                let tenant = TenantScope::parse(&tenant).map_err(|e| anyhow::anyhow!(e))?;
                let secret = read_password(&name)?;
                let details = json!({"name": name, "role": role.as_str(),
                                     "user_tenant": tenant.as_str()});
                let added = users::add(&store, &name, role, tenant.clone(), secret);
                record_cli_change(
                    &store,
                    settings,
                    Access::change("user.add", Action::Create, object(details)),
                    added,
                )
                .await?;
                println!(
                    "added user `{name}` with role {} in tenant {tenant}",
                    role.as_str()
                );
            }
            UserCommand::List => {
                println!("{:<32} {:<8} TENANT", "NAME", "ROLE");
                for user in store.list_users().await? {
                    println!(
                        "{:<32} {:<8} {}",
                        user.name,
                        user.role.as_str(),
                        user.tenant
                    );
                }
            }
            UserCommand::Remove { name } => {
                let details = json!({"name": name});
                record_cli_change(
                    &store,
                    settings,
                    Access::change("user.remove", Action::Delete, object(details)),
                    users::remove(&store, &name),
                )
                .await?;
                println!("removed user `{name}`");
            }
        }
        Ok(())
    })
}

/// Records a credential change made from the command line in the system log, as by
/// `cli:<login name>`, and then makes it (`change`): nothing is changed unrecorded. When the
/// change fails, a second record says so.
async fn record_cli_change<S: Store, T, E>(
    store: &S,
    settings: &Settings,
    access: Access<'_>,
    change: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::fmt::Display + Into<anyhow::Error>,
{
    record_cli(store, settings, access.clone()).await?;
    match change.await {
        Ok(changed) => Ok(changed),
        Err(error) => {
            let failed = access.failed(&error.to_string());
            if let Err(unrecorded) = record_cli(store, settings, failed).await {
                eprintln!("could not record that the change failed: {unrecorded}");
            }
            Err(error.into())
        }
    }
}

/// Records `access` from the command line in the system log, as by `cli:<login name>`.
async fn record_cli<S: Store>(
    store: &S,
    settings: &Settings,
    access: Access<'_>,
) -> anyhow::Result<()> {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let actor = format!("cli:{login}");
    access_log::record_through_store(store, &actor, "*", access, &settings.limits()).await?;
    Ok(())
}

/// A time as RFC 3339, as the API shows times.
fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// The details of a change, which `json!` writes as an object.
fn object(details: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match details {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// From standard input when it is piped, else prompted twice without echo.
fn read_password(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let secret = line.trim_end_matches(['\r', '\n']).to_owned();
        if secret.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(secret);
    }
    let first = rpassword::prompt_password(format!("Password for {name}: "))?;
    let second = rpassword::prompt_password("Repeat it: ")?;
    if first != second {
        bail!("the passwords differ");
    }
    Ok(first)
}

/// The signing key as the server keeps it; never made here: a key made by a command run in the
/// wrong place would be printed, trusted, and verify nothing.
fn signer(settings: &Settings) -> anyhow::Result<LogSigner> {
    let path = settings.signing_key_path();
    LogSigner::load(&path, &settings.integrity.log_origin).with_context(|| {
        format!(
            "no checkpoint signing key at {}: `auditor serve` makes it at its first start (next \
             to the SQLite database, or in the state directory on PostgreSQL); run this with the \
             server's configuration, or set integrity.signing_key_file",
            path.display()
        )
    })
}

/// What `auditor verify` checks the logs against, and which logs.
struct Logs<'a> {
    public_keys: &'a [String],
    checkpoint_files: &'a [std::path::PathBuf],
    /// Only these tenants' logs; every tenant's when empty.
    tenants: &'a [String],
}

async fn verify(
    settings: &Settings,
    Logs {
        public_keys,
        checkpoint_files,
        tenants,
    }: Logs<'_>,
    export: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut keys = public_keys
        .iter()
        .map(|k| NoteVerifier::parse(k))
        .collect::<Result<Vec<_>, _>>()?;
    let kept = checkpoint_files
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    let results = match export {
        Some(path) => {
            if keys.is_empty() {
                bail!("verifying an export needs the trusted key: pass --public-key");
            }
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = auditor::progress::bytes("verifying", size);
            let lines = std::io::BufReader::new(bar.wrap_read(file)).lines();
            let results = tokio::task::spawn_blocking({
                let keys = keys.clone();
                move || verify::verify_export(lines, &keys, &kept)
            })
            .await??;
            bar.finish_and_clear();
            results
        }
        None => {
            require_database(settings)?;
            with_store!(settings.database_url.expose(), 2, |store| {
                if keys.is_empty() {
                    let signer = LogSigner::load(
                        &settings.signing_key_path(),
                        &settings.integrity.log_origin,
                    )
                    .context(
                        "no trusted key: pass --public-key, or run where the signing key file is",
                    )?;
                    for tenant in store.tenants().await? {
                        keys.push(NoteVerifier::parse(&signer.verifier_key(&tenant))?);
                    }
                }
                let named: Vec<TenantId> =
                    tenants.iter().map(|t| TenantId::new(t.as_str())).collect();
                let only = (!named.is_empty()).then_some(named.as_slice());
                let bar = auditor::progress::events("verifying", events_in(&store, only).await?);
                // `seq` counts within a tenant: the bar adds up the tenants done before.
                let mut done_before = 0;
                let mut current: Option<TenantId> = None;
                let mut at = 0;
                let results = verify::verify_logs(&store, only, &keys, &kept, |tenant, seq| {
                    if current.as_ref() != Some(tenant) {
                        done_before += at;
                        current = Some(tenant.clone());
                    }
                    at = seq;
                    bar.set_position(done_before + seq);
                })
                .await?;
                bar.finish_and_clear();
                results
            })
        }
    };
    report(only_tenants(results, tenants), started.elapsed())
}

/// The results of the named tenants' logs (all of them when none is named): an export's are
/// all verified and filtered here, a database's only read for those tenants. A named tenant
/// without a log fails, so a typo never passes for a verified log.
fn only_tenants(
    results: Vec<Result<Verified, Problem>>,
    tenants: &[String],
) -> Vec<Result<Verified, Problem>> {
    if tenants.is_empty() {
        return results;
    }
    let tenant_of = |result: &Result<Verified, Problem>| match result {
        Ok(verified) => verified.tenant.as_str().to_owned(),
        Err(problem) => problem.tenant.as_str().to_owned(),
    };
    let mut kept: Vec<_> = results
        .into_iter()
        .filter(|result| tenants.contains(&tenant_of(result)))
        .collect();
    for tenant in tenants {
        if !kept.iter().any(|result| tenant_of(result) == *tenant) {
            kept.push(Err(Problem {
                tenant: TenantId::new(tenant.as_str()),
                seq: None,
                message: "no log of this tenant was found".into(),
            }));
        }
    }
    kept
}

/// The events in the logs of `only` those tenants (every tenant's when `None`), as their chain
/// heads count them: the length of an export or a verification, for its progress bar.
async fn events_in<S: Store>(store: &S, only: Option<&[TenantId]>) -> anyhow::Result<u64> {
    let mut total = 0;
    for tenant in store.tenants().await? {
        if only.is_some_and(|only| !only.contains(&tenant)) {
            continue;
        }
        if let Some(head) = store.head(&tenant).await? {
            total += u64::try_from(head.seq.0).unwrap_or(0);
        }
    }
    Ok(total)
}

fn report(
    results: Vec<Result<Verified, Problem>>,
    elapsed: std::time::Duration,
) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut events = 0;
    for result in &results {
        match result {
            Ok(verified) => {
                events += verified.events;
                println!(
                    "ok: tenant {}: {} events, {} checkpoints, root {}",
                    verified.tenant, verified.events, verified.checkpoints, verified.root
                );
            }
            Err(problem) => {
                failed += 1;
                println!("FAILED: {problem}");
            }
        }
    }
    // A failed log's events are not counted as verified, and the rest are said to be only that.
    let rate = events as f64 / elapsed.as_secs_f64().max(1e-9);
    let whole = if failed > 0 {
        " in the logs that passed"
    } else {
        ""
    };
    println!(
        "verified {events} events{whole} in {:.2} s ({rate:.0} events/s)",
        elapsed.as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} of {} log(s) failed verification", results.len());
    }
    Ok(())
}

/// Refuses to read a SQLite database that is not there: opening it would make an empty one.
fn require_database(settings: &Settings) -> anyhow::Result<()> {
    match settings.sqlite_file() {
        Some(file) if !file.exists() => bail!(
            "no database at {} (set --database-url, or run where `auditor serve` keeps it)",
            file.display()
        ),
        _ => Ok(()),
    }
}

async fn export(settings: &Settings, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    require_database(settings)?;
    with_store!(settings.database_url.expose(), 2, |store| {
        // Every event of every tenant leaves the database: recorded first, as any read is.
        let destination = output.map_or("stdout".to_owned(), |p| p.display().to_string());
        let details = json!({"output": destination});
        record_cli(&store, settings, Access::read("export", object(details))).await?;
        let bar = auditor::progress::events("exporting", events_in(&store, None).await?);
        let advance = |events| bar.inc(events);
        let written = match output {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                log_export::export(&store, &mut std::io::BufWriter::new(file), advance).await?
            }
            None => {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                log_export::export(&store, &mut out, advance).await?
            }
        };
        bar.finish_and_clear();
        eprintln!("exported {written} events");
        Ok(())
    })
}

//! HTTPS for the API: a rustls server configuration (the `ring` provider) from a PEM certificate
//! chain and key, swapped for one read again from the same files on SIGHUP, without dropping a
//! connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {0}: {1}")]
    Certificate(PathBuf, String),
    #[error("cannot read the TLS private key {0}: {1}")]
    Key(PathBuf, String),
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Makes `ring` the process's rustls provider, for the clients that take the process default
/// (the HTTP client that fetches an identity provider's keys). Idempotent.
pub fn install_crypto_provider() {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    // Fails only when a provider is installed already, which is all this asks.
    let _ = provider.install_default();
}

/// The server configuration for the chain in `cert_file` and the key in `key_file`, offering
/// HTTP/2 and HTTP/1.1.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::Certificate(cert_file.to_owned(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            cert_file.to_owned(),
            "no certificate in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TlsError::Key(key_file.to_owned(), e.to_string()))?;
    // `ring`, the provider the PostgreSQL client already uses: aws-lc-rs (whose hybrid
    // post-quantum key exchange this gives up) would add a C/CMake build to every checkout.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Until `shutdown`: on every SIGHUP, reads the files again and serves new connections with
/// them; connections already open keep theirs. Files that do not load leave the current
/// certificate in place, and say why in the log.
pub fn reload_on_sighup(
    config: RustlsConfig,
    cert_file: PathBuf,
    key_file: PathBuf,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; the TLS certificate will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hangups.recv() => {}
            }
            match server_config(&cert_file, &key_file) {
                Ok(server) => {
                    config.reload_from_config(Arc::new(server));
                    tracing::info!(cert = %cert_file.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    tracing::error!(%error, "TLS certificate not reloaded; keeping the current one");
                }
            }
        }
    })
}

//! Checking a user name and password against the user table: constant-shape (an unknown name
//! costs what a wrong password does), with argon2 off the async workers, successful checks
//! cached, and the users themselves kept in memory for as long as the table does not change.

use std::sync::Arc;
use std::time::Duration;

use super::jwt::{JwtError, JwtVerifier};
use super::password;
use super::user_cache::UserCache;
use super::{Credential, CredentialCache, tokens};
use crate::store::{Store, StoreError, UsersWatch};

/// Why a caller was not authenticated. Deliberately one outcome for a wrong name and a wrong
/// password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A JWT refused, and why: the bearer may be told (RFC 6750's `error_description`).
    #[error("the bearer token was refused: {0}")]
    InvalidToken(String),
    /// The identity provider's keys could not be read, so the JWT cannot be checked; worth
    /// trying again after the wait.
    #[error("{0}")]
    KeysUnavailable(String, Duration),
    #[error("authentication failed internally: {0}")]
    Internal(#[source] anyhow::Error),
}

/// Checks credentials against the user table of its store, with the successful checks cached.
pub struct Authenticator<S> {
    /// Where tokens are looked up, on every request, so that a revocation or an expiry holds at
    /// once on every instance.
    store: S,
    users: UserCache<S>,
    cache: CredentialCache,
    /// Verified when the user does not exist, so an unknown name costs what a wrong password does.
    dummy_hash: String,
    /// One argon2 verification per core at a time. Each takes 19 MiB: when a cached credential
    /// expires under load, every connection of that client misses at once, and 64 of them
    /// verifying in parallel took the process to 1.3 GiB.
    verifications: tokio::sync::Semaphore,
    /// Bearer JWTs from the identity provider of `[auth.jwt]`, when one is configured.
    jwt: Option<JwtVerifier>,
}

impl<S: Store> Authenticator<S> {
    /// Checks against the users of `users`, kept in memory while `watch` (from
    /// [`Store::watch_users`]) vouches that the table has not changed; a verified password is
    /// remembered for `cache_ttl`.
    pub fn new(
        users: S,
        watch: UsersWatch,
        cache_ttl: Duration,
    ) -> Result<Self, password::HashError> {
        Ok(Self {
            store: users.clone(),
            users: UserCache::new(users, watch),
            cache: CredentialCache::new(cache_ttl),
            dummy_hash: password::hash(&password::generate())?,
            verifications: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            jwt: None,
        })
    }

    /// Also accepts bearer JWTs that `verifier` vouches for.
    pub fn with_jwt(self, verifier: JwtVerifier) -> Self {
        Self {
            jwt: Some(verifier),
            ..self
        }
    }

    /// The store credentials are checked against (users and tokens are managed through it).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The user named `name` as the users table has it now (from memory while unchanged).
    pub(super) async fn user(
        &self,
        name: &str,
    ) -> Result<Option<crate::model::user::UserRecord>, StoreError> {
        if name.chars().any(char::is_control) {
            return Ok(None);
        }
        self.users.find(name).await
    }

    /// The credential of a `Bearer` token: an API token (`auditor_…`), or, when `[auth.jwt]` is
    /// configured, a JWT of its identity provider. `InvalidCredentials` for anything else.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Credential, AuthError> {
        if token.starts_with(tokens::TOKEN_PREFIX) {
            return self.authenticate_token(token).await;
        }
        let Some(verifier) = &self.jwt else {
            tracing::info!("authentication failed: not an API token, and no JWT issuer is set");
            return Err(AuthError::InvalidCredentials);
        };
        let credential = verifier.verify(token).await.map_err(|error| match error {
            JwtError::KeysUnavailable(cause, wait) => {
                tracing::warn!(error = %cause, "cannot check a JWT");
                AuthError::KeysUnavailable(cause, wait)
            }
            refused => {
                tracing::info!(reason = %refused, "authentication failed: JWT refused");
                AuthError::InvalidToken(refused.to_string())
            }
        })?;
        // A subject that is also a local user's name would be the same caller to idempotency,
        // rate limits and `recorded_by`.
        if self.users.find(&credential.name).await?.is_some() {
            tracing::warn!(sub = %credential.name, "authentication failed: a JWT's sub names a local user");
            return Err(AuthError::InvalidToken(
                "its subject (`sub`) is the name of a local user of this service".into(),
            ));
        }
        Ok(credential)
    }

    /// The credential of an API token (`tokens`), or `InvalidCredentials` for a token that is
    /// unknown, revoked or expired. Its events record `token:<name>` as `recorded_by`.
    async fn authenticate_token(&self, token: &str) -> Result<Credential, AuthError> {
        if !tokens::has_token_shape(token) {
            tracing::info!("authentication failed: not an API token");
            return Err(AuthError::InvalidCredentials);
        }
        let Some(record) = self.store.find_token(&tokens::secret_hash(token)).await? else {
            tracing::info!("authentication failed: unknown API token");
            return Err(AuthError::InvalidCredentials);
        };
        if !record.is_valid_at(time::OffsetDateTime::now_utc()) {
            let state = if record.revoked_at.is_some() {
                "revoked"
            } else {
                "expired"
            };
            tracing::info!(token = %record.name, "authentication failed: {state} API token");
            return Err(AuthError::InvalidCredentials);
        }
        Ok(Credential {
            name: format!("token:{}", record.name),
            scopes: record.scopes,
            tenants: record.tenant,
        })
    }

    /// The principal whose password `secret` is, or `InvalidCredentials`.
    pub async fn authenticate(
        self: &Arc<Self>,
        name: &str,
        secret: String,
    ) -> Result<Credential, AuthError> {
        // No user name holds a control character (`validate_user_name`), and PostgreSQL cannot
        // even compare one holding U+0000: such a name is wrong credentials, found nowhere.
        if name.chars().any(char::is_control) {
            tracing::info!(user = %name, "authentication failed");
            return Err(AuthError::InvalidCredentials);
        }
        // From memory unless the table changed (or its watcher is down), so a removed user or a
        // changed role or password takes effect as soon as the store's watch sees it.
        let user = self.users.find(name).await?;
        let stored_hash = user
            .as_ref()
            .map_or(self.dummy_hash.clone(), |u| u.password_hash.clone());
        let cached = || {
            user.as_ref()
                .filter(|_| self.cache.contains(name, &secret, &stored_hash))
                .map(|user| Credential::from(user.clone()))
        };
        if let Some(principal) = cached() {
            return Ok(principal);
        }
        let _permit = self
            .verifications
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.into()))?;
        // Whoever held the permit before may have just verified this very credential.
        if let Some(principal) = cached() {
            return Ok(principal);
        }
        let (verified, secret) = tokio::task::spawn_blocking(move || {
            let ok = password::verify(&secret, &stored_hash);
            (ok.then_some(stored_hash), secret)
        })
        .await
        .map_err(|e| AuthError::Internal(e.into()))?;
        match (user, verified) {
            (Some(user), Some(stored_hash)) => {
                self.cache.remember(name, &secret, &stored_hash);
                Ok(Credential::from(user))
            }
            _ => {
                tracing::info!(user = %name, "authentication failed");
                Err(AuthError::InvalidCredentials)
            }
        }
    }
}

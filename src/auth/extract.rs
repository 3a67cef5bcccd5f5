//! HTTP Basic authentication as axum extractors: a handler names the capability it needs in its
//! signature (`ReadAccess`, `WriteAccess`, `AdminAccess`) and never sees an unauthorised call.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::password;
use super::{CredentialCache, Principal, Role};
use crate::api::{ApiError, AppState};
use crate::store::Store;

/// Checks credentials against the user table, with the successful checks cached.
pub struct Authenticator {
    cache: CredentialCache,
    /// Verified when the user does not exist, so an unknown name costs what a wrong password does.
    dummy_hash: String,
    /// One argon2 verification per core at a time. Each takes 19 MiB: when a cached credential
    /// expires under load, every connection of that client misses at once, and 64 of them
    /// verifying in parallel took the process to 1.3 GiB.
    verifications: tokio::sync::Semaphore,
}

impl Authenticator {
    pub fn new(cache_ttl: Duration) -> Result<Self, password::HashError> {
        Ok(Self {
            cache: CredentialCache::new(cache_ttl),
            dummy_hash: password::hash(&password::generate())?,
            verifications: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        })
    }

    pub async fn authenticate<S: Store>(
        self: &Arc<Self>,
        store: &S,
        parts: &Parts,
    ) -> Result<Principal, ApiError> {
        let (name, secret) = basic_credentials(parts).ok_or(ApiError::Unauthorized)?;
        // The stored row is read on every request, so a removed user or a changed role takes
        // effect at once; only the argon2 work is cached.
        let user = store.find_user(&name).await.map_err(ApiError::from)?;
        let stored_hash = user
            .as_ref()
            .map_or(self.dummy_hash.clone(), |u| u.password_hash.clone());
        let cached = || {
            user.as_ref()
                .filter(|_| self.cache.contains(&name, &secret, &stored_hash))
                .map(|user| Principal::from(user.clone()))
        };
        if let Some(principal) = cached() {
            return Ok(principal);
        }
        let _permit = self
            .verifications
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        // Whoever held the permit before may have just verified this very credential.
        if let Some(principal) = cached() {
            return Ok(principal);
        }
        let this = Arc::clone(self);
        let (verified, secret) = tokio::task::spawn_blocking(move || {
            let ok = password::verify(&secret, &stored_hash);
            (ok.then_some(stored_hash), secret)
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
        match (user, verified) {
            (Some(user), Some(stored_hash)) => {
                this.cache.remember(&name, &secret, &stored_hash);
                Ok(Principal::from(user))
            }
            _ => {
                tracing::info!(user = %name, "authentication failed");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, secret) = text.split_once(':')?;
    Some((name.to_owned(), secret.to_owned()))
}

async fn authorise<S: Store>(
    parts: &Parts,
    state: &AppState<S>,
    allowed: fn(Role) -> bool,
) -> Result<Principal, ApiError> {
    let principal = state.auth.authenticate(&state.store, parts).await?;
    if allowed(principal.role) {
        Ok(principal)
    } else {
        Err(ApiError::Forbidden(principal.role))
    }
}

macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $allowed:expr) => {
        $(#[$doc])*
        pub struct $name(pub Principal);

        impl<S: Store> FromRequestParts<AppState<S>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState<S>,
            ) -> Result<Self, Self::Rejection> {
                authorise(parts, state, $allowed).await.map(Self)
            }
        }
    };
}

access_extractor!(
    /// A caller allowed to read the log (`reader` or `admin`).
    ReadAccess,
    Role::can_read
);
access_extractor!(
    /// A caller allowed to record events (`writer` or `admin`).
    WriteAccess,
    Role::can_write
);
access_extractor!(
    /// A caller allowed to manage the log (`admin`).
    AdminAccess,
    |role| role == Role::Admin
);

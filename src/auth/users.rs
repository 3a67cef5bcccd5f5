//! Managing users: creation with a hashed password, and the first admin on an empty database.

use super::{NewUser, Role, password, validate_user_name};
use crate::model::TenantScope;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("there is no user `{0}` (`auditor user list` shows them)")]
    NoSuchUser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates and hashes (on a blocking thread), then stores the user, who acts in `tenant`.
pub async fn add<S: Store>(
    store: &S,
    name: &str,
    role: Role,
    tenant: TenantScope,
    secret: String,
) -> Result<(), UserError> {
    password::check_strength(&secret).map_err(UserError::Invalid)?;
    insert(store, name, role, tenant, secret).await
}

async fn insert<S: Store>(
    store: &S,
    name: &str,
    role: Role,
    tenant: TenantScope,
    secret: String,
) -> Result<(), UserError> {
    validate_user_name(name).map_err(|e| UserError::Invalid(e.to_owned()))?;
    if secret.is_empty() {
        return Err(UserError::Invalid("the password is empty".into()));
    }
    let password_hash = tokio::task::spawn_blocking(move || password::hash(&secret))
        .await
        .map_err(|e| UserError::Invalid(e.to_string()))?
        .map_err(|e| UserError::Invalid(e.to_string()))?;
    let user = NewUser {
        name: name.to_owned(),
        password_hash,
        role,
        tenant,
    };
    store.add_user(&user).await?;
    Ok(())
}

/// Removes a user, refusing to remove the last admin of every tenant (nobody could manage the
/// log after).
pub async fn remove<S: Store>(store: &S, name: &str) -> Result<(), UserError> {
    let no_such_user = || UserError::NoSuchUser(name.to_owned());
    let user = store.find_user(name).await?.ok_or_else(no_such_user)?;
    if user.role == Role::Admin
        && user.tenant == TenantScope::All
        && store.count_users_with_role(Role::Admin).await? <= 1
    {
        return Err(UserError::Invalid(format!(
            "`{name}` is the last admin; add another admin before removing it"
        )));
    }
    match store.remove_user(name).await {
        Err(StoreError::NotFound) => Err(no_such_user()),
        other => Ok(other?),
    }
}

/// What became of the first admin on start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Users exist already; nothing was done.
    NotNeeded,
    /// `admin` was created with the configured password.
    Configured,
    /// `admin` was created with this generated password, to be shown once.
    Generated(String),
}

pub const BOOTSTRAP_ADMIN: &str = "admin";

/// Creates `admin` when the database has no users, so no default password ever ships. A
/// configured password is the operator's explicit choice: a short one is accepted with a warning
/// (the seed documents' examples use `admin:secret`), a generated one is always strong.
pub async fn bootstrap_admin<S: Store>(
    store: &S,
    configured: Option<String>,
) -> Result<Bootstrap, UserError> {
    if !store.list_users().await?.is_empty() {
        return Ok(Bootstrap::NotNeeded);
    }
    let (secret, outcome) = match configured {
        Some(secret) => {
            if password::check_strength(&secret).is_err() {
                tracing::warn!(
                    "the configured admin password is shorter than {} characters; change it",
                    password::MIN_PASSWORD_LEN
                );
            }
            (secret, Bootstrap::Configured)
        }
        None => {
            let secret = password::generate();
            (secret.clone(), Bootstrap::Generated(secret))
        }
    };
    match insert(
        store,
        BOOTSTRAP_ADMIN,
        Role::Admin,
        TenantScope::All,
        secret,
    )
    .await
    {
        // Another instance sharing the database created it first.
        Err(UserError::Store(StoreError::Conflict(_))) => Ok(Bootstrap::NotNeeded),
        Err(e) => Err(e),
        Ok(()) => Ok(outcome),
    }
}

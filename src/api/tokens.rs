//! API tokens over HTTP, for admins (`admin` scope): `POST /admin/tokens` creates one and shows
//! it once, `GET /admin/tokens` lists them (never a secret), `DELETE /admin/tokens/{name}`
//! revokes one. An admin of one tenant sees and makes tokens of that tenant only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::AdminAccess;
use super::body::{JsonBytes, parse};
use super::{ApiError, AppState};
use crate::auth::tokens::{self, TokenError};
use crate::log::access_log::Access;
use crate::model::token::TokenRecord;
use crate::model::{Action, FieldError, Scopes, TenantScope};
use crate::store::{Store, StoreError};

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// Scopes as a JSON array of names, or one string of names separated by spaces (RFC 9068).
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Names(Vec<String>),
    Text(String),
}

/// `{"name", "tenant", "scopes", "expires_in_secs"}`; `tenant` defaults to the one the request
/// acts in, and without `expires_in_secs` the token lasts until revoked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    scopes: ScopeList,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// A created token: its record and, this once, the token.
#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    record: TokenRecord,
    token: String,
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Invalid(error) => Self::Invalid(error),
            TokenError::Store(error) => error.into(),
        }
    }
}

/// `201` with the token's record and the token, shown this once.
#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "tokens",
    responses(
        (status = 201, description = "The token's record and the token, shown this once", body = Object),
        (status = 409, description = "A token of that name exists"),
        (status = 422, description = "A wrong or missing field"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let body: NewTokenBody = parse(&body)?;
    let tenant = match body.tenant {
        Some(text) => TenantScope::parse(&text)
            .map_err(|e| ApiError::Invalid(FieldError::new("tenant", e)))?,
        None => TenantScope::One(principal.tenant.clone()),
    };
    if !principal.tenants.covers(&tenant) {
        return Err(ApiError::Forbidden(format!(
            "these credentials may not make tokens of tenant `{tenant}`"
        )));
    }
    let scopes = match body.scopes {
        ScopeList::Names(names) => Scopes::parse(&names.join(" ")),
        ScopeList::Text(text) => Scopes::parse(&text),
    }
    .map_err(|name| {
        ApiError::Invalid(FieldError::new(
            "scopes",
            format!("`{name}` is not a scope"),
        ))
    })?;
    let lifetime = body
        .expires_in_secs
        .map(|secs| i64::try_from(secs).map(time::Duration::seconds))
        .transpose()
        .map_err(|_| ApiError::Invalid(FieldError::new("expires_in_secs", "is too large")))?;
    let access = token_access("token.create", Action::Create, &body.name, &tenant, scopes);
    let created = tokens::create(state.auth.store(), &body.name, tenant, scopes, lifetime);
    let (record, token) = state
        .log
        .record_change(&principal, access, created)
        .await??;
    tracing::info!(token = %record.name, tenant = %record.tenant, by = %principal.name, "API token created");
    Ok((StatusCode::CREATED, Json(Created { record, token })))
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenRecord>,
}

/// `200` with `{"tokens": [...]}`: those the admin covers, by name.
#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "tokens",
    responses((status = 200, description = "`{\"tokens\": [...]}`, by name", body = Object)),
)]
async fn list<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state
        .auth
        .store()
        .list_tokens()
        .await?
        .into_iter()
        .filter(|token| principal.tenants.covers(&token.tenant))
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// `200` with the revoked token's record; `404` for a token the admin does not cover or that
/// does not exist. Revoking a revoked token keeps its first revocation time.
#[utoipa::path(
    delete,
    path = "/admin/tokens/{name}",
    tag = "tokens",
    responses((status = 200, description = "The revoked token's record", body = Object)),
)]
async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
    Path(name): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    let store = state.auth.store();
    let not_found = || ApiError::NotFound(format!("no token named `{name}`"));
    let mut record = store
        .list_tokens()
        .await?
        .into_iter()
        .find(|token| token.name == name && principal.tenants.covers(&token.tenant))
        .ok_or_else(not_found)?;
    // Revoked already: nothing changes, and there is nothing more to record.
    if record.revoked_at.is_some() {
        return Ok(Json(record));
    }
    let at = crate::model::event::truncate_to_micros(time::OffsetDateTime::now_utc());
    let access = token_access(
        "token.revoke",
        Action::Delete,
        &record.name,
        &record.tenant,
        record.scopes,
    );
    state
        .log
        .record_change(&principal, access, store.revoke_token(&name, at))
        .await?
        .map_err(|error| match error {
            StoreError::NotFound => not_found(),
            other => other.into(),
        })?;
    record.revoked_at = Some(at);
    tracing::info!(token = %name, by = %principal.name, "API token revoked");
    Ok(Json(record))
}

/// A change to a token as the system log records it: never its secret or hash.
fn token_access<'a>(
    operation: &'a str,
    action: Action,
    name: &str,
    tenant: &TenantScope,
    scopes: Scopes,
) -> Access<'a> {
    let mut details = serde_json::Map::new();
    details.insert("name".into(), name.into());
    details.insert("token_tenant".into(), tenant.as_str().into());
    details.insert("scopes".into(), scopes.to_string().into());
    Access::change(operation, action, details)
}

//! API tokens over HTTP, for admins (`admin` scope): `POST /admin/tokens` creates one and shows
//! it once, `GET /admin/tokens` lists them (never a secret), `DELETE /admin/tokens/{name}`
//! revokes one. An admin of one tenant sees and makes tokens of that tenant only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::AdminAccess;
use super::body::{JsonBytes, parse_object};
use super::{ApiError, AppState};
use crate::auth::tokens::{self, TokenError};
use crate::log::access_log::Access;
use crate::model::token::TokenRecord;
use crate::model::{Action, FieldError, Scope, Scopes, TenantScope};
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewToken)]
struct NewTokenBody {
    /// The token's name, unique: 1 to 64 of letters, digits, `_`, `-`, `.` and `@`, other than
    /// `.` and `..` (the rule of user names).
    #[schema(
        pattern = r"^([A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}|\.[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,62}|\.\.[A-Za-z0-9_.@-]{1,62})$"
    )]
    name: String,
    /// `*` (every tenant) or one tenant, which the admin must cover; not `_system`. Default: the
    /// tenant the request acts in.
    #[serde(default)]
    #[schema(
        pattern = r"^(\*|[a-z0-9-][a-z0-9._-]{0,63}|_([a-z0-9._-]{0,5}|[a-z0-9._-]{7,63}|[a-rt-z0-9._-][a-z0-9._-]{5}|s[a-xz0-9._-][a-z0-9._-]{4}|sy[a-rt-z0-9._-][a-z0-9._-]{3}|sys[a-su-z0-9._-][a-z0-9._-]{2}|syst[a-df-z0-9._-][a-z0-9._-]|syste[a-ln-z0-9._-])|\.[a-z0-9_-][a-z0-9._-]{0,62}|\.\.[a-z0-9._-]{1,62})$"
    )]
    tenant: Option<String>,
    #[schema(schema_with = scope_list_schema)]
    scopes: ScopeList,
    /// The token's lifetime in seconds, from 1 s to 3652 days; without it, until revoked.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 315_532_800)]
    expires_in_secs: Option<serde_json::Number>,
}

/// At least one scope, by name: an array, or a string of names separated by spaces or commas.
fn scope_list_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let names: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
    let name = format!("({})", names.join("|"));
    OneOfBuilder::new()
        .item(
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(names.clone())),
                )
                .min_items(Some(1)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[ ,]*{name}([ ,]+{name})*[ ,]*$"))),
        )
        .description(Some(
            "The token's scopes: an array of names, or one string of names separated by spaces",
        ))
        .into()
}

/// A created token: its record and, this once, the token.
#[derive(Serialize, ToSchema)]
#[schema(as = CreatedToken)]
struct Created {
    #[serde(flatten)]
    record: TokenRecord,
    /// The token (`auditor_…`), for `Authorization: Bearer`; shown this once.
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
    request_body(content = NewTokenBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The token's record and the token, shown this once", body = Created),
        (status = 415, description = "A body that is not JSON"),
        (status = 409, description = "A token of that name exists"),
        (status = 422, description = "A wrong or missing field"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let body: NewTokenBody = parse_object(&body)?;
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
        .map(|secs| whole_seconds(&secs).map(time::Duration::seconds))
        .transpose()?;
    let access = token_access("token.create", Action::Create, &body.name, &tenant, scopes);
    let created = tokens::create(state.auth.store(), &body.name, tenant, scopes, lifetime);
    let (record, token) = state
        .log
        .record_change(&principal, access, created)
        .await??;
    tracing::info!(token = %record.name, tenant = %record.tenant, by = %principal.name, "API token created");
    Ok((StatusCode::CREATED, Json(Created { record, token })))
}

/// A lifetime in whole seconds. JSON does not tell `60.0` from `60` (nor does a JSON Schema's
/// `integer`), so neither does this; `60.5` or `-1` is refused.
fn whole_seconds(number: &serde_json::Number) -> Result<i64, ApiError> {
    let refused = || {
        ApiError::Invalid(FieldError::new(
            "expires_in_secs",
            "must be a whole number of seconds from 1 to 315532800 (3652 days)",
        ))
    };
    if let Some(secs) = number.as_i64() {
        return Ok(secs);
    }
    match number.as_f64() {
        // Within ±2^53 a double is a whole number exactly when it has no fraction.
        Some(secs) if secs.fract() == 0.0 && secs.abs() < 9_007_199_254_740_992.0 => {
            #[allow(clippy::cast_possible_truncation)] // Whole and within range, checked above.
            Ok(secs as i64)
        }
        _ => Err(refused()),
    }
}

#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenRecord>,
}

/// `200` with `{"tokens": [...]}`: those the admin covers, by name.
#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "tokens",
    responses((status = 200, description = "`{\"tokens\": [...]}`, by name", body = TokenList)),
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
    responses((status = 200, description = "The revoked token's record", body = TokenRecord)),
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

//! Routes that take no query of the log still refuse a parameter they do not know, as the query
//! routes do: `POST /events?tenat=acme` would otherwise record into the caller's own tenant, the
//! misspelt one unnoticed. What each operation takes is read from the OpenAPI document, which
//! lists it (`api::openapi`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::openapi::{QUERIED, SEED_ROUTES};
use crate::model::QueryError;

/// The query parameters each operation takes, by method and path template, for the operations
/// that do not read their query themselves.
#[derive(Clone, Default)]
pub struct KnownParameters(Arc<HashMap<(Method, String), HashSet<String>>>);

impl KnownParameters {
    pub fn from_document(document: &utoipa::openapi::OpenApi) -> Self {
        let mut known = HashMap::new();
        for (path, item) in &document.paths.paths {
            if SEED_ROUTES.iter().any(|r| path.starts_with(r)) {
                continue;
            }
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                // A query of the log reads its parameters itself (`event_data.<path>` too).
                let Some(operation) = operation else { continue };
                if method == Method::GET && QUERIED.contains(&path.as_str()) {
                    continue;
                }
                let names = operation
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                known.insert((method, path.clone()), names);
            }
        }
        Self(Arc::new(known))
    }
}

/// Middleware: `400 invalid_query` for a query parameter the operation does not take.
pub async fn refuse_unknown(known: KnownParameters, request: Request, next: Next) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().replace("{*path}", "{path}"));
    let allowed = template.and_then(|t| known.0.get(&(request.method().clone(), t)));
    if let (Some(allowed), Some(query)) = (allowed, request.uri().query()) {
        let unknown = form_urlencoded::parse(query.as_bytes())
            .map(|(name, _)| name.into_owned())
            .find(|name| !allowed.contains(name));
        if let Some(name) = unknown {
            let mut takes: Vec<&str> = allowed.iter().map(String::as_str).collect();
            takes.sort_unstable();
            return ApiError::InvalidQuery(QueryError {
                param: name.clone(),
                message: format!(
                    "`{name}` is not a parameter of this route; it takes {}",
                    takes.join(", ")
                ),
            })
            .into_response();
        }
    }
    next.run(request).await
}

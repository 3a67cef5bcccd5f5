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

/// The largest whole number a numeric parameter takes: 2^53 − 1, the largest a JSON number holds
/// exactly (a JavaScript client could not even write a larger one), and far beyond any log.
pub const MAX_WHOLE_NUMBER: u64 = (1 << 53) - 1;

/// `text`, the value of the parameter `param`, as a whole number from `min` to
/// [`MAX_WHOLE_NUMBER`]: else `400 invalid_query` naming the parameter and what it takes, never
/// a parser's own wording.
pub fn whole_number(param: &str, text: &str, min: u64) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(n) if (min..=MAX_WHOLE_NUMBER).contains(&n) => Ok(n),
        _ => Err(ApiError::InvalidQuery(QueryError {
            param: param.to_owned(),
            message: format!(
                "`{param}` must be a whole number from {min} to {MAX_WHOLE_NUMBER}, not `{}`",
                text.escape_debug()
            ),
        })),
    }
}

/// The value of the query parameter `param` among `pairs`, if given: `400` when it is given
/// twice, since which one was meant cannot be known.
pub fn single<'a>(pairs: &'a [(String, String)], param: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs.iter().filter(|(name, _)| name == param);
    let first = values.next().map(|(_, value)| value.as_str());
    if values.next().is_some() {
        return Err(ApiError::InvalidQuery(QueryError {
            param: param.to_owned(),
            message: format!("`{param}` is given more than once"),
        }));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<u64, ApiError>) -> (String, String) {
        match result {
            Err(ApiError::InvalidQuery(e)) => (e.param, e.message),
            other => panic!("expected invalid_query, got {other:?}"),
        }
    }

    #[test]
    fn a_whole_number_is_read_within_its_range() {
        assert_eq!(whole_number("to", "7", 1).unwrap(), 7);
        assert_eq!(
            whole_number("to", "9007199254740991", 1).unwrap(),
            MAX_WHOLE_NUMBER
        );
    }

    #[test]
    fn a_number_out_of_range_or_not_a_number_names_the_parameter() {
        for text in [
            "abc",
            "0",
            "-1",
            "1.5",
            "",
            "9007199254740992",
            "99999999999999999999999",
        ] {
            let (param, message) = refusal(whole_number("tree_size", text, 1));
            assert_eq!(param, "tree_size");
            assert!(
                message.starts_with("`tree_size` must be a whole number from 1 to"),
                "{message}"
            );
            assert!(!message.contains("deserialize"), "{message}");
        }
    }
}

//! A no-op `POST /events` for `bench/run`: the same binary, HTTP stack and JSON parsing as the
//! service, but no auth, no writer and no database, so its throughput is the ceiling that the
//! real service's numbers are compared with.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{OneOrMany, parse_one_or_many};
use crate::model::RawEvent;

/// The ceiling's routes: only `POST /events`.
pub fn router() -> Router {
    Router::new().route("/events", post(accept))
}

/// Serves the ceiling until `shutdown` fires.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "auditor bench-ceiling listening");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Parses the body into the service's `RawEvent`s (one or an array) and drops them. Parse errors
/// are answered as the service answers them, so a broken load script shows up as non-2xx.
async fn accept(body: axum::body::Bytes) -> Response {
    let accepted = match parse_one_or_many::<RawEvent>(&body) {
        Ok(OneOrMany::One(_)) => 1,
        Ok(OneOrMany::Many(events)) => events.len(),
        Err(error) => return error.into_response(),
    };
    (
        StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{{\"accepted\":{accepted}}}"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn post(body: &str) -> (StatusCode, String) {
        let request = Request::post("/events")
            .body(Body::from(body.to_owned()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let response = router()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("body: {e}"));
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn accepts_what_the_service_would_parse_and_refuses_the_rest() {
        let one = r#"{"event_type":"a","user_identity":"u"}"#;
        assert_eq!(
            post(one).await,
            (StatusCode::CREATED, r#"{"accepted":1}"#.into())
        );
        let (status, body) = post(&format!("[{one},{one}]")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::CREATED, r#"{"accepted":2}"#)
        );
        assert_eq!(
            post(r#"{"event_type":"a"}"#).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(post("{").await.0, StatusCode::BAD_REQUEST);
    }
}

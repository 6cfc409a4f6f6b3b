//! What operators point their tools at: `/healthz`, `/readyz`, `/metrics`, and the layer that
//! gives every request an id and a place in the latency histograms.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use tresor_service::{Metrics, ServiceError, request_id};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Authenticated;

/// The header that carries a request's id, both ways.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Liveness: the process answers HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the process can take work (its database answers, it is not shutting down).
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.not_ready().await {
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The Prometheus text exposition, for platform administrators (a scraper sends an admin's
/// access token as its bearer credential): the counts span every workspace.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    if !principal.is_admin {
        return Err(ServiceError::Forbidden(
            "the metrics span every workspace: this needs a platform administrator".to_owned(),
        )
        .into());
    }
    let mut response = state.metrics_text().await.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Gives the request an id (the client's `X-Request-Id` when it is short and plain, else a new
/// one), runs it inside a span and the id's scope, returns the id in the response, and records
/// its latency under its route template.
pub(crate) async fn observe(metrics: Metrics, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| request_id::acceptable(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    // The standard methods by name, any other as OTHER: a label set a client could extend with
    // made-up methods would grow the server's memory and every scrape without bound.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_owned();
    // The template, never the raw path: labels stay a bounded set and hold no ids.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut response = request_id::scope(id.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    metrics.observe_http(&method, &route, status.as_u16(), started.elapsed());
    if status == StatusCode::UNAUTHORIZED {
        if route.starts_with("/internal/") {
            metrics.task_auth_failed();
        } else {
            metrics.user_auth_failed();
        }
    }
    response
}

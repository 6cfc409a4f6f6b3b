//! `ApiError`: the one place where failures become HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tresor_api_types::ErrorResponse;
use tresor_service::ServiceError;

/// A failed request: a status and a message for the caller.
#[derive(Debug)]
pub enum ApiError {
    Service(ServiceError),
    /// A request the server could not parse: what to fix.
    BadRequest(String),
    PayloadTooLarge(String),
    NotFound(String),
    MethodNotAllowed(String),
    /// The credential (or address) used its request rate; retry after this many seconds.
    TooManyRequests(u64),
    /// The request was not received and answered within this many seconds.
    RequestTimeout(u64),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

/// The stable error code and message of a failed response, kept as a response extension so the
/// platform API can render its own body shape (`{code, message}`) from the same error.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, code, msg) = match self {
            ApiError::Service(err) => {
                let (status, code) = match &err {
                    ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                    ServiceError::Unauthenticated(_) => {
                        (StatusCode::UNAUTHORIZED, "unauthenticated")
                    }
                    ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                    ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                    ServiceError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
                    ServiceError::Unavailable(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                    }
                    ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                };
                let msg = if status.is_server_error() {
                    // The cause goes to the log under an id; the body names only the class,
                    // and for an outage what is out, in the words the service chose for it.
                    let request_id = tresor_service::request_id::current()
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                    tracing::error!(%request_id, error = ?err, "request failed");
                    match &err {
                        ServiceError::Unavailable(cause) => {
                            retry_after = Some(5);
                            match cause.downcast_ref::<tresor_service::Outage>() {
                                Some(outage) => format!(
                                    "temporarily unavailable: {outage}; retry later (request id {request_id})"
                                ),
                                None => format!(
                                    "temporarily unavailable; retry later (request id {request_id})"
                                ),
                            }
                        }
                        _ => format!("{err} (request id {request_id})"),
                    }
                } else {
                    err.to_string()
                };
                (status, code, msg)
            }
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, "invalid", msg),
            ApiError::PayloadTooLarge(msg) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", msg)
            }
            ApiError::NotFound(msg) => (StatusCode::NOT_FOUND, "not_found", msg),
            ApiError::MethodNotAllowed(msg) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", msg)
            }
            ApiError::RequestTimeout(seconds) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request was not received and answered within {seconds} s; send its body faster"
                ),
            ),
            ApiError::TooManyRequests(seconds) => {
                retry_after = Some(seconds);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many requests with this credential; retry after {seconds} s (Retry-After)"
                    ),
                )
            }
        };
        let body = ErrorResponse {
            msg: msg.clone(),
            status_code: status.as_u16(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            let headers = response.headers_mut();
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tresor\""),
            );
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tresor\""),
            );
        }
        response
            .extensions_mut()
            .insert(ErrorInfo { code, message: msg });
        response
    }
}

/// Re-renders error bodies of the platform API as `{code, message}`.
pub(crate) async fn platform_error_body(response: Response) -> Response {
    let Some(info) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::json!({ "code": info.code, "message": info.message });
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

pub(crate) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

/// A handler's panic as a 500 with a request id; the payload goes only to the (redacted) log.
pub(crate) fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned());
    ApiError::Service(ServiceError::Internal(anyhow::anyhow!(
        "a handler panicked: {what}"
    )))
    .into_response()
}

//! `ApiError`: the one place where failures become HTTP responses.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
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
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Service(err) => {
                let status = match &err {
                    ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
                    ServiceError::Forbidden => StatusCode::FORBIDDEN,
                    ServiceError::Conflict(_) => StatusCode::CONFLICT,
                    ServiceError::Invalid { .. } => StatusCode::BAD_REQUEST,
                    ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let msg = if status.is_server_error() {
                    // The cause goes to the log under an id; the body names only the class.
                    let request_id = uuid::Uuid::now_v7();
                    tracing::error!(%request_id, error = ?err, "request failed");
                    format!("{err} (request id {request_id})")
                } else {
                    err.to_string()
                };
                (status, msg)
            }
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg),
            ApiError::PayloadTooLarge(msg) => (StatusCode::PAYLOAD_TOO_LARGE, msg),
            ApiError::NotFound(msg) => (StatusCode::NOT_FOUND, msg),
            ApiError::MethodNotAllowed(msg) => (StatusCode::METHOD_NOT_ALLOWED, msg),
        };
        let body = ErrorResponse {
            msg,
            status_code: status.as_u16(),
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

//! Extractors: the caller, strict JSON bodies and raw query pairs.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tresor_domain::{Caller, Principal, WorkspaceId};

use crate::ApiError;

/// The workspace every request uses until workspaces and authentication exist.
pub(crate) const DEFAULT_WORKSPACE: &str = "default";

/// Who the request acts as. Today every request is the local operator in the default
/// workspace; authentication will replace this extractor's body, not its callers.
pub(crate) struct CallerOf(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for CallerOf {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let workspace = WorkspaceId::parse(DEFAULT_WORKSPACE)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(CallerOf(Caller {
            principal: Principal::LocalOperator,
            workspace,
        }))
    }
}

/// A JSON body parsed strictly; errors name the offending field by its path.
pub(crate) struct StrictJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(
                    "the request body is larger than this server accepts; pass large inputs by url"
                        .to_owned(),
                )
            } else {
                ApiError::BadRequest(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest(
                "the request body is empty; send a JSON document".to_owned(),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(StrictJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    ApiError::BadRequest(format!("invalid JSON: {inner}"))
                } else {
                    ApiError::BadRequest(format!("invalid JSON at {path}: {inner}"))
                }
            })
    }
}

/// The query string as ordered `(key, value)` pairs, decoded.
pub(crate) struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(QueryPairs(
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

//! Secret endpoints. Bodies carrying values are parsed here with errors that never echo them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tresor_api_types::internal::{DeliveredLogin, DeliveredSecret, DeliveredSecrets};
use tresor_api_types::platform::{PutSecret, Secret, SecretVersion};
use tresor_crypto::SecretValue;
use tresor_service::{PutCondition, PutOutcome, Scope};

use crate::extract::{CallerOf, NameParam, PathParam};
use crate::{ApiError, AppState};

/// Parses the body without letting a parser message quote it: a malformed body holding a secret
/// must not come back in an error.
fn value_from(body: &Bytes) -> Result<SecretValue, ApiError> {
    let parsed: PutSecret = serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON".to_owned()
        } else {
            "the body must be {\"value\": \"…\"} or {\"value_base64\": \"…\"}".to_owned()
        };
        ApiError::BadRequest(format!("{what} (the value is not repeated here)"))
    })?;
    match (parsed.value, parsed.value_base64) {
        (Some(text), None) => Ok(SecretValue::new(text.into_bytes())),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(SecretValue::new)
            .map_err(|_| {
                ApiError::BadRequest(
                    "value_base64 is not valid base64 (the value is not repeated here)".to_owned(),
                )
            }),
        _ => Err(ApiError::BadRequest(
            "give exactly one of value and value_base64".to_owned(),
        )),
    }
}

/// The put's precondition, as HTTP spells it: `If-Match: "3"` (the version the caller last saw)
/// updates only that version, `If-None-Match: *` only creates, and neither creates or replaces.
fn condition(headers: &HeaderMap) -> Result<PutCondition, ApiError> {
    match (
        headers.get(header::IF_MATCH),
        headers.get(header::IF_NONE_MATCH),
    ) {
        (None, None) => Ok(PutCondition::Any),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send If-Match or If-None-Match, not both".to_owned(),
        )),
        (None, Some(raw)) => {
            if raw.to_str().is_ok_and(|s| s.trim() == "*") {
                Ok(PutCondition::Absent)
            } else {
                Err(ApiError::BadRequest(
                    "If-None-Match must be *, to create the secret only if it does not exist"
                        .to_owned(),
                ))
            }
        }
        (Some(raw), None) => raw
            .to_str()
            .ok()
            .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|s| s.parse::<i64>().ok())
            .map(PutCondition::Version)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "If-Match must be the secret's current version, such as \"3\"".to_owned(),
                )
            }),
    }
}

async fn put(
    state: AppState,
    caller: tresor_domain::Caller,
    scope: Scope,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value = value_from(&body)?;
    let condition = condition(&headers)?;
    let PutOutcome { version, created } = state
        .secrets
        .put(&caller, scope, &name, value, condition)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = SecretVersion {
        name,
        scope: if scope == Scope::User {
            "user"
        } else {
            "workspace"
        }
        .to_owned(),
        version,
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

pub(crate) async fn list_workspace(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Vec<Secret>>, ApiError> {
    Ok(Json(state.secrets.list(&caller, Scope::Workspace).await?))
}

pub(crate) async fn list_user(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Vec<Secret>>, ApiError> {
    Ok(Json(state.secrets.list(&caller, Scope::User).await?))
}

pub(crate) async fn put_workspace(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(name, _): PathParam<NameParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(state, caller, Scope::Workspace, name, headers, body).await
}

pub(crate) async fn put_user(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(name, _): PathParam<NameParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    put(state, caller, Scope::User, name, headers, body).await
}

pub(crate) async fn delete_workspace(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(name, _): PathParam<NameParam>,
) -> Result<StatusCode, ApiError> {
    state
        .secrets
        .delete(&caller, Scope::Workspace, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_user(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(name, _): PathParam<NameParam>,
) -> Result<StatusCode, ApiError> {
    state.secrets.delete(&caller, Scope::User, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The internal endpoint a worker calls once at task start. The credential is the task's, not a
/// user's; the body is the only place the values travel, over the server's own loopback.
pub(crate) async fn deliver(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<crate::extract::Id>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<DeliveredSecrets>, ApiError> {
    // Older workers send no body: their delivery cannot be repeated.
    let delivery = if body.is_empty() {
        None
    } else {
        let request: tresor_api_types::internal::SecretsRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the secrets request: {e}")))?;
        let ok = (16..=64).contains(&request.delivery.len())
            && request
                .delivery
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ApiError::BadRequest(
                "delivery must be 16 to 64 characters of A-Z, a-z, 0-9, - and _".to_owned(),
            ));
        }
        Some(request.delivery)
    };
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Service(tresor_service::ServiceError::Unauthenticated(
                "a task credential is required".to_owned(),
            ))
        })?;
    let delivered = state
        .tasks
        .deliver_secrets(&id, credential.trim(), delivery.as_deref())
        .await?;
    let encode = |value: &tresor_crypto::SecretValue| {
        base64::engine::general_purpose::STANDARD.encode(value.expose_secret())
    };
    Ok(Json(DeliveredSecrets {
        secrets: delivered
            .secrets
            .iter()
            .map(|(name, value)| DeliveredSecret {
                name: name.clone(),
                value_base64: encode(value),
            })
            .collect(),
        registry_logins: delivered
            .registry_logins
            .iter()
            .map(|(registry, value)| DeliveredLogin {
                registry: registry.clone(),
                value_base64: encode(value),
            })
            .collect(),
    }))
}

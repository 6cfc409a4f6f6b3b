//! The issuer's public documents, the internal endpoints a task's worker calls with its task
//! credential (identity tokens, presigned URLs), workspace storage locations, and preflight.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tresor_api_types::internal::{
    IssuedToken, PresignedInputs, PresignedObject, PresignedUploads, TokenRequest, UploadRequest,
};
use tresor_service::{Location, ServiceError};

use crate::extract::{Authenticated, CallerOf, Id, PathParam, StrictJson};
use crate::{ApiError, AppState};

/// The bearer credential of a task's worker.
pub(crate) fn task_credential(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Service(ServiceError::Unauthenticated(
                "a task credential is required".to_owned(),
            ))
        })
}

fn require_admin(principal: &tresor_domain::Principal) -> Result<(), ApiError> {
    if principal.is_admin {
        Ok(())
    } else {
        Err(ApiError::Service(ServiceError::Forbidden(
            "this needs a platform administrator".to_owned(),
        )))
    }
}

pub(crate) async fn discovery(State(state): State<AppState>) -> Json<Value> {
    Json(state.identity.discovery())
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jwks = state.identity.jwks().await?;
    // Relying parties may cache it briefly; a rotation publishes the next key before use ends.
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(jwks)).into_response())
}

/// Present for relying parties that insist on the field; tresor issues tokens to workloads only.
pub(crate) async fn authorize() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": "unsupported_response_type",
            "error_description": "tresor issues identity tokens to its own tasks only; there is no interactive login here",
        })),
    )
        .into_response()
}

pub(crate) async fn task_token(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<Id>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<TokenRequest>,
) -> Result<Json<IssuedToken>, ApiError> {
    let credential = task_credential(&headers)?;
    let issued = state
        .tasks
        .task_token(&id, credential, body.audience.as_deref())
        .await?;
    Ok(Json(IssuedToken {
        token: issued.token,
        expires_at: issued.expires_at,
    }))
}

pub(crate) async fn task_inputs(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<Id>,
    headers: HeaderMap,
) -> Result<Json<PresignedInputs>, ApiError> {
    let credential = task_credential(&headers)?;
    let inputs = state.tasks.task_inputs(&id, credential).await?;
    Ok(Json(PresignedInputs {
        inputs: inputs
            .into_iter()
            .map(|i| PresignedObject {
                path: i.path,
                url: i.url,
            })
            .collect(),
    }))
}

pub(crate) async fn task_uploads(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<Id>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<UploadRequest>,
) -> Result<Json<PresignedUploads>, ApiError> {
    let credential = task_credential(&headers)?;
    let urls = state
        .tasks
        .task_uploads(&id, credential, &body.urls)
        .await?;
    Ok(Json(PresignedUploads { urls }))
}

/// A workspace's storage location.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageBody {
    pub bucket: String,
    pub prefix: String,
}

pub(crate) async fn get_storage(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Value>, ApiError> {
    let location = state
        .storage
        .location(&caller.workspace)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "workspace {} has no storage location; a platform administrator sets one with PUT",
                caller.workspace
            ))
        })?;
    Ok(Json(json!({
        "bucket": location.bucket,
        "prefix": location.prefix,
        "url": location.url(),
    })))
}

async fn workspace_of(state: &AppState, raw: &str) -> Result<tresor_domain::WorkspaceId, ApiError> {
    let id = tresor_domain::WorkspaceId::parse(raw).map_err(|_| {
        ApiError::Service(ServiceError::NotFound(tresor_service::Entity::Workspace))
    })?;
    if !state.platform.workspace_exists(&id).await? {
        return Err(ApiError::Service(ServiceError::NotFound(
            tresor_service::Entity::Workspace,
        )));
    }
    Ok(id)
}

pub(crate) async fn put_storage(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(workspace, _): PathParam<crate::extract::WorkspaceParam>,
    StrictJson(body): StrictJson<StorageBody>,
) -> Result<StatusCode, ApiError> {
    require_admin(&principal)?;
    let workspace = workspace_of(&state, &workspace).await?;
    state
        .storage
        .set_location(
            &principal,
            &workspace,
            Some(Location {
                bucket: body.bucket,
                prefix: body.prefix,
            }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_storage(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(workspace, _): PathParam<crate::extract::WorkspaceParam>,
) -> Result<StatusCode, ApiError> {
    require_admin(&principal)?;
    let workspace = workspace_of(&state, &workspace).await?;
    state
        .storage
        .set_location(&principal, &workspace, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A workspace's host directory for `file://` storage.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileStorageBody {
    pub dir: String,
}

pub(crate) async fn get_file_storage(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Value>, ApiError> {
    let root = state
        .storage
        .file_root(&caller.workspace)
        .await?
        .ok_or_else(|| ApiError::NotFound("this server allows no file:// storage".to_owned()))?;
    Ok(Json(json!({
        "dir": root.dir.display().to_string(),
        "url": format!("file://{}/", root.dir.display()),
        "assigned": root.assigned,
    })))
}

pub(crate) async fn put_file_storage(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(workspace, _): PathParam<crate::extract::WorkspaceParam>,
    StrictJson(body): StrictJson<FileStorageBody>,
) -> Result<StatusCode, ApiError> {
    require_admin(&principal)?;
    let workspace = workspace_of(&state, &workspace).await?;
    state
        .storage
        .set_file_root(&principal, &workspace, Some(&body.dir))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_file_storage(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(workspace, _): PathParam<crate::extract::WorkspaceParam>,
) -> Result<StatusCode, ApiError> {
    require_admin(&principal)?;
    let workspace = workspace_of(&state, &workspace).await?;
    state
        .storage
        .set_file_root(&principal, &workspace, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a preflight request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckBody {
    /// The workspace whose storage the probe uses (default: the caller's personal workspace).
    #[serde(default)]
    pub workspace: Option<String>,
}

pub(crate) async fn check(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(env, _): PathParam<Id>,
    body: axum::body::Bytes,
) -> Result<Json<tresor_service::preflight::Report>, ApiError> {
    require_admin(&principal)?;
    if env != "local" {
        return Err(ApiError::NotFound(format!(
            "compute environment {env:?} does not exist; known: local"
        )));
    }
    let body: CheckBody = if body.iter().all(u8::is_ascii_whitespace) {
        CheckBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be {{\"workspace\": \"…\"}} or empty: {e}"
            ))
        })?
    };
    let workspace = match body.workspace {
        Some(raw) => workspace_of(&state, &raw).await?,
        None => state.platform.personal_workspace_of(&principal).await?,
    };
    let report = state.preflight.run(&env, &workspace).await;
    Ok(Json(report))
}

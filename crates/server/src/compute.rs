//! Compute environments: the list, a workspace's choice and egress allowlist, and the two internal endpoints of a
//! task's worker (a batch job's spending its bootstrap token; any worker reporting its status).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tresor_api_types::internal::{BootstrapRequest, StatusAck, WorkerStatus};
use tresor_api_types::platform::EgressPolicy;
use tresor_service::WorkerAssignment;

use crate::extract::{Authenticated, CallerOf, Id, PathParam, StrictJson};
use crate::identity::task_credential;
use crate::{ApiError, AppState};

pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
) -> Json<Value> {
    Json(json!({ "compute_envs": state.tasks.compute_envs() }))
}

pub(crate) async fn get_choice(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Value>, ApiError> {
    let env = state.tasks.workspace_compute_env(&caller).await?;
    Ok(Json(json!({ "compute_env": env })))
}

/// A workspace's choice of compute environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChoiceBody {
    pub compute_env: String,
}

pub(crate) async fn put_choice(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    StrictJson(body): StrictJson<ChoiceBody>,
) -> Result<StatusCode, ApiError> {
    state
        .tasks
        .set_workspace_compute_env(&caller, &body.compute_env)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn get_egress(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<EgressPolicy>, ApiError> {
    Ok(Json(state.tasks.egress(&caller).await?))
}

/// Answers with the rules as stored (lowercase, canonical addresses).
pub(crate) async fn put_egress(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    StrictJson(policy): StrictJson<EgressPolicy>,
) -> Result<Json<EgressPolicy>, ApiError> {
    Ok(Json(state.tasks.set_egress(&caller, policy).await?))
}

/// The bearer is the job's one-time bootstrap token; the answer holds the worker's session.
pub(crate) async fn bootstrap(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<Id>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<BootstrapRequest>,
) -> Result<Json<WorkerAssignment>, ApiError> {
    let token = task_credential(&headers)?;
    Ok(Json(state.tasks.bootstrap_task(&id, token, body).await?))
}

pub(crate) async fn report_status(
    State(state): State<AppState>,
    PathParam(id, _): PathParam<Id>,
    headers: HeaderMap,
    StrictJson(body): StrictJson<WorkerStatus>,
) -> Result<Json<StatusAck>, ApiError> {
    let credential = task_credential(&headers)?;
    let state = state.tasks.report_status(&id, credential, body).await?;
    Ok(Json(StatusAck {
        state: state.as_str().to_owned(),
    }))
}

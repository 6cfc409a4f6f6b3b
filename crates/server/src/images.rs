//! A workspace's image policy: which images it may run, and its registry logins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tresor_service::images::ImagePolicy;

use crate::extract::{CallerOf, StrictJson};
use crate::{ApiError, AppState};

pub(crate) async fn get_policy(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<ImagePolicy>, ApiError> {
    Ok(Json(state.images.policy(&caller).await?))
}

pub(crate) async fn put_policy(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    StrictJson(policy): StrictJson<ImagePolicy>,
) -> Result<StatusCode, ApiError> {
    state.images.set_policy(&caller, policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! The GA4GH TES 1.1 routes: extract, call `TaskService`, map.

use axum::Json;
use axum::extract::State;
use tresor_api_types::tes::{
    TesCancelTaskResponse, TesCreateTaskResponse, TesListTasksResponse, TesServiceInfo, TesState,
    TesTask, TesView,
};
use tresor_service::ListTasksRequest;

use crate::extract::{CallerOf, Id, PathParam, QueryPairs, StrictJson};
use crate::{ApiError, AppState};

pub(crate) async fn service_info(State(state): State<AppState>) -> Json<TesServiceInfo> {
    Json(state.tasks.service_info())
}

pub(crate) async fn create_task(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    StrictJson(task): StrictJson<TesTask>,
) -> Result<Json<TesCreateTaskResponse>, ApiError> {
    let id = state.tasks.create_task(&caller, task).await?;
    Ok(Json(TesCreateTaskResponse { id: id.to_string() }))
}

pub(crate) async fn get_task(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TesTask>, ApiError> {
    let mut view = TesView::Minimal;
    for (key, value) in &query {
        match key.as_str() {
            "view" => view = parse_view(value)?,
            other => return Err(unknown_parameter(other, "view")),
        }
    }
    Ok(Json(state.tasks.get_task(&caller, &id, view).await?))
}

pub(crate) async fn cancel_task(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id_and_action, _): PathParam<Id>,
) -> Result<Json<TesCancelTaskResponse>, ApiError> {
    let Some(id) = id_and_action.strip_suffix(":cancel") else {
        return Err(ApiError::MethodNotAllowed(format!(
            "POST /tasks/{id_and_action} is not an operation; to cancel a task POST /tasks/{{id}}:cancel"
        )));
    };
    state.tasks.cancel_task(&caller, id).await?;
    Ok(Json(TesCancelTaskResponse {}))
}

pub(crate) async fn list_tasks(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TesListTasksResponse>, ApiError> {
    let mut request = ListTasksRequest::default();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (key, value) in query {
        // An empty value means "not given", as clients that send `?state=` intend.
        match key.as_str() {
            "name_prefix" => request.name_prefix = Some(value).filter(|v| !v.is_empty()),
            "state" if value.is_empty() => {}
            "state" => {
                request.state = Some(TesState::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "state: {value:?} is not a TES state; use one of {}",
                        TesState::ALL.map(TesState::as_str).join(", ")
                    ))
                })?);
            }
            "tag_key" => keys.push(value),
            "tag_value" => values.push(value),
            "page_size" if value.is_empty() => {}
            "page_size" => {
                request.page_size = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!("page_size: {value:?} is not an integer"))
                })?);
            }
            "page_token" => request.page_token = Some(value).filter(|v| !v.is_empty()),
            "view" => request.view = parse_view(&value)?,
            other => {
                return Err(unknown_parameter(
                    other,
                    "name_prefix, state, tag_key, tag_value, page_size, page_token, view",
                ));
            }
        }
    }
    if values.len() > keys.len() {
        return Err(ApiError::BadRequest(
            "tag_value: there are more tag_value than tag_key parameters; they pair up in order"
                .to_owned(),
        ));
    }
    if let Some(empty) = keys.iter().position(String::is_empty) {
        return Err(ApiError::BadRequest(format!(
            "tag_key: entry {empty} is empty"
        )));
    }
    values.resize(keys.len(), String::new());
    request.tags = keys.into_iter().zip(values).collect();
    Ok(Json(state.tasks.list_tasks(&caller, request).await?))
}

fn parse_view(value: &str) -> Result<TesView, ApiError> {
    match value {
        "" | "MINIMAL" => Ok(TesView::Minimal),
        "BASIC" => Ok(TesView::Basic),
        "FULL" => Ok(TesView::Full),
        other => Err(ApiError::BadRequest(format!(
            "view: {other:?} is not a view; use MINIMAL, BASIC or FULL"
        ))),
    }
}

fn unknown_parameter(name: &str, known: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unknown query parameter {name:?}; this endpoint accepts {known}"
    ))
}

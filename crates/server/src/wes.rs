//! The GA4GH WES 1.1 routes (extract, call `RunService`, map), and the run's TES that a run's
//! engine reaches through its worker (`/internal/v1/tasks/{engine}/run/tasks…`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, Uri};
use tresor_api_types::tes::{
    TesCancelTaskResponse, TesCreateTaskResponse, TesListTasksResponse, TesTask, TesView,
};
use tresor_api_types::wes::{
    RegisteredWorkflow, RunId, RunListResponse, RunLog, RunRequest, RunStatus, TaskListResponse,
    WesServiceInfo, WesTaskLog, WorkflowPolicy,
};
use tresor_service::{Attachment, ListTasksRequest, RunSubmission};

use crate::extract::{
    CallerOf, Id, NameParam, PathParam, QueryPairs, StrictJson, TaskParam, VersionParam,
};
use crate::identity::task_credential;
use crate::{ApiError, AppState};

/// The WES base path of a request: `/ga4gh/wes/v1` or `/w/{workspace}/ga4gh/wes/v1`.
fn base(uri: &Uri) -> String {
    let path = uri.path();
    match path.find("/ga4gh/wes/v1") {
        Some(at) => path[..at + "/ga4gh/wes/v1".len()].to_owned(),
        None => "/ga4gh/wes/v1".to_owned(),
    }
}

pub(crate) async fn service_info(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<WesServiceInfo>, ApiError> {
    Ok(Json(state.runs.service_info(Some(&caller)).await?))
}

fn paging(query: Vec<(String, String)>) -> Result<(Option<i64>, Option<String>), ApiError> {
    let (mut size, mut token) = (None, None);
    for (key, value) in query {
        match key.as_str() {
            "page_size" if value.is_empty() => {}
            "page_size" => {
                size = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!("page_size: {value:?} is not an integer"))
                })?);
            }
            "page_token" => token = Some(value).filter(|v| !v.is_empty()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}; this endpoint accepts page_size, page_token"
                )));
            }
        }
    }
    Ok((size, token))
}

pub(crate) async fn list_runs(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    QueryPairs(query): QueryPairs,
) -> Result<Json<RunListResponse>, ApiError> {
    let (size, token) = paging(query)?;
    Ok(Json(
        state
            .runs
            .list_runs(&caller, size, token.as_deref())
            .await?,
    ))
}

/// A form field's text, at most `max` bytes.
async fn field_text(
    field: axum::extract::multipart::Field<'_>,
    name: &str,
    max: usize,
) -> Result<String, ApiError> {
    let bytes = field_bytes(field, name, max).await?;
    String::from_utf8(bytes).map_err(|_| ApiError::BadRequest(format!("{name}: is not UTF-8 text")))
}

async fn field_bytes(
    mut field: axum::extract::multipart::Field<'_>,
    name: &str,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(name, &e))? {
        if out.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge(format!(
                "{name}: is larger than this server accepts ({max} bytes); see workflows.max_attachment_mb"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn multipart_error(name: &str, e: &axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::BadRequest(format!(
        "{name}: the multipart/form-data body is malformed: {}",
        e.body_text()
    ))
}

fn json_object<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        ApiError::BadRequest(format!(
            "{name}: is not the JSON this field takes ({e}); send a JSON object"
        ))
    })
}

/// Engine parameters as strings: WES sends a JSON object, whose values may be numbers or
/// booleans too.
fn string_map(name: &str, text: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let map: serde_json::Map<String, serde_json::Value> = json_object(name, text)?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(ApiError::BadRequest(format!(
                "{name}.{k}: {other} is not a string, number or boolean"
            ))),
        })
        .collect()
}

/// A WES RunWorkflow form (`multipart/form-data`), with `extra` fields beside WES's own (the
/// registry's `name` and `version`), which come back in the map.
async fn read_form(
    state: &AppState,
    headers: &HeaderMap,
    request: axum::extract::Request,
    extra: &[&str],
) -> Result<(BTreeMap<String, String>, RunSubmission), ApiError> {
    let is_multipart = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return Err(ApiError::BadRequest(
            "this takes multipart/form-data (workflow_url, workflow_type, workflow_type_version, workflow_params, workflow_attachment, …)".to_owned(),
        ));
    }
    // Every byte counts against the attachments' limit; fields are small. The whole body,
    // part headers and all, may exceed the attachments by at most `SLACK`.
    let max_total = usize::try_from(state.runs.max_attachment_bytes()).unwrap_or(usize::MAX);
    const MAX_FIELD: usize = 1 << 20;
    const SLACK: usize = 16 << 20;
    let max_parts = state.runs.max_attachments() + 16;
    let request = request.map(|body| {
        axum::body::Body::new(http_body_util::Limited::new(
            body,
            max_total.saturating_add(SLACK),
        ))
    });
    let mut multipart = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| {
            ApiError::BadRequest(format!("the multipart/form-data body: {}", e.body_text()))
        })?;
    let mut parts = 0usize;
    const WES_FIELDS: [&str; 8] = [
        "workflow_params",
        "workflow_type",
        "workflow_type_version",
        "tags",
        "workflow_engine",
        "workflow_engine_version",
        "workflow_engine_parameters",
        "workflow_url",
    ];
    let mut total = 0usize;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut attachments = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error("body", &e))?
    {
        parts += 1;
        if parts > max_parts {
            return Err(ApiError::PayloadTooLarge(format!(
                "more than {max_parts} parts; a run may attach at most {} files (workflows.max_attachments)",
                max_parts - 16
            )));
        }
        let name = field.name().unwrap_or_default().to_owned();
        if name == "workflow_attachment" || name == "workflow_attachment[]" {
            if field.file_name().is_some_and(|n| n.len() > 255) {
                return Err(ApiError::BadRequest(
                    "workflow_attachment: a file name is longer than 255 bytes".to_owned(),
                ));
            }
            let Some(path) = field.file_name().map(str::to_owned) else {
                return Err(ApiError::BadRequest(
                    "workflow_attachment: each part needs a file name (Content-Disposition filename=…)".to_owned(),
                ));
            };
            let content = field_bytes(
                field,
                "workflow_attachment",
                max_total.saturating_sub(total),
            )
            .await?;
            total += content.len();
            attachments.push(Attachment { path, content });
        } else if WES_FIELDS.contains(&name.as_str()) || extra.contains(&name.as_str()) {
            let text = field_text(field, &name, MAX_FIELD).await?;
            total += text.len();
            if fields.insert(name.clone(), text).is_some() {
                return Err(ApiError::BadRequest(format!("{name}: is given twice")));
            }
        } else {
            return Err(ApiError::BadRequest(format!(
                "unknown form field {name:?}; this takes {}{} and workflow_attachment",
                extra.iter().map(|f| format!("{f}, ")).collect::<String>(),
                WES_FIELDS.join(", ")
            )));
        }
    }
    let required = |name: &str| {
        fields
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .ok_or_else(|| ApiError::BadRequest(format!("{name}: is required")))
    };
    let optional = |name: &str| fields.get(name).filter(|v| !v.trim().is_empty()).cloned();
    let request = RunRequest {
        workflow_params: optional("workflow_params")
            .map(|t| json_object("workflow_params", &t))
            .transpose()?,
        workflow_type: required("workflow_type")?,
        workflow_type_version: required("workflow_type_version")?,
        tags: optional("tags")
            .map(|t| string_map("tags", &t))
            .transpose()?
            .unwrap_or_default(),
        workflow_engine_parameters: optional("workflow_engine_parameters")
            .map(|t| string_map("workflow_engine_parameters", &t))
            .transpose()?
            .unwrap_or_default(),
        workflow_engine: optional("workflow_engine"),
        workflow_engine_version: optional("workflow_engine_version"),
        workflow_url: required("workflow_url")?,
    };
    let extra_values = extra
        .iter()
        .map(|name| Ok(((*name).to_owned(), required(name)?)))
        .collect::<Result<BTreeMap<_, _>, ApiError>>()?;
    Ok((
        extra_values,
        RunSubmission {
            request,
            attachments,
        },
    ))
}

/// RunWorkflow: `multipart/form-data` as WES 1.1 defines it.
pub(crate) async fn run_workflow(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Json<RunId>, ApiError> {
    let (_, submission) = read_form(&state, &headers, request, &[]).await?;
    let id = state.runs.run_workflow(&caller, submission).await?;
    Ok(Json(RunId { run_id: id }))
}

/// Registers (admins) or proposes (maintainers) a workflow version: the RunWorkflow form with
/// `name` and `version`.
pub(crate) async fn register_workflow(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Json<RegisteredWorkflow>, ApiError> {
    let (names, submission) = read_form(&state, &headers, request, &["name", "version"]).await?;
    Ok(Json(
        state
            .runs
            .register_workflow(&caller, &names["name"], &names["version"], submission)
            .await?,
    ))
}

pub(crate) async fn list_workflows(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<serde_json::Value>, ApiError> {
    let workflows = state.runs.list_workflows(&caller).await?;
    Ok(Json(serde_json::json!({ "workflows": workflows })))
}

pub(crate) async fn approve_workflow(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(name, _): PathParam<NameParam>,
    PathParam(version, _): PathParam<VersionParam>,
) -> Result<Json<RegisteredWorkflow>, ApiError> {
    Ok(Json(
        state
            .runs
            .approve_workflow(&caller, &name, &version)
            .await?,
    ))
}

pub(crate) async fn get_policy(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<WorkflowPolicy>, ApiError> {
    Ok(Json(state.runs.workflow_policy(&caller).await?))
}

pub(crate) async fn put_policy(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    StrictJson(policy): StrictJson<WorkflowPolicy>,
) -> Result<axum::http::StatusCode, ApiError> {
    state.runs.set_workflow_policy(&caller, policy).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

pub(crate) async fn run_log(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
    uri: Uri,
) -> Result<Json<RunLog>, ApiError> {
    Ok(Json(state.runs.run_log(&caller, &id, &base(&uri)).await?))
}

pub(crate) async fn run_status(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
) -> Result<Json<RunStatus>, ApiError> {
    Ok(Json(state.runs.run_status(&caller, &id).await?))
}

pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
) -> Result<Json<RunId>, ApiError> {
    Ok(Json(RunId {
        run_id: state.runs.cancel_run(&caller, &id).await?,
    }))
}

pub(crate) async fn run_tasks(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TaskListResponse>, ApiError> {
    let (size, token) = paging(query)?;
    Ok(Json(state.runs.run_tasks(&caller, &id, size, token).await?))
}

pub(crate) async fn run_task(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(id, _): PathParam<Id>,
    PathParam(task, _): PathParam<TaskParam>,
) -> Result<Json<WesTaskLog>, ApiError> {
    Ok(Json(state.runs.run_task(&caller, &id, &task).await?))
}

/// An engine creates a job of its run.
pub(crate) async fn engine_create_job(
    State(state): State<AppState>,
    PathParam(engine, _): PathParam<Id>,
    headers: HeaderMap,
    StrictJson(task): StrictJson<TesTask>,
) -> Result<Json<TesCreateTaskResponse>, ApiError> {
    let credential = task_credential(&headers)?;
    let id = state
        .runs
        .engine_create_job(&engine, credential, task)
        .await?;
    Ok(Json(TesCreateTaskResponse { id: id.to_string() }))
}

fn view_only(query: &[(String, String)]) -> Result<TesView, ApiError> {
    let mut view = TesView::Minimal;
    for (key, value) in query {
        match (key.as_str(), value.as_str()) {
            ("view", "" | "MINIMAL") => view = TesView::Minimal,
            ("view", "BASIC") => view = TesView::Basic,
            ("view", "FULL") => view = TesView::Full,
            ("view", other) => {
                return Err(ApiError::BadRequest(format!(
                    "view: {other:?} is not a view; use MINIMAL, BASIC or FULL"
                )));
            }
            (other, _) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}; this endpoint accepts view"
                )));
            }
        }
    }
    Ok(view)
}

/// An engine lists its run's tasks (`view`, `page_size`, `page_token`, `state`).
pub(crate) async fn engine_list_jobs(
    State(state): State<AppState>,
    PathParam(engine, _): PathParam<Id>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TesListTasksResponse>, ApiError> {
    let credential = task_credential(&headers)?;
    let mut request = ListTasksRequest::default();
    let mut rest = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            "page_size" if !value.is_empty() => {
                request.page_size = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!("page_size: {value:?} is not an integer"))
                })?);
            }
            "page_token" => request.page_token = Some(value).filter(|v| !v.is_empty()),
            "state" if !value.is_empty() => {
                request.state = Some(tresor_api_types::tes::TesState::parse(&value).ok_or_else(
                    || ApiError::BadRequest(format!("state: {value:?} is not a TES state")),
                )?);
            }
            _ => rest.push((key, value)),
        }
    }
    request.view = view_only(&rest)?;
    Ok(Json(
        state
            .runs
            .engine_list_jobs(&engine, credential, request)
            .await?,
    ))
}

/// An engine reads one of its run's tasks (`GET`), or cancels one (`POST …:cancel`).
pub(crate) async fn engine_get_job(
    State(state): State<AppState>,
    PathParam(engine, _): PathParam<Id>,
    PathParam(job, _): PathParam<TaskParam>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Result<Json<TesTask>, ApiError> {
    let credential = task_credential(&headers)?;
    let view = view_only(&query)?;
    Ok(Json(
        state
            .runs
            .engine_get_job(&engine, credential, &job, view)
            .await?,
    ))
}

pub(crate) async fn engine_cancel_job(
    State(state): State<AppState>,
    PathParam(engine, _): PathParam<Id>,
    PathParam(job, _): PathParam<TaskParam>,
    headers: HeaderMap,
) -> Result<Json<TesCancelTaskResponse>, ApiError> {
    let credential = task_credential(&headers)?;
    let Some(job) = job.strip_suffix(":cancel") else {
        return Err(ApiError::MethodNotAllowed(format!(
            "POST /tasks/{job} is not an operation; to cancel a task POST /tasks/{{id}}:cancel"
        )));
    };
    state
        .runs
        .engine_cancel_job(&engine, credential, job)
        .await?;
    Ok(Json(TesCancelTaskResponse {}))
}

//! GA4GH WES 1.1 wire types, field for field as `wes-1.1.0.openapi.yaml` defines them. A run's
//! state is TES's `State` (the two specs share its eleven values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tes::{Organization, ServiceType, TesState};

/// `ServiceInfo`: GA4GH `Service` plus WES's required fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WesServiceInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub organization: Organization,
    pub version: String,
    /// Workflow type (`CWL`, `SMK`, …) → the versions of it that can run.
    pub workflow_type_versions: BTreeMap<String, WorkflowTypeVersion>,
    pub supported_wes_versions: Vec<String>,
    pub supported_filesystem_protocols: Vec<String>,
    /// Engine name → its versions.
    pub workflow_engine_versions: BTreeMap<String, WorkflowEngineVersion>,
    pub default_workflow_engine_parameters: Vec<DefaultWorkflowEngineParameter>,
    /// Runs of the caller's workspace by state (only the caller's workspace: counting others'
    /// would tell a member of one workspace about another).
    pub system_state_counts: BTreeMap<String, i64>,
    pub auth_instructions_url: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowTypeVersion {
    pub workflow_type_version: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowEngineVersion {
    pub workflow_engine_version: Vec<String>,
}

/// An engine parameter a run may set, with the value it has when not set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultWorkflowEngineParameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub default_value: String,
}

/// `RunRequest`, as stored and echoed in `RunLog.request`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_params: Option<serde_json::Map<String, serde_json::Value>>,
    pub workflow_type: String,
    pub workflow_type_version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflow_engine_parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_engine_version: Option<String>,
    pub workflow_url: String,
}

/// `RunId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunId {
    pub run_id: String,
}

/// `RunStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_id: String,
    pub state: TesState,
}

/// `RunSummary`: what ListRuns returns for each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: TesState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// `RunListResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunListResponse {
    pub runs: Vec<RunSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `Log`: the engine's (in `RunLog.run_log`) or a task's. `stdout` and `stderr` are URLs that
/// work with the same credentials as the WES endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WesLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_logs: Option<Vec<String>>,
}

/// `TaskLog`: one job of a run, which is a tresor TES task (`tes_uri`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WesTaskLog {
    pub id: String,
    pub name: String,
    /// `Log`'s other fields (its `name` is the one above: leave `log.name` empty).
    #[serde(flatten)]
    pub log: WesLog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tes_uri: Option<String>,
    /// tresor's addition: the task's state, so a client need not follow `tes_uri` to see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TesState>,
}

/// `TaskListResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskListResponse {
    pub task_logs: Vec<WesTaskLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `RunLog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLog {
    pub run_id: String,
    pub request: RunRequest,
    pub state: TesState,
    pub run_log: WesLog,
    pub task_logs_url: String,
    /// Deprecated in 1.1 and nullable; tresor points at `task_logs_url` instead.
    #[serde(default)]
    pub task_logs: Option<Vec<WesTaskLog>>,
    pub outputs: serde_json::Map<String, serde_json::Value>,
}

/// tresor's extension: a workspace's registered workflow (`/api/v1/workspaces/{ws}/workflows`).
/// A run names it as `workflow_url = "registered:NAME@VERSION"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredWorkflow {
    pub name: String,
    pub version: String,
    /// `sha256:` and the hex SHA-256 over the main file's name and each file's name and digest.
    pub digest: String,
    pub workflow_type: String,
    pub workflow_type_version: String,
    /// The main file, one of `files`.
    pub workflow_url: String,
    pub files: Vec<String>,
    /// `proposed` (by a maintainer; an admin approves it) or `approved`.
    pub state: String,
    pub proposed_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    pub created_at: String,
}

/// Whether a workspace runs only registered workflows, whoever starts them (`launch` members
/// run only registered ones in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPolicy {
    pub registered_only: bool,
}

//! GA4GH TES 1.1 wire types, field for field as `tes-1.1.openapi.yaml` defines them.
//!
//! Optional fields are `Option` and are omitted when absent, so a view can drop a field by
//! setting it to `None`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `view` query parameter of GetTask and ListTasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TesView {
    /// Only `id` and `state`.
    #[default]
    Minimal,
    /// Everything but executor stdout/stderr, input `content` and `system_logs`.
    Basic,
    /// Everything.
    Full,
}

/// `tesState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TesState {
    Unknown,
    Queued,
    Initializing,
    Running,
    Paused,
    Complete,
    ExecutorError,
    SystemError,
    Canceled,
    Preempted,
    Canceling,
}

impl TesState {
    /// The spelling used on the wire and in query parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            TesState::Unknown => "UNKNOWN",
            TesState::Queued => "QUEUED",
            TesState::Initializing => "INITIALIZING",
            TesState::Running => "RUNNING",
            TesState::Paused => "PAUSED",
            TesState::Complete => "COMPLETE",
            TesState::ExecutorError => "EXECUTOR_ERROR",
            TesState::SystemError => "SYSTEM_ERROR",
            TesState::Canceled => "CANCELED",
            TesState::Preempted => "PREEMPTED",
            TesState::Canceling => "CANCELING",
        }
    }

    /// All states, in the spec's order.
    pub const ALL: [TesState; 11] = [
        TesState::Unknown,
        TesState::Queued,
        TesState::Initializing,
        TesState::Running,
        TesState::Paused,
        TesState::Complete,
        TesState::ExecutorError,
        TesState::SystemError,
        TesState::Canceled,
        TesState::Preempted,
        TesState::Canceling,
    ];

    /// Parses the wire spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<TesState> {
        TesState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// True once the task will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TesState::Complete
                | TesState::ExecutorError
                | TesState::SystemError
                | TesState::Canceled
                | TesState::Preempted
        )
    }
}

/// `tesFileType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TesFileType {
    #[default]
    File,
    Directory,
}

/// `tesTask`: the document a client submits, and what GetTask returns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesTask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TesState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<TesInput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<TesOutput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<TesResources>,
    /// Required by the spec; an empty list is how the MINIMAL view leaves it out, and the server
    /// rejects a task without executors with a message rather than a bare "missing field".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executors: Vec<TesExecutor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<TesTaskLog>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
}

/// `tesExecutor`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesExecutor {
    pub image: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_error: Option<bool>,
}

/// `tesInput`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<TesFileType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamable: Option<bool>,
}

/// `tesOutput`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub url: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<TesFileType>,
}

/// `tesResources`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_parameters: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_parameters_strict: Option<bool>,
}

/// `tesTaskLog`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesTaskLog {
    pub logs: Vec<TesExecutorLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    pub outputs: Vec<TesOutputFileLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_logs: Option<Vec<String>>,
}

/// `tesExecutorLog`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesExecutorLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    pub exit_code: i32,
}

/// `tesOutputFileLog`; `size_bytes` is a string because JSON has no int64.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesOutputFileLog {
    pub url: String,
    pub path: String,
    pub size_bytes: String,
}

/// `tesCreateTaskResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesCreateTaskResponse {
    pub id: String,
}

/// `tesCancelTaskResponse`: an empty object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesCancelTaskResponse {}

/// `tesListTasksResponse`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesListTasksResponse {
    pub tasks: Vec<TesTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// GA4GH service-info `ServiceType`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceType {
    pub group: String,
    pub artifact: String,
    pub version: String,
}

/// GA4GH service-info `Organization`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub name: String,
    pub url: String,
}

/// `tesServiceInfo`: GA4GH `Service` plus TES's storage and backend parameter lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TesServiceInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub organization: Organization,
    #[serde(
        rename = "contactUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub contact_url: Option<String>,
    #[serde(
        rename = "documentationUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub documentation_url: Option<String>,
    #[serde(rename = "createdAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "updatedAt", default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub version: String,
    pub storage: Vec<String>,
    #[serde(rename = "tesResources_backend_parameters")]
    pub tes_resources_backend_parameters: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let err = serde_json::from_str::<TesTask>(r#"{"executors":[],"nmae":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn state_round_trips_through_its_wire_spelling() {
        for state in TesState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(TesState::parse(state.as_str()), Some(state));
        }
        assert_eq!(TesState::parse("queued"), None);
    }

    #[test]
    fn minimal_task_serializes_only_id_and_state() {
        let task = TesTask {
            id: Some("t1".into()),
            state: Some(TesState::Queued),
            ..TesTask::default()
        };
        assert_eq!(
            serde_json::to_string(&task).unwrap(),
            r#"{"id":"t1","state":"QUEUED"}"#
        );
    }
}

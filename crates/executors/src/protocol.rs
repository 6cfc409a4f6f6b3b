//! What the server hands a worker (`task.json`) and what the worker reports back (`status.json`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tresor_api_types::tes::{TesExecutor, TesInput, TesOutput, TesTaskLog};
use tresor_domain::TaskState;

use crate::SandboxSettings;

/// Everything a worker needs to run one task; written 0600 into the task directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTask {
    pub task_id: String,
    pub inputs: Vec<TesInput>,
    pub outputs: Vec<TesOutput>,
    pub executors: Vec<TesExecutor>,
    pub volumes: Vec<String>,
    /// Whether the sandbox shares the host's network (the task asked and the server allows it).
    pub network: bool,
    pub sandbox: SandboxSettings,
    /// Host directories that `file://` inputs may come from and outputs may go to.
    pub allowed_dirs: Vec<PathBuf>,
    /// How many bytes of each executor's stdout and stderr the task log keeps.
    pub log_tail_bytes: usize,
    /// Whether http(s) inputs may come from loopback, private or link-local addresses (the
    /// worker fetches on the host's network, outside the sandbox).
    #[serde(default)]
    pub allow_private_http_inputs: bool,
    /// The secrets the task declared, and how to fetch them when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretDelivery>,
}

/// Where a worker fetches its task's secrets, once, when the task starts. The values themselves
/// never appear in this file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDelivery {
    /// The server's internal endpoint for this task.
    pub url: String,
    /// A single-use credential bound to this task, valid only while it is active.
    pub credential: String,
    /// Names delivered as files in `$TRESOR_SECRETS_DIR` (mode 0400, on a private tmpfs).
    pub files: Vec<String>,
    /// Names also exported as environment variables of the executors.
    pub env: Vec<String>,
}

impl std::fmt::Debug for SecretDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDelivery")
            .field("url", &self.url)
            .field("credential", &"***")
            .field("files", &self.files)
            .field("env", &self.env)
            .finish()
    }
}

/// One secret as the server hands it to a worker.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveredSecret {
    pub name: String,
    pub value_base64: String,
}

/// The body of the internal secrets endpoint.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeliveredSecrets {
    pub secrets: Vec<DeliveredSecret>,
}

/// Where the worker is in running its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerPhase {
    Initializing,
    Running,
    Complete,
    ExecutorError,
    SystemError,
}

impl WorkerPhase {
    pub fn task_state(self) -> TaskState {
        match self {
            WorkerPhase::Initializing => TaskState::Initializing,
            WorkerPhase::Running => TaskState::Running,
            WorkerPhase::Complete => TaskState::Complete,
            WorkerPhase::ExecutorError => TaskState::ExecutorError,
            WorkerPhase::SystemError => TaskState::SystemError,
        }
    }

    pub fn is_final(self) -> bool {
        self.task_state().is_terminal()
    }
}

/// The worker's latest report, replaced atomically on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatus {
    pub phase: WorkerPhase,
    pub log: TesTaskLog,
}

//! What the server hands a worker (`task.json`) and what the worker reports back (`status.json`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tresor_api_types::tes::TesTaskLog;
use tresor_domain::TaskState;
use tresor_domain::task::{Executor, Input, Output};

use crate::SandboxSettings;
use crate::limits::TaskLimits;

/// Everything a worker needs to run one task; written 0600 into the task directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTask {
    pub task_id: String,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub executors: Vec<Executor>,
    pub volumes: Vec<String>,
    /// Whether the sandbox shares the host's network (the task asked and the server allows it).
    pub network: bool,
    pub sandbox: SandboxSettings,
    /// Host directories that `file://` inputs may come from and outputs may go to.
    pub allowed_dirs: Vec<PathBuf>,
    /// The host group of the workspace's `file://` directory: the worker copies inputs and
    /// outputs as the task's user with this group, and outputs are created in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_group: Option<u32>,
    /// How many bytes of each executor's stdout and stderr the task log keeps.
    pub log_tail_bytes: usize,
    /// Whether http(s) inputs may come from loopback, private or link-local addresses (the
    /// worker fetches on the host's network, outside the sandbox).
    #[serde(default)]
    pub allow_private_http_inputs: bool,
    /// How the worker reaches the server for this task (secrets, tokens, presigned URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<WorkerSession>,
    /// The secrets the task declared; their values are fetched once, when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretDelivery>,
    /// The task's identity token: where the worker keeps it, and which variables point at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityDelivery>,
    /// What the task may use (memory, cores, disk, run time, processes, log bytes) and how this
    /// host enforces it.
    #[serde(default)]
    pub limits: TaskLimits,
}

/// The worker's line to the server: the task's internal endpoints and a credential bound to the
/// task, valid only while it is active. It never enters the sandbox.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSession {
    /// `…/internal/v1/tasks/{id}`.
    pub base_url: String,
    pub credential: String,
}

impl std::fmt::Debug for WorkerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSession")
            .field("base_url", &self.base_url)
            .field("credential", &"***")
            .finish()
    }
}

/// The names of the secrets a task declared. The values themselves never appear in this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDelivery {
    /// Names delivered as files in `$TRESOR_SECRETS_DIR` (mode 0400, on a private tmpfs).
    pub files: Vec<String>,
    /// Names also exported as environment variables of the executors.
    pub env: Vec<String>,
}

/// How a task gets its identity token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDelivery {
    /// A tmpfs on the host (such as /dev/shm) where the worker makes the task's private token
    /// directory, shown read-only in the sandbox at `IDENTITY_DIR`.
    pub runtime_dir: PathBuf,
    /// Standard variables set to the token file's path (`AWS_WEB_IDENTITY_TOKEN_FILE`, …).
    pub sdk_env: Vec<String>,
}

/// Where the identity token directory appears inside the sandbox.
pub const IDENTITY_DIR: &str = "/run/tresor/identity";
/// The token file (default audience) and the socket for other audiences, in `IDENTITY_DIR`.
pub const TOKEN_FILE: &str = "token";
pub const TOKEN_SOCKET: &str = "token.sock";

/// A token as the server hands it to a worker.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The body of a token request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub audience: Option<String>,
}

/// Presigned downloads for a task's `s3://` inputs.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignedInputs {
    pub inputs: Vec<PresignedObject>,
}

/// One object: where it goes in (or comes from) the task, and its presigned URL.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PresignedObject {
    pub path: String,
    pub url: String,
}

impl std::fmt::Debug for PresignedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignedObject")
            .field("path", &self.path)
            .field("url", &"***")
            .finish()
    }
}

/// A request for presigned uploads, one per `s3://` URL, and the answer in the same order.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    pub urls: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignedUploads {
    pub urls: Vec<String>,
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

/// The environment of a SLURM job's worker (see `slurm::SlurmExecutor::job_script`): all it gets.
pub const ENV_TASK_ID: &str = "TRESOR_TASK_ID";
pub const ENV_SERVER_URL: &str = "TRESOR_SERVER_URL";
pub const ENV_BOOTSTRAP_TOKEN: &str = "TRESOR_BOOTSTRAP_TOKEN";

/// What a batch job's worker sends with its bootstrap token; the answer is its `WorkerTask`,
/// session included.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    /// `SLURM_JOB_ID`: the server checks it is the job it submitted for the task.
    #[serde(default)]
    pub job_id: Option<String>,
}

/// The server's answer to a status report: the task's state as the server now sees it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusAck {
    /// `QUEUED`, `RUNNING`, `CANCELED`, …
    pub state: String,
}

//! What the server hands a worker (`task.json`) and what the worker reports back (`status.json`).
//! The types that travel between worker and server over HTTP live in
//! `tresor_api_types::internal` and are re-exported here; this module keeps what only executors
//! and the service know: the task file and how a worker reaches the server.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tresor_domain::TaskState;
use tresor_domain::task::{Executor, Input, Output};

pub use tresor_api_types::internal::{
    BootstrapRequest, DeliveredLogin, DeliveredSecret, DeliveredSecrets, ENV_BOOTSTRAP_TOKEN,
    ENV_SERVER_URL, ENV_TASK_ID, IDENTITY_DIR, IssuedToken, PresignedInputs, PresignedObject,
    PresignedUploads, StatusAck, TOKEN_FILE, TOKEN_SOCKET, TokenRequest, UploadRequest,
    WorkerPhase, WorkerStatus,
};

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
    /// The executors' images, when this host runs them (`images.runtime = "oci"`); without
    /// it, executors run on the host's own `/usr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageDelivery>,
    /// The task's part in a workflow run: the run's shared directory, and for its engine, the
    /// run's TES on the task's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunDelivery>,
    /// The workspace's egress allowlist (`host:port` rules), for a task without the host's
    /// network. Not empty: each executor's sandbox gets a proxy on its own loopback (see
    /// `egress`) that reaches these destinations and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// Whether the egress proxy may connect to loopback, private and link-local addresses
    /// (`local.allow_private_egress`); else it refuses them, whatever a rule's name resolves to.
    #[serde(default)]
    pub egress_private: bool,
    /// The API request that created the task, for the worker's log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a task of a workflow run gets beyond a standalone task's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunDelivery {
    /// The run's directory in the workspace's `file://` storage, bound read-write at this same
    /// path in every executor's sandbox. Executors run with the workspace's group and umask
    /// 007, so each task of the run (another host user) can read and extend what the others
    /// wrote.
    pub dir: PathBuf,
    /// Whether the task is the run's engine: its identity socket then also serves TES for
    /// creating, watching and canceling the run's jobs, forwarded with the task's session.
    pub engine: bool,
}

/// How the worker gets each executor's image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDelivery {
    pub cache: tresor_images::CacheSettings,
    /// The task's workspace: resolutions of names are kept per workspace.
    pub workspace: String,
    /// One per executor, in order.
    pub pulls: Vec<tresor_images::PullPlan>,
    /// Whether the workspace has registry logins for some of them (fetched with the secrets).
    pub logins: bool,
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

/// The task state a worker's phase stands for. The wire type knows no `TaskState` (api-types
/// depends on nothing of ours), so the mapping lives here, beside the worker that reports it.
pub trait PhaseState {
    fn task_state(self) -> TaskState;
}

impl PhaseState for WorkerPhase {
    fn task_state(self) -> TaskState {
        match self {
            WorkerPhase::Initializing => TaskState::Initializing,
            WorkerPhase::Running => TaskState::Running,
            WorkerPhase::Complete => TaskState::Complete,
            WorkerPhase::ExecutorError => TaskState::ExecutorError,
            WorkerPhase::SystemError => TaskState::SystemError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_phase_is_a_terminal_state_and_only_it() {
        for phase in [
            WorkerPhase::Initializing,
            WorkerPhase::Running,
            WorkerPhase::Complete,
            WorkerPhase::ExecutorError,
            WorkerPhase::SystemError,
        ] {
            assert_eq!(
                phase.is_final(),
                phase.task_state().is_terminal(),
                "{phase:?}"
            );
        }
    }
}

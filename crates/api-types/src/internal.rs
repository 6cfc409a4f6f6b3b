//! Wire types of the internal API under `/internal/v1/tasks/{id}`, between a task's worker and
//! the server: what the worker asks for (tokens, presigned URLs, secrets, its task) and what it
//! reports back (its status).

use serde::{Deserialize, Serialize};

use crate::tes::TesTaskLog;

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

/// What a worker sends for its task's secrets: an id of its own for this delivery, so that
/// asking again after a lost answer gets the same secrets rather than a refusal.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsRequest {
    /// 16 to 64 characters of `[A-Za-z0-9_-]`.
    pub delivery: String,
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
    /// Registry logins for the task's images (from the workspace secrets its image policy
    /// names): for the worker's pulls only, never shown to the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_logins: Vec<DeliveredLogin>,
}

/// A registry login: the registry (`host[:port]`) and the secret's value, `username:password`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveredLogin {
    pub registry: String,
    pub value_base64: String,
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
    /// Whether the worker is done: nothing follows this report.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            WorkerPhase::Complete | WorkerPhase::ExecutorError | WorkerPhase::SystemError
        )
    }
}

/// The worker's latest report, replaced atomically on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatus {
    pub phase: WorkerPhase,
    pub log: TesTaskLog,
}

/// The environment of a SLURM job's worker (see `slurm::SlurmExecutor::job_script` in
/// `tresor-executors`): all it gets.
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
    /// An id the worker makes for this exchange: asking again with it after a lost answer
    /// gets a session instead of a refusal. Nobody else knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
}

/// The server's answer to a status report: the task's state as the server now sees it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusAck {
    /// `QUEUED`, `RUNNING`, `CANCELED`, …
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_ending_phases_are_final() {
        let finals: Vec<WorkerPhase> = [
            WorkerPhase::Initializing,
            WorkerPhase::Running,
            WorkerPhase::Complete,
            WorkerPhase::ExecutorError,
            WorkerPhase::SystemError,
        ]
        .into_iter()
        .filter(|p| p.is_final())
        .collect();
        assert_eq!(
            finals,
            [
                WorkerPhase::Complete,
                WorkerPhase::ExecutorError,
                WorkerPhase::SystemError
            ]
        );
    }

    #[test]
    fn phases_are_spelled_as_on_the_wire() {
        let json = serde_json::to_string(&WorkerPhase::ExecutorError).unwrap();
        assert_eq!(json, "\"EXECUTOR_ERROR\"");
    }
}

#![doc = include_str!("../README.md")]

pub mod limits;
pub mod local;
pub mod paths;
pub mod protocol;
pub mod sandbox;
mod session;
pub mod slurm;
mod users;
pub mod worker;

pub use limits::{Enforcement, LimitSettings, TaskLimits};
pub use local::{Attach, LocalExecutor, LocalSettings, WorkerExit};
pub use protocol::{
    BootstrapRequest, DeliveredSecret, DeliveredSecrets, IdentityDelivery, IssuedToken, PhaseState,
    PresignedInputs, PresignedObject, PresignedUploads, SecretDelivery, StatusAck, TokenRequest,
    UploadRequest, WorkerPhase, WorkerSession, WorkerStatus, WorkerTask,
};
pub use sandbox::SandboxSettings;
pub use slurm::{JobBootstrap, JobInfo, JobResources, SlurmExecutor, SlurmSettings};

/// The local executor's failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the worker's task file: {0}")]
    Encode(#[source] serde_json::Error),
    /// Every id of `local.task_uid_range` is held by a running task.
    #[error(
        "all {size} host uids of local.task_uid_range are held by running tasks; widen the range"
    )]
    NoFreeId { size: u64 },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

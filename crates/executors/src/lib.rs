#![doc = include_str!("../README.md")]

pub mod backend;
pub mod egress;
pub mod limits;
pub mod local;
pub mod paths;
pub mod protocol;
pub mod public_http;
pub mod sandbox;
mod session;
pub mod slurm;
mod users;
pub mod worker;

pub use backend::{
    BackendEvent, Capabilities, CapacityUnit, ComputeBackend, Events, HandOff, JobView, Launch,
    Observation, Start, Submitted,
};
pub use limits::{Enforcement, LimitSettings, TaskLimits};
pub use local::{Attach, LOCAL_ENV, LocalExecutor, LocalSettings, WorkerExit};
pub use protocol::{
    BootstrapRequest, DeliveredSecret, DeliveredSecrets, IdentityDelivery, IssuedToken, PhaseState,
    PresignedInputs, PresignedObject, PresignedUploads, RunDelivery, SecretDelivery, StatusAck,
    TokenRequest, UploadRequest, WorkerPhase, WorkerSession, WorkerStatus, WorkerTask,
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
    /// The backend was asked for something it does not do (a bug in the caller).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A batch scheduler's command failed; the text says which and why.
    #[error("{0}")]
    Scheduler(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

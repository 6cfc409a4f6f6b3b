#![doc = include_str!("../README.md")]

pub mod app;
mod error;
pub mod identity;
pub mod images;
pub mod metrics;
pub mod platform;
pub mod preflight;
#[cfg(test)]
mod proptests;
pub mod request_id;
pub mod runs;
pub mod secrets;
pub mod storage;
pub mod tasks;

pub use error::{Entity, Outage, ServiceError};
pub use identity::{IdentityService, IdentitySettings, IssuedToken, TaskSubject};
pub use images::{ImageRuntime, ImageService, ImageSettings};
pub use metrics::Metrics;
pub use platform::{Credential, PlatformService};
pub use runs::{Attachment, EngineSettings, RunService, RunSubmission, WorkflowSettings};
pub use secrets::{PutCondition, PutOutcome, Scope, SecretLimits, SecretService};
pub use storage::{Location, S3Settings, StorageService};
pub use tasks::{
    ComputeEnvInfo, DeclaredSecrets, Executors, LOCAL_ENV, ListTasksRequest, Rooms,
    ServiceSettings, TIME_LIMIT, TaskService, WorkerAssignment, tes_state, validate,
};

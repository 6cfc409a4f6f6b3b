#![doc = include_str!("../README.md")]

pub mod caller;
pub mod egress;
pub mod ids;
pub mod net;
pub mod permissions;
pub mod task;
pub mod task_state;

pub use caller::{Caller, Denied, Principal};
pub use egress::EgressRule;
pub use ids::{IdError, TaskId, UserId, WorkspaceId};
pub use permissions::{Action, Role};
pub use task::{ComputeEnv, ComputeEnvKind, DeclaredSecrets, RunLink, RunRole, TaskSpec};
pub use task_state::TaskState;

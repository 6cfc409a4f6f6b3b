#![doc = include_str!("../README.md")]

pub mod caller;
pub mod ids;
pub mod task_state;

pub use caller::{Caller, Principal};
pub use ids::{IdError, TaskId, WorkspaceId};
pub use task_state::TaskState;

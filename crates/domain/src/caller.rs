//! Who a request acts as, and in which workspace.

use crate::WorkspaceId;

/// The authenticated party behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No authentication is configured yet: the server listens on loopback only and every
    /// request acts as the local operator.
    LocalOperator,
}

/// A principal acting within one workspace; every service call takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub workspace: WorkspaceId,
}

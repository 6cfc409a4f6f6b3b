//! Who a request acts as, and in which workspace with which role.

use crate::permissions::{Action, Role, allows, required_role};
use crate::{UserId, WorkspaceId};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    /// A display name: the login name, or the OIDC subject's preferred name.
    pub name: String,
    /// Platform administrators create users and issue tokens for them; it grants no workspace role.
    pub is_admin: bool,
    /// The network address the request came from, for the audit trail.
    pub source: Option<String>,
}

/// A principal acting within one workspace, as a member with a role; every workspace-scoped
/// service call takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub workspace: WorkspaceId,
    pub role: Role,
}

/// The caller's role is too weak; carries the weakest role that would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub needed: Role,
    pub action: Action,
}

impl Caller {
    /// Checks the permission matrix for `action`.
    pub fn require(&self, action: Action) -> Result<(), Denied> {
        if allows(self.role, action) {
            Ok(())
        } else {
            Err(Denied {
                needed: required_role(action),
                action,
            })
        }
    }
}

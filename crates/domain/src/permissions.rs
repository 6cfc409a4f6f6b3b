//! Roles and the permission matrix: the one table that says which role may do what in a workspace.
//! `docs/permissions.md` is rendered from `MATRIX`, and a test keeps the two identical.

use std::fmt;

/// A member's role in a workspace, weakest first; each role can do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    View,
    Launch,
    Maintain,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::View,
        Role::Launch,
        Role::Maintain,
        Role::Admin,
        Role::Owner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Launch => "launch",
            Role::Maintain => "maintain",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a caller does inside a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read the workspace, its tasks and its members.
    Read,
    /// Submit tasks.
    SubmitTask,
    /// Cancel tasks one submitted oneself.
    CancelOwnTask,
    /// Cancel anyone's tasks.
    CancelAnyTask,
    /// Add, change and remove members (an owner is needed to grant or remove `owner`).
    ManageMembers,
    /// Keep one's own user secrets in the workspace.
    ManageOwnSecrets,
    /// Create, update and delete the workspace's secrets.
    ManageWorkspaceSecrets,
    /// Choose the compute environment the workspace's tasks run in.
    ChooseComputeEnv,
    /// Set which images the workspace may run and its registry logins.
    ManageImagePolicy,
    /// Propose a workflow version for registration.
    ProposeWorkflow,
    /// Run a workflow that is not a registered, approved one.
    RunUnregisteredWorkflow,
    /// Register workflows, approve proposed ones, and require registered workflows for all.
    ApproveWorkflow,
    /// Set which hosts and ports the workspace's tasks may reach (its egress allowlist).
    ManageEgress,
    /// Delete the workspace.
    DeleteWorkspace,
}

/// The permission matrix: each action and the weakest role allowed to do it.
pub const MATRIX: &[(Action, Role, &str)] = &[
    (
        Action::Read,
        Role::View,
        "read the workspace, its tasks and members",
    ),
    (Action::SubmitTask, Role::Launch, "submit tasks"),
    (
        Action::CancelOwnTask,
        Role::Launch,
        "cancel tasks they submitted",
    ),
    (
        Action::CancelAnyTask,
        Role::Maintain,
        "cancel anyone's tasks",
    ),
    (
        Action::ManageOwnSecrets,
        Role::View,
        "keep their own user secrets",
    ),
    (
        Action::ManageMembers,
        Role::Admin,
        "add, change and remove members",
    ),
    (
        Action::ManageWorkspaceSecrets,
        Role::Admin,
        "create, update and delete workspace secrets",
    ),
    (
        Action::ChooseComputeEnv,
        Role::Admin,
        "choose the compute environment tasks run in",
    ),
    (
        Action::ManageImagePolicy,
        Role::Admin,
        "set the image policy (allowed images, registry logins)",
    ),
    (
        Action::ProposeWorkflow,
        Role::Maintain,
        "propose workflows for registration",
    ),
    (
        Action::RunUnregisteredWorkflow,
        Role::Maintain,
        "run workflows that are not registered (unless the workspace requires registered ones)",
    ),
    (
        Action::ApproveWorkflow,
        Role::Admin,
        "register and approve workflows; require registered workflows for everyone",
    ),
    (
        Action::ManageEgress,
        Role::Admin,
        "set the egress allowlist (hosts and ports tasks may reach)",
    ),
    (Action::DeleteWorkspace, Role::Owner, "delete the workspace"),
];

/// The weakest role allowed to do `action`.
pub fn required_role(action: Action) -> Role {
    MATRIX
        .iter()
        .find(|(a, _, _)| *a == action)
        .map(|(_, role, _)| *role)
        // Every action has a row: the matrix test below checks it.
        .unwrap_or(Role::Owner)
}

/// Whether `role` may do `action`.
pub fn allows(role: Role, action: Action) -> bool {
    role >= required_role(action)
}

/// The matrix as a Markdown table, one row per action and one column per role.
pub fn matrix_markdown() -> String {
    let mut out = String::from("| action |");
    for role in Role::ALL {
        out.push_str(&format!(" {role} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Role::ALL.len()));
    out.push('\n');
    for (action, _, what) in MATRIX {
        out.push_str(&format!("| {what} |"));
        for role in Role::ALL {
            out.push_str(if allows(role, *action) {
                " ✓ |"
            } else {
                " |"
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_exactly_one_row() {
        for action in [
            Action::Read,
            Action::SubmitTask,
            Action::CancelOwnTask,
            Action::CancelAnyTask,
            Action::ManageMembers,
            Action::ManageOwnSecrets,
            Action::ManageWorkspaceSecrets,
            Action::ChooseComputeEnv,
            Action::ManageImagePolicy,
            Action::ProposeWorkflow,
            Action::RunUnregisteredWorkflow,
            Action::ApproveWorkflow,
            Action::ManageEgress,
            Action::DeleteWorkspace,
        ] {
            assert_eq!(
                MATRIX.iter().filter(|(a, _, _)| *a == action).count(),
                1,
                "{action:?}"
            );
        }
    }

    #[test]
    fn the_documented_matrix_is_the_one_the_code_follows() {
        let doc = include_str!("../../../docs/permissions.md");
        assert!(
            doc.contains(&matrix_markdown()),
            "docs/permissions.md is stale; its table must be:\n{}",
            matrix_markdown()
        );
    }

    #[test]
    fn roles_parse_and_order() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert!(Role::View < Role::Launch && Role::Admin < Role::Owner);
        assert!(allows(Role::Maintain, Action::CancelAnyTask));
        assert!(!allows(Role::Launch, Action::CancelAnyTask));
    }
}

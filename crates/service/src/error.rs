//! `ServiceError`: failures classified by what the caller should do about them.

/// What kind of object was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Task,
    Workspace,
    User,
    Token,
    Secret,
    Run,
    Workflow,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Task => f.write_str("task"),
            Entity::Workspace => f.write_str("workspace"),
            Entity::User => f.write_str("user"),
            Entity::Token => f.write_str("token"),
            Entity::Secret => f.write_str("secret"),
            Entity::Run => f.write_str("run"),
            Entity::Workflow => f.write_str("workflow"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Also used for "exists, but in another workspace": we do not confirm existence.
    #[error("{0} not found")]
    NotFound(Entity),
    /// No valid credential: what to send instead.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role is too weak: the message names the role needed.
    #[error("{0}")]
    Forbidden(String),
    /// The request is valid but the object's current state does not allow it.
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A dependency (database, executor) cannot serve the request now.
    #[error("unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or a broken invariant.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// What a 503 is about, in words safe to show the caller; attached as the context of an
/// `Unavailable`'s cause where the room that saw the failure knows it.
#[derive(Debug, Clone, Copy)]
pub struct Outage(pub &'static str);

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl ServiceError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
        ServiceError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A conflict is the caller's to resolve; a failure a retry could fix (a busy, locked, full or
/// unreachable database, a stopped writer) is an outage; anything else (a broken constraint, a
/// row that does not decode, a corrupt value) is a bug, and a retry would meet it again.
impl From<tresor_store::Error> for ServiceError {
    fn from(e: tresor_store::Error) -> Self {
        match e {
            tresor_store::Error::Conflict(what) => ServiceError::Conflict(what.to_owned()),
            e if e.is_transient() => {
                let outage = Outage(e.outage().unwrap_or("the database is not answering"));
                ServiceError::Unavailable(anyhow::Error::new(e).context(outage))
            }
            e => ServiceError::Internal(e.into()),
        }
    }
}

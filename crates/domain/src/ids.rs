//! Validated identifiers; between our crates an id is never a bare `String`.

use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may contain only ASCII letters, digits, '-' and '_'")]
    BadCharacter,
}

fn check_id(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

/// A task id. Its characters are safe in a URL path and as a directory name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Parses an id that came from outside (a URL, a database row, a command line).
    pub fn parse(s: &str) -> Result<TaskId, IdError> {
        check_id(s, Self::MAX_LEN)?;
        Ok(TaskId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workspace id: every object belongs to exactly one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Parses an id that came from outside.
    pub fn parse(s: &str) -> Result<WorkspaceId, IdError> {
        check_id(s, Self::MAX_LEN)?;
        Ok(WorkspaceId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id (server-assigned).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Parses an id that came from outside.
    pub fn parse(s: &str) -> Result<UserId, IdError> {
        check_id(s, Self::MAX_LEN)?;
        Ok(UserId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_url_safe_names_only() {
        assert!(TaskId::parse("0193a1b2-c3d4_x").is_ok());
        assert_eq!(TaskId::parse(""), Err(IdError::Empty));
        assert_eq!(TaskId::parse("../etc"), Err(IdError::BadCharacter));
        assert_eq!(TaskId::parse("a b"), Err(IdError::BadCharacter));
        assert_eq!(
            TaskId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
    }
}

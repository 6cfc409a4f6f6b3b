//! The store's failures, by what a caller can do about them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("applying database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("row {id} holds an invalid {column}: {reason}")]
    Corrupt {
        id: String,
        column: &'static str,
        reason: String,
    },
    /// The change contradicts what is stored; the text says what and what to do.
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the group-commit writer has stopped")]
    WriterGone,
    #[error("the system random number generator failed")]
    Random,
}

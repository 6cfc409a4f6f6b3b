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
    #[error("the audit key file {path}: {reason}")]
    AuditKeyFile { path: PathBuf, reason: String },
    /// The trail is keyed but its key is gone: the store refuses to open rather than start a
    /// chain nobody could verify.
    #[error(
        "the audit trail is chained under a key, but there is no audit key file at {path}; restore it from where it is kept (apart from the database's backups), or set audit_key_file / TRESOR_AUDIT_KEY_FILE to where it is"
    )]
    AuditKeyMissing { path: PathBuf },
    #[error(
        "the audit key file {path} holds a different key from the one this audit trail is chained under; restore the right file"
    )]
    AuditKeyMismatch { path: PathBuf },
    /// The database says its trail predates the audit key, yet the key file exists.
    #[error(
        "the audit trail is not chained under a key, yet the audit key file {path} exists: the database's key marker was removed or the database was replaced, so the trail is not re-keyed; keep both as evidence; if this really is the first start after upgrading a database whose trail predates the audit key, move the key file away and start again"
    )]
    AuditNotKeyed { path: PathBuf },
    /// The trail written before the audit key existed does not verify, so it was not re-keyed.
    #[error(
        "the audit trail was already broken before it was keyed, at event {seq}: {reason}; it was left unchanged and not re-keyed, since that would make the tampering verify; keep a copy of the database as evidence"
    )]
    AuditBroken { seq: i64, reason: String },
}

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
    Database(#[from] sqlx::Error),
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
    /// The batch a task's insert was committed in failed; `outage` when a retry may succeed.
    #[error("storing the task failed: {message}")]
    GroupCommit {
        outage: Option<&'static str>,
        message: String,
    },
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

/// SQLite's primary result codes for failures that pass: another connection holds the database
/// (`BUSY`, `LOCKED`), the disk could not be read or written (`IOERR`), or it is full (`FULL`).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;

impl Error {
    /// Whether a retry could succeed: the database was busy, locked, out of disk or out of reach,
    /// or the group-commit writer stopped. Everything else (a broken constraint, a row that does
    /// not decode, a failed migration, a broken invariant) fails the same way again: it is a bug
    /// to report, not an outage to wait out.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => transient_sqlx(e),
            Error::WriterGone => true,
            Error::GroupCommit { outage, .. } => outage.is_some(),
            _ => false,
        }
    }

    /// What is out, for a transient error, in words a caller may see (no path, no SQL).
    pub fn outage(&self) -> Option<&'static str> {
        if !self.is_transient() {
            return None;
        }
        if let Error::GroupCommit { outage, .. } = self {
            return *outage;
        }
        let code = match self {
            Error::Database(sqlx::Error::Database(db)) => db
                .code()
                .and_then(|code| code.parse::<i64>().ok())
                .map(|code| code & 0xff),
            _ => None,
        };
        Some(match code {
            Some(SQLITE_FULL) => "the server's disk is full",
            Some(SQLITE_BUSY | SQLITE_LOCKED) => {
                "the database is locked (by another process, or by a long operation)"
            }
            Some(SQLITE_IOERR) => "the database's disk cannot be read or written",
            _ => "the database is not answering",
        })
    }
}

fn transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        // SQLite reports its extended result code; the primary code is its low 8 bits.
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| {
                matches!(
                    code & 0xff,
                    SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL
                )
            }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    use super::*;

    #[test]
    fn only_failures_a_retry_could_fix_are_transient() {
        for transient in [
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::PoolClosed),
            Error::Database(sqlx::Error::WorkerCrashed),
            Error::Database(sqlx::Error::Io(std::io::Error::other("disk went away"))),
            Error::WriterGone,
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
        for bug in [
            Error::Database(sqlx::Error::RowNotFound),
            Error::Database(sqlx::Error::ColumnNotFound("nope".to_owned())),
            Error::Database(sqlx::Error::Protocol("garbled".to_owned())),
            Error::Corrupt {
                id: "t1".to_owned(),
                column: "state",
                reason: "WEIRD".to_owned(),
            },
            Error::Conflict("taken"),
            Error::Random,
        ] {
            assert!(!bug.is_transient(), "{bug:?}");
        }
    }

    #[tokio::test]
    async fn a_busy_database_is_transient_and_a_broken_constraint_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("db.sqlite"))
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();

        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut holder)
            .await
            .unwrap();
        // A constraint violation (extended code 1555, primary 19) fails the same way every time.
        let duplicate = sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut holder)
            .await
            .unwrap_err();
        assert!(!Error::from(duplicate).is_transient());

        // While one connection holds the write lock, another's write is refused with SQLITE_BUSY.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        let busy = Error::from(busy);
        assert!(busy.is_transient(), "{busy:?}");
    }
}

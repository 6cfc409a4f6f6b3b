#![doc = include_str!("../README.md")]

mod audit;
pub mod backup;
mod error;
mod identity;
mod migrations;
mod runs;
mod secrets;
mod signing_keys;
mod storage;
mod tasks;
mod workflows;
mod workspaces;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::mpsc;

pub use audit::{AuditBreak, AuditEvent};
pub use error::Error;
pub use identity::{TokenRecord, UserRecord};
pub use runs::{NewRun, RunRecord};
pub use secrets::{SealedRow, SecretKey, SecretMeta, StoredVersion};
pub use signing_keys::SigningKeyRow;
pub use storage::StorageRow;
pub use tasks::{Lease, NewTask, SecretClaim, TagFilter, TaskFilter, TaskRecord};
pub use workflows::WorkflowRecord;
pub use workspaces::WorkspaceRecord;

/// How hard a commit tries to survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit: survives power loss. The default.
    Full,
    /// fsync at checkpoints only: survives a killed process, may lose the last commits on power loss.
    Normal,
}

/// The store's slice of the settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The SQLite database file; created 0600 if missing.
    pub path: PathBuf,
    pub durability: Durability,
    /// The audit trail's HMAC key: a file of 32 raw bytes, created 0600 with a new database.
    /// It must not live in the database, nor travel in the database's backups: with it, whoever
    /// holds the database could rewrite the trail undetectably.
    pub audit_key_file: PathBuf,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    reader: SqlitePool,
    writer: SqlitePool,
    inserts: mpsc::Sender<tasks::InsertRequest>,
    /// Keys every audit link; `ring` leaves the key out of `Debug`.
    audit_key: ring::hmac::Key,
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations, loads the audit key (bringing
    /// an unkeyed audit trail under it) and starts the group-commit writer.
    pub async fn connect(settings: &StoreSettings) -> Result<Store, Error> {
        create_private_file(&settings.path)?;
        let url = format!("sqlite://{}", settings.path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match settings.durability {
                Durability::Full => sqlx::sqlite::SqliteSynchronous::Full,
                Durability::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // One writer connection: SQLite serialises writers anyway, and one connection means no
        // busy-waiting between our own writers.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A commit that failed (a full disk) leaves its connection inside the transaction,
            // and with one writer connection every later write would fail with it. Such a
            // connection is closed on release; the next write opens a fresh one.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options.clone())
            .await?;
        migrations::apply(&writer).await?;
        let audit_key = audit::open_chain(&writer, &settings.audit_key_file).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (inserts, queue) = mpsc::channel(4096);
        tokio::spawn(tasks::run_group_commit(
            writer.clone(),
            audit_key.clone(),
            queue,
        ));
        Ok(Store {
            reader,
            writer,
            inserts,
            audit_key,
        })
    }

    /// Returns the 32-byte server secret named `key`, creating it from the system RNG on first use.
    pub async fn server_secret(&self, key: &str) -> Result<Vec<u8>, Error> {
        let fresh = random_bytes::<32>()?;
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(fresh.as_slice())
            .execute(&self.writer)
            .await?;
        let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_one(&self.writer)
            .await?;
        Ok(value)
    }

    /// A write transaction that takes the database's write lock at once (waiting up to the busy
    /// timeout for another process to let go). A deferred one that reads first and writes later
    /// fails at once with SQLITE_BUSY when another process wrote meanwhile, which two server
    /// processes on one database make common.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, Error> {
        Ok(self.writer.begin_with(BEGIN_WRITE).await?)
    }

    /// Whether the database answers a read; for the readiness probe.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Closes both pools, waiting for in-flight statements.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Settings for a store in a test's temporary directory.
#[cfg(test)]
pub(crate) fn test_settings(dir: &std::path::Path) -> StoreSettings {
    StoreSettings {
        path: dir.join("db.sqlite"),
        durability: Durability::Normal,
        audit_key_file: dir.join("audit-key"),
    }
}

/// How every write transaction begins (see `Store::begin_write`).
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Timestamps are stored as RFC 3339 text.
pub(crate) fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Random)?;
    Ok(out)
}

/// Creates the database file readable by its owner only, before SQLite creates it with the
/// process umask. SQLite gives its -wal and -shm files the same mode.
fn create_private_file(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(())
}

//! Per-workspace object storage locations chosen by an administrator.

use sqlx::Row;
use time::OffsetDateTime;
use tresor_domain::WorkspaceId;

use crate::audit::{self, AuditEvent};
use crate::{Error, Store, format_time};

/// A workspace's bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRow {
    pub workspace: String,
    pub bucket: String,
    pub prefix: String,
}

impl Store {
    pub async fn workspace_storage(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<StorageRow>, Error> {
        let row = sqlx::query(
            "SELECT workspace, bucket, prefix FROM workspace_storage WHERE workspace = ?",
        )
        .bind(workspace.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(Error::Database)?;
        row.map(|row| {
            Ok(StorageRow {
                workspace: row.try_get("workspace").map_err(Error::Database)?,
                bucket: row.try_get("bucket").map_err(Error::Database)?,
                prefix: row.try_get("prefix").map_err(Error::Database)?,
            })
        })
        .transpose()
    }

    /// Every explicitly configured location, to keep workspaces from overlapping.
    pub async fn all_workspace_storage(&self) -> Result<Vec<StorageRow>, Error> {
        let rows = sqlx::query("SELECT workspace, bucket, prefix FROM workspace_storage")
            .fetch_all(&self.writer)
            .await
            .map_err(Error::Database)?;
        rows.iter()
            .map(|row| {
                Ok(StorageRow {
                    workspace: row.try_get("workspace").map_err(Error::Database)?,
                    bucket: row.try_get("bucket").map_err(Error::Database)?,
                    prefix: row.try_get("prefix").map_err(Error::Database)?,
                })
            })
            .collect()
    }

    /// Sets (`Some`) or clears (`None`) a workspace's location, audited in the same transaction.
    pub async fn set_workspace_storage(
        &self,
        workspace: &WorkspaceId,
        location: Option<(&str, &str)>,
        actor: &str,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.writer.begin().await.map_err(Error::Database)?;
        match location {
            Some((bucket, prefix)) => {
                sqlx::query(
                    "INSERT INTO workspace_storage (workspace, bucket, prefix, updated_by, updated_at)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (workspace) DO UPDATE SET bucket = excluded.bucket,
                       prefix = excluded.prefix, updated_by = excluded.updated_by,
                       updated_at = excluded.updated_at",
                )
                .bind(workspace.as_str())
                .bind(bucket)
                .bind(prefix)
                .bind(actor)
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&mut *tx)
                .await
                .map_err(Error::Database)?;
            }
            None => {
                sqlx::query("DELETE FROM workspace_storage WHERE workspace = ?")
                    .bind(workspace.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::Database)?;
            }
        }
        audit::append(&mut tx, &self.audit_key, event).await?;
        tx.commit().await.map_err(Error::Database)
    }

    /// The host directory an administrator gave a workspace for `file://` storage, if any.
    pub async fn workspace_file_dir(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<String>, Error> {
        sqlx::query_scalar("SELECT dir FROM workspace_file_storage WHERE workspace = ?")
            .bind(workspace.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::Database)
    }

    /// Every administrator-given `file://` directory, as `(workspace, dir)`.
    pub async fn all_workspace_file_dirs(&self) -> Result<Vec<(String, String)>, Error> {
        sqlx::query_as("SELECT workspace, dir FROM workspace_file_storage")
            .fetch_all(&self.writer)
            .await
            .map_err(Error::Database)
    }

    /// Sets (`Some`) or clears (`None`) a workspace's `file://` directory, audited in the same
    /// transaction.
    pub async fn set_workspace_file_dir(
        &self,
        workspace: &WorkspaceId,
        dir: Option<&str>,
        actor: &str,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.writer.begin().await.map_err(Error::Database)?;
        match dir {
            Some(dir) => {
                sqlx::query(
                    "INSERT INTO workspace_file_storage (workspace, dir, updated_by, updated_at)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (workspace) DO UPDATE SET dir = excluded.dir,
                       updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                )
                .bind(workspace.as_str())
                .bind(dir)
                .bind(actor)
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&mut *tx)
                .await
                .map_err(Error::Database)?;
            }
            None => {
                sqlx::query("DELETE FROM workspace_file_storage WHERE workspace = ?")
                    .bind(workspace.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::Database)?;
            }
        }
        audit::append(&mut tx, &self.audit_key, event).await?;
        tx.commit().await.map_err(Error::Database)
    }

    /// Every workspace id, to check a new storage location against their default locations.
    pub async fn workspace_ids(&self) -> Result<Vec<String>, Error> {
        sqlx::query_scalar("SELECT id FROM workspaces ORDER BY id")
            .fetch_all(&self.writer)
            .await
            .map_err(Error::Database)
    }
}

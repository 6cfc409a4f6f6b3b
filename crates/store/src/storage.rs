//! Per-workspace storage: object storage locations and `file://` directories chosen by an
//! administrator, and the host group of each workspace's `file://` directory.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use sqlx::Row;
use time::OffsetDateTime;
use tresor_domain::WorkspaceId;

use crate::audit::{self, AuditEvent};
use crate::{Error, Store, format_time, is_unique_violation};

fn gid_from(workspace: &str, raw: i64) -> Result<u32, Error> {
    u32::try_from(raw).map_err(|e| Error::Corrupt {
        id: workspace.to_owned(),
        column: "gid",
        reason: e.to_string(),
    })
}

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
        .await?;
        row.map(|row| {
            Ok(StorageRow {
                workspace: row.try_get("workspace")?,
                bucket: row.try_get("bucket")?,
                prefix: row.try_get("prefix")?,
            })
        })
        .transpose()
    }

    /// Every explicitly configured location, to keep workspaces from overlapping.
    pub async fn all_workspace_storage(&self) -> Result<Vec<StorageRow>, Error> {
        let rows = sqlx::query("SELECT workspace, bucket, prefix FROM workspace_storage")
            .fetch_all(&self.writer)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StorageRow {
                    workspace: row.try_get("workspace")?,
                    bucket: row.try_get("bucket")?,
                    prefix: row.try_get("prefix")?,
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
        self.audited(event, async |conn| {
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
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM workspace_storage WHERE workspace = ?")
                        .bind(workspace.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The host directory an administrator gave a workspace for `file://` storage, if any.
    pub async fn workspace_file_dir(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<String>, Error> {
        let dir: Option<String> =
            sqlx::query_scalar("SELECT dir FROM workspace_file_storage WHERE workspace = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(dir)
    }

    /// Every administrator-given `file://` directory, as `(workspace, dir)`.
    pub async fn all_workspace_file_dirs(&self) -> Result<Vec<(String, String)>, Error> {
        let dirs: Vec<(String, String)> =
            sqlx::query_as("SELECT workspace, dir FROM workspace_file_storage")
                .fetch_all(&self.writer)
                .await?;
        Ok(dirs)
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
        self.audited(event, async |conn| {
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
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM workspace_file_storage WHERE workspace = ?")
                        .bind(workspace.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The host group recorded for a workspace's `file://` directory.
    pub async fn workspace_gid(&self, workspace: &WorkspaceId) -> Result<Option<u32>, Error> {
        let gid: Option<i64> =
            sqlx::query_scalar("SELECT gid FROM workspace_groups WHERE workspace = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        gid.map(|g| gid_from(workspace.as_str(), g)).transpose()
    }

    /// Gives a workspace the lowest group of `gids` that no workspace holds (nor ever held: a
    /// deleted workspace keeps its row, as its id is retired) and records `event`, with the group
    /// as its detail, in the same transaction. A workspace that has a group keeps it. `None`
    /// when every group of the range is taken.
    pub async fn allocate_workspace_gid(
        &self,
        workspace: &WorkspaceId,
        gids: &RangeInclusive<u32>,
        event: &AuditEvent,
    ) -> Result<Option<u32>, Error> {
        // The UNIQUE constraint on `gid` is what keeps two workspaces from one group; a lost
        // race (another allocation took the group in between) looks again.
        for _ in 0..3 {
            // `None`: the race was lost, look again. Only a new group is recorded.
            let attempt: Option<Option<u32>> = self
                .audited_if(async |conn| {
                    let held: Option<i64> =
                        sqlx::query_scalar("SELECT gid FROM workspace_groups WHERE workspace = ?")
                            .bind(workspace.as_str())
                            .fetch_optional(&mut *conn)
                            .await?;
                    if let Some(gid) = held {
                        let gid = gid_from(workspace.as_str(), gid)?;
                        return Ok((Some(Some(gid)), None));
                    }
                    let taken: Vec<i64> = sqlx::query_scalar(
                        "SELECT gid FROM workspace_groups WHERE gid BETWEEN ? AND ? ORDER BY gid",
                    )
                    .bind(i64::from(*gids.start()))
                    .bind(i64::from(*gids.end()))
                    .fetch_all(&mut *conn)
                    .await?;
                    let taken: BTreeSet<i64> = taken.into_iter().collect();
                    let Some(gid) = gids.clone().find(|g| !taken.contains(&i64::from(*g))) else {
                        return Ok((Some(None), None));
                    };
                    let inserted =
                        sqlx::query("INSERT INTO workspace_groups (workspace, gid) VALUES (?, ?)")
                            .bind(workspace.as_str())
                            .bind(i64::from(gid))
                            .execute(&mut *conn)
                            .await;
                    match inserted {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => return Ok((None, None)),
                        Err(e) => return Err(Error::Database(e)),
                    }
                    let event = AuditEvent {
                        detail: Some(format!("gid {gid}")),
                        ..event.clone()
                    };
                    Ok((Some(Some(gid)), Some(event)))
                })
                .await?;
            if let Some(allocated) = attempt {
                return Ok(allocated);
            }
        }
        Err(Error::Conflict(
            "other workspaces kept taking the free groups while this one's was chosen; try again",
        ))
    }

    /// Workspaces created before groups were recorded, whose directory an earlier tresor may
    /// have given a group (see `adopt_workspace_gid`).
    pub async fn workspaces_to_adopt(&self) -> Result<Vec<WorkspaceId>, Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT workspace FROM workspace_groups_to_adopt ORDER BY workspace",
        )
        .fetch_all(&self.reader)
        .await?;
        ids.iter()
            .map(|id| {
                WorkspaceId::parse(id).map_err(|e| Error::Corrupt {
                    id: id.clone(),
                    column: "workspace",
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Takes a workspace off the ones to adopt, recording `gid` (the group an earlier tresor
    /// gave its directory) as its own unless another workspace holds it, with `event` (the group
    /// as its detail) in the same transaction. Returns whether the group was recorded.
    pub async fn adopt_workspace_gid(
        &self,
        workspace: &WorkspaceId,
        gid: Option<u32>,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let listed = sqlx::query("DELETE FROM workspace_groups_to_adopt WHERE workspace = ?")
            .bind(workspace.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let recorded = match gid.filter(|_| listed > 0) {
            // A group another workspace holds (or a workspace that has one) stays as it is.
            Some(gid) => {
                let rows = sqlx::query(
                    "INSERT OR IGNORE INTO workspace_groups (workspace, gid) VALUES (?, ?)",
                )
                .bind(workspace.as_str())
                .bind(i64::from(gid))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (rows > 0).then_some(gid)
            }
            None => None,
        };
        if let Some(gid) = recorded {
            let event = AuditEvent {
                detail: Some(format!("gid {gid}")),
                ..event.clone()
            };
            audit::append(&mut tx, &self.audit_key, &event).await?;
        }
        tx.commit().await?;
        Ok(recorded.is_some())
    }

    /// Every workspace id, to check a new storage location against their default locations.
    pub async fn workspace_ids(&self) -> Result<Vec<String>, Error> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM workspaces ORDER BY id")
            .fetch_all(&self.writer)
            .await?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            actor: "system".to_owned(),
            action: "storage.file.group".to_owned(),
            object: "storage:file:///srv/x".to_owned(),
            workspace: None,
            source: None,
            result: "ok".to_owned(),
            detail: None,
        }
    }

    fn ws(id: &str) -> WorkspaceId {
        WorkspaceId::parse(id).unwrap()
    }

    #[tokio::test]
    async fn each_workspace_gets_a_group_of_its_own_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&crate::test_settings(dir.path()))
            .await
            .unwrap();
        let gids = 100..=102;
        let (ws_a, ws_b, event_a, event_b) = (ws("a"), ws("b"), event(), event());
        let (a, b) = tokio::join!(
            store.allocate_workspace_gid(&ws_a, &gids, &event_a),
            store.allocate_workspace_gid(&ws_b, &gids, &event_b),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert_eq!(BTreeSet::from([a, b]), BTreeSet::from([100, 101]));
        assert_eq!(
            store
                .allocate_workspace_gid(&ws("a"), &gids, &event())
                .await
                .unwrap(),
            Some(a),
            "a workspace keeps its group"
        );
        assert_eq!(store.workspace_gid(&ws("b")).await.unwrap(), Some(b));
        assert_eq!(store.workspace_gid(&ws("c")).await.unwrap(), None);
        assert_eq!(
            store
                .allocate_workspace_gid(&ws("c"), &gids, &event())
                .await
                .unwrap(),
            Some(102)
        );
        assert_eq!(
            store
                .allocate_workspace_gid(&ws("d"), &gids, &event())
                .await
                .unwrap(),
            None,
            "the range is used up"
        );

        // Workspaces from before groups were recorded adopt their directory's group once, and
        // only one that no other workspace holds.
        sqlx::query("INSERT INTO workspace_groups_to_adopt (workspace) VALUES ('old'), ('clash')")
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(
            !store
                .adopt_workspace_gid(&ws("clash"), Some(a), &event())
                .await
                .unwrap(),
            "a group another workspace holds is not recorded"
        );
        assert_eq!(store.workspace_gid(&ws("clash")).await.unwrap(), None);
        assert!(
            store
                .adopt_workspace_gid(&ws("old"), Some(200), &event())
                .await
                .unwrap()
        );
        assert_eq!(store.workspace_gid(&ws("old")).await.unwrap(), Some(200));
        assert!(
            !store
                .adopt_workspace_gid(&ws("new"), Some(201), &event())
                .await
                .unwrap(),
            "a workspace that was not listed adopts nothing"
        );
        assert!(store.workspaces_to_adopt().await.unwrap().is_empty());
    }
}

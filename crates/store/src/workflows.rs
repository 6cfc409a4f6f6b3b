//! A workspace's registered workflows and whether it runs only those.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;
use tresor_domain::{UserId, WorkspaceId};

use crate::audit::AuditEvent;
use crate::{Error, Store, format_time, is_unique_violation};

/// A registered workflow: a name and version pinned to its files' digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRecord {
    pub workspace: WorkspaceId,
    pub name: String,
    pub version: String,
    pub digest: String,
    pub workflow_type: String,
    pub workflow_type_version: String,
    pub workflow_url: String,
    /// The files as JSON (`{"path": "<base64>"}`); empty in listings.
    pub files: String,
    /// The files' names.
    pub file_names: Vec<String>,
    /// `proposed` or `approved`.
    pub state: String,
    pub proposed_by: UserId,
    pub approved_by: Option<UserId>,
    pub created_at: String,
}

const COLUMNS: &str = "workspace, name, version, digest, workflow_type, workflow_type_version, workflow_url, files, file_names, state, proposed_by, approved_by, created_at";
/// A listing's columns: the files' names, not their contents.
const LISTED: &str = "workspace, name, version, digest, workflow_type, workflow_type_version, workflow_url, '' AS files, file_names, state, proposed_by, approved_by, created_at";

fn from_row(row: &SqliteRow) -> Result<WorkflowRecord, Error> {
    let name: String = row.try_get("name")?;
    let corrupt = |column: &'static str, reason: String| Error::Corrupt {
        id: name.clone(),
        column,
        reason,
    };
    let approved_by: Option<String> = row.try_get("approved_by")?;
    let file_names: String = row.try_get("file_names")?;
    Ok(WorkflowRecord {
        workspace: WorkspaceId::parse(&row.try_get::<String, _>("workspace")?)
            .map_err(|e| corrupt("workspace", e.to_string()))?,
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        workflow_type: row.try_get("workflow_type")?,
        workflow_type_version: row.try_get("workflow_type_version")?,
        workflow_url: row.try_get("workflow_url")?,
        files: row.try_get("files")?,
        file_names: serde_json::from_str(&file_names)
            .map_err(|e| corrupt("file_names", e.to_string()))?,
        state: row.try_get("state")?,
        proposed_by: UserId::parse(&row.try_get::<String, _>("proposed_by")?)
            .map_err(|e| corrupt("proposed_by", e.to_string()))?,
        approved_by: approved_by
            .map(|u| UserId::parse(&u).map_err(|e| corrupt("approved_by", e.to_string())))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        name,
    })
}

impl Store {
    /// Registers a workflow version; an existing (name, version) is a conflict, so a changed
    /// workflow must be a new version.
    pub async fn insert_workflow(
        &self,
        workflow: &WorkflowRecord,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let result = self
            .audited(event, async |conn| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO workflows ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                )))
                .bind(workflow.workspace.as_str())
                .bind(&workflow.name)
                .bind(&workflow.version)
                .bind(&workflow.digest)
                .bind(&workflow.workflow_type)
                .bind(&workflow.workflow_type_version)
                .bind(&workflow.workflow_url)
                .bind(&workflow.files)
                .bind(serde_json::to_string(&workflow.file_names).unwrap_or_default())
                .bind(&workflow.state)
                .bind(workflow.proposed_by.as_str())
                .bind(workflow.approved_by.as_ref().map(UserId::as_str))
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
            .await;
        match result {
            // The service names the workflow and what to do.
            Err(Error::Database(e)) if is_unique_violation(&e) => Err(Error::Conflict(
                "this workflow version is already registered",
            )),
            other => other,
        }
    }

    /// One registered workflow version.
    pub async fn get_workflow(
        &self,
        workspace: &WorkspaceId,
        name: &str,
        version: &str,
    ) -> Result<Option<WorkflowRecord>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM workflows WHERE workspace = ? AND name = ? AND version = ?"
        )))
        .bind(workspace.as_str())
        .bind(name)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// An approved workflow of the workspace with these files, if there is one.
    pub async fn approved_workflow_with_digest(
        &self,
        workspace: &WorkspaceId,
        digest: &str,
    ) -> Result<Option<WorkflowRecord>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM workflows WHERE workspace = ? AND digest = ? AND state = 'approved' ORDER BY created_at LIMIT 1"
        )))
        .bind(workspace.as_str())
        .bind(digest)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The workspace's registered workflows, by name and version.
    pub async fn list_workflows(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Vec<WorkflowRecord>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LISTED} FROM workflows WHERE workspace = ? ORDER BY name, version"
        )))
        .bind(workspace.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// How many versions a workspace has registered or proposed.
    pub async fn count_workflows(&self, workspace: &WorkspaceId) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM workflows WHERE workspace = ?")
                .bind(workspace.as_str())
                .fetch_one(&self.reader)
                .await?,
        )
    }

    /// Approves a proposed version; returns whether one was waiting.
    pub async fn approve_workflow(
        &self,
        workspace: &WorkspaceId,
        name: &str,
        version: &str,
        approver: &UserId,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        self.audited_if(async |conn| {
            let done = sqlx::query(
                "UPDATE workflows SET state = 'approved', approved_by = ? WHERE workspace = ? AND name = ? AND version = ? AND state = 'proposed'",
            )
            .bind(approver.as_str())
            .bind(workspace.as_str())
            .bind(name)
            .bind(version)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            Ok((done, done.then(|| event.clone())))
        })
        .await
    }

    /// Whether the workspace runs only registered workflows, whoever starts them.
    pub async fn registered_workflows_only(&self, workspace: &WorkspaceId) -> Result<bool, Error> {
        let only: Option<i64> =
            sqlx::query_scalar("SELECT registered_workflows_only FROM workspaces WHERE id = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(only.unwrap_or(0) != 0)
    }

    pub async fn set_registered_workflows_only(
        &self,
        workspace: &WorkspaceId,
        only: bool,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            sqlx::query("UPDATE workspaces SET registered_workflows_only = ? WHERE id = ?")
                .bind(i64::from(only))
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }
}

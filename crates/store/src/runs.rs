//! WES workflow runs. A run row holds what was asked (the request), what ran (the engine and the
//! workflow's digest) and where (its directory); its state is its engine task's, unless the
//! run ended before it had one.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tresor_domain::{TaskId, TaskState, UserId, WorkspaceId};

use crate::audit::AuditEvent;
use crate::tasks::{COLUMNS, task_from_row};
use crate::{Error, Store, TaskRecord, format_time};

/// A run to store.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub workspace: WorkspaceId,
    pub created_by: UserId,
    /// The WES `RunRequest` as JSON.
    pub request: String,
    pub engine: String,
    pub digest: String,
    pub dir: String,
    pub audit: AuditEvent,
}

/// A stored run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub seq: i64,
    pub id: String,
    pub workspace: WorkspaceId,
    pub created_by: UserId,
    pub created_at: OffsetDateTime,
    pub request: String,
    pub engine: String,
    pub digest: String,
    pub dir: String,
    pub engine_task: Option<TaskId>,
    /// Set only when the run ended without its engine task saying so.
    pub state: Option<TaskState>,
    pub reason: Option<String>,
    /// Where the run's outputs were published, or why they could not be.
    pub published: Option<String>,
}

const RUN_COLUMNS: &str = "seq, id, workspace, created_by, created_at, request, engine, digest, dir, engine_task, state, reason, published";

fn run_from_row(row: &SqliteRow) -> Result<RunRecord, Error> {
    let id: String = row.try_get("id")?;
    let corrupt = |column: &'static str, reason: String| Error::Corrupt {
        id: id.clone(),
        column,
        reason,
    };
    let created_at: String = row.try_get("created_at")?;
    let state: Option<String> = row.try_get("state")?;
    let engine_task: Option<String> = row.try_get("engine_task")?;
    Ok(RunRecord {
        seq: row.try_get("seq")?,
        workspace: WorkspaceId::parse(&row.try_get::<String, _>("workspace")?)
            .map_err(|e| corrupt("workspace", e.to_string()))?,
        created_by: UserId::parse(&row.try_get::<String, _>("created_by")?)
            .map_err(|e| corrupt("created_by", e.to_string()))?,
        created_at: OffsetDateTime::parse(&created_at, &Rfc3339)
            .map_err(|e| corrupt("created_at", e.to_string()))?,
        request: row.try_get("request")?,
        engine: row.try_get("engine")?,
        digest: row.try_get("digest")?,
        dir: row.try_get("dir")?,
        engine_task: engine_task
            .map(|t| TaskId::parse(&t).map_err(|e| corrupt("engine_task", e.to_string())))
            .transpose()?,
        state: state
            .map(|s| TaskState::parse(&s).ok_or_else(|| corrupt("state", s.clone())))
            .transpose()?,
        reason: row.try_get("reason")?,
        published: row.try_get("published")?,
        id,
    })
}

impl Store {
    /// Stores a new run (without its engine task yet) with its audit event.
    pub async fn insert_run(&self, run: NewRun) -> Result<(), Error> {
        self.audited(&run.audit, async |conn| {
            sqlx::query(
                "INSERT INTO runs (id, workspace, created_by, created_at, request, engine, digest, dir)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&run.id)
            .bind(run.workspace.as_str())
            .bind(run.created_by.as_str())
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(&run.request)
            .bind(&run.engine)
            .bind(&run.digest)
            .bind(&run.dir)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// Records the run's engine task.
    pub async fn set_run_engine_task(&self, run: &str, task: &TaskId) -> Result<(), Error> {
        sqlx::query("UPDATE runs SET engine_task = ? WHERE id = ?")
            .bind(task.as_str())
            .bind(run)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Ends a run that has no engine task to say so (its engine could not be created).
    pub async fn end_run(&self, run: &str, state: TaskState, reason: &str) -> Result<(), Error> {
        sqlx::query("UPDATE runs SET state = ?, reason = ? WHERE id = ? AND state IS NULL")
            .bind(state.as_str())
            .bind(reason)
            .bind(run)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The run with this id in this workspace; another workspace's run is `None`.
    pub async fn get_run(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> Result<Option<RunRecord>, Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = "));
        q.push_bind(id.to_owned());
        q.push(" AND workspace = ").push_bind(workspace.as_str());
        let row = q.build().fetch_optional(&self.reader).await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The run with this id whatever its workspace; for the engine's own calls, never for users.
    pub async fn get_run_for_system(&self, id: &str) -> Result<Option<RunRecord>, Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = "));
        q.push_bind(id.to_owned());
        let row = q.build().fetch_optional(&self.reader).await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// One page of a workspace's runs, newest first, strictly older than `before_seq`.
    pub async fn list_runs(
        &self,
        workspace: &WorkspaceId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, Error> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE workspace = "
        ));
        q.push_bind(workspace.as_str());
        if let Some(seq) = before_seq {
            q.push(" AND seq < ").push_bind(seq);
        }
        q.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Tasks that have not ended of runs whose engine has: left behind by an engine that was
    /// killed or crashed before it canceled its jobs.
    pub async fn stray_run_tasks(&self) -> Result<Vec<(TaskRecord, UserId)>, Error> {
        let columns = COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {columns}, r.created_by AS run_owner FROM tasks t \
             JOIN runs r ON r.id = t.run_id \
             JOIN tasks e ON e.id = r.engine_task \
             WHERE t.run_id IS NOT NULL \
             AND t.state IN ('QUEUED', 'INITIALIZING', 'RUNNING') \
             AND e.state NOT IN ('QUEUED', 'INITIALIZING', 'RUNNING') \
             ORDER BY t.seq LIMIT 100"
        ));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter()
            .map(|row| {
                let owner: String = row.try_get("run_owner")?;
                let owner = UserId::parse(&owner).map_err(|e| Error::Corrupt {
                    id: owner.clone(),
                    column: "created_by",
                    reason: e.to_string(),
                })?;
                Ok((task_from_row(row)?, owner))
            })
            .collect()
    }

    /// Completed runs whose outputs are not published yet.
    pub async fn runs_to_publish(&self) -> Result<Vec<RunRecord>, Error> {
        let columns = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {columns} FROM runs r JOIN tasks e ON e.id = r.engine_task \
             WHERE r.published IS NULL AND e.state = 'COMPLETE' ORDER BY r.seq LIMIT 20"
        ));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records where a run's outputs were published (or why not), once.
    pub async fn set_run_published(&self, run: &str, published: &str) -> Result<(), Error> {
        sqlx::query("UPDATE runs SET published = ? WHERE id = ? AND published IS NULL")
            .bind(published)
            .bind(run)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// How many of a workspace's runs are in each state (a run without an engine task is
    /// counted by its own state, else as QUEUED).
    pub async fn run_state_counts(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Vec<(TaskState, i64)>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT COALESCE(r.state, t.state, 'QUEUED') AS s, COUNT(*) FROM runs r \
             LEFT JOIN tasks t ON t.id = r.engine_task WHERE r.workspace = ? GROUP BY s",
        )
        .bind(workspace.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(state, n)| {
                TaskState::parse(&state)
                    .map(|s| (s, n))
                    .ok_or_else(|| Error::Corrupt {
                        id: workspace.to_string(),
                        column: "state",
                        reason: state.clone(),
                    })
            })
            .collect()
    }

    /// The run's tasks that have not ended, engine included.
    pub async fn active_run_tasks(&self, run: &str) -> Result<Vec<TaskRecord>, Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE run_id = "));
        q.push_bind(run.to_owned());
        q.push(" AND state IN ('QUEUED', 'INITIALIZING', 'RUNNING') ORDER BY seq");
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(task_from_row).collect()
    }
}

//! The `tasks` table: durable creation through group commit, filtered listing, conditional state changes.

use std::collections::BTreeMap;

use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, sqlite::SqliteRow};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tresor_domain::{TaskId, TaskSpec, TaskState, UserId, WorkspaceId};

use crate::audit::{self, AuditEvent};
use crate::{Error, Store, format_time};

/// A task as it is first written: always `QUEUED`.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub workspace: WorkspaceId,
    pub name: Option<String>,
    pub cpu_cores: u32,
    pub creation_time: OffsetDateTime,
    /// The accepted task.
    pub spec: TaskSpec,
    pub tags: BTreeMap<String, String>,
    /// Server notes (such as ignored backend parameters), shown first in `system_logs`.
    pub notes: Vec<String>,
    pub created_by: UserId,
    /// The compute environment the task runs in (the workspace's choice when it was created).
    pub compute_env: String,
    /// Recorded in the same transaction as the task.
    pub audit: AuditEvent,
}

/// A stored task.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: TaskId,
    pub workspace: WorkspaceId,
    pub name: Option<String>,
    pub state: TaskState,
    pub cpu_cores: u32,
    pub creation_time: OffsetDateTime,
    pub spec: TaskSpec,
    pub tags: BTreeMap<String, String>,
    pub logs_json: Option<String>,
    pub notes: Vec<String>,
    /// The user who submitted it.
    pub created_by: UserId,
    /// Position in the stable listing order (newest first); the page-token cursor.
    pub seq: i64,
    /// The compute environment the task runs in.
    pub compute_env: String,
    /// The executor's handle for the task's work once submitted (a SLURM job id).
    pub executor_ref: Option<String>,
    /// The server process that claimed it, while it is active (see `Lease`).
    pub owner: Option<String>,
    /// Until when (Unix milliseconds) the owner's lease runs.
    pub lease_until: Option<i64>,
}

/// What a claim of a task's secrets found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretClaim {
    /// The first delivery.
    First,
    /// The same delivery again (same worker, same delivery id).
    Repeat,
    /// Delivered already, to another request.
    Refused,
}

/// A server process's claim on the active tasks it runs: its id and until when the claim holds
/// (Unix milliseconds). It is renewed while the process lives; another process may take over a
/// task whose lease lapsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until_ms: i64,
}

/// One `tag_key`/`tag_value` pair of a ListTasks filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    pub key: String,
    /// `None` matches any value, as the spec says of an empty `tag_value`.
    pub value: Option<String>,
}

/// ListTasks filters; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only the tasks of this workflow run.
    pub run: Option<String>,
    pub name_prefix: Option<String>,
    pub state: Option<TaskState>,
    pub tags: Vec<TagFilter>,
}

pub(crate) struct InsertRequest {
    task: NewTask,
    done: oneshot::Sender<Result<(), Error>>,
}

/// Largest number of inserts committed together.
const MAX_BATCH: usize = 512;

/// Commits queued inserts in batches: the first request opens a transaction, every request that
/// arrived meanwhile joins it, and all are answered after the one commit.
pub(crate) async fn run_group_commit(
    pool: SqlitePool,
    audit_key: ring::hmac::Key,
    mut queue: mpsc::Receiver<InsertRequest>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = insert_batch(&pool, &audit_key, &batch)
            .await
            .map_err(Error::Database);
        // Every request of the batch gets the batch's failure, classified once: a full disk is
        // a full disk for each of them, and the writer goes on with the next batch.
        let failure = result.as_ref().err().map(|e| {
            tracing::error!(error = %e, cause = ?e, "group commit failed");
            (e.outage(), e.to_string())
        });
        for request in batch.drain(..) {
            let answer = match &failure {
                None => Ok(()),
                Some((outage, message)) => Err(Error::GroupCommit {
                    outage: *outage,
                    message: message.clone(),
                }),
            };
            // The requester may have gone away (client disconnected); the task is stored anyway.
            let _ = request.done.send(answer);
        }
    }
}

async fn insert_batch(
    pool: &SqlitePool,
    audit_key: &ring::hmac::Key,
    batch: &[InsertRequest],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with(crate::BEGIN_WRITE).await?;
    for InsertRequest { task, .. } in batch {
        let now = format_time(OffsetDateTime::now_utc());
        let tags = serde_json::to_string(&task.tags).unwrap_or_else(|_| "{}".to_owned());
        let notes = serde_json::to_string(&task.notes).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO tasks (id, workspace, name, state, cpu_cores, creation_time, spec, tags, notes, created_by, updated_at, compute_env, run_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(task.id.as_str())
        .bind(task.workspace.as_str())
        .bind(task.name.as_deref())
        .bind(TaskState::Queued.as_str())
        .bind(i64::from(task.cpu_cores))
        .bind(format_time(task.creation_time))
        .bind(task.spec.to_stored())
        .bind(tags)
        .bind(notes)
        .bind(task.created_by.as_str())
        .bind(now)
        .bind(task.compute_env.as_str())
        .bind(task.spec.run.as_ref().map(|run| run.id.as_str()))
        .execute(&mut *tx)
        .await?;
        audit::append(&mut tx, audit_key, &task.audit)
            .await
            .map_err(|e| match e {
                Error::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
    }
    tx.commit().await
}

pub(crate) const COLUMNS: &str = "seq, id, workspace, name, state, cpu_cores, creation_time, spec, tags, logs, notes, created_by, compute_env, executor_ref, owner, lease_until";

pub(crate) fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, Error> {
    let id: String = row.try_get("id")?;
    let corrupt = |column: &'static str, reason: String| Error::Corrupt {
        id: id.clone(),
        column,
        reason,
    };
    let get_str =
        |column: &'static str| -> Result<String, Error> { Ok(row.try_get::<String, _>(column)?) };
    let state = get_str("state")?;
    let creation_time = get_str("creation_time")?;
    let tags = get_str("tags")?;
    let notes = get_str("notes")?;
    let workspace = get_str("workspace")?;
    Ok(TaskRecord {
        id: TaskId::parse(&id).map_err(|e| corrupt("id", e.to_string()))?,
        workspace: WorkspaceId::parse(&workspace)
            .map_err(|e| corrupt("workspace", e.to_string()))?,
        name: row.try_get("name")?,
        state: TaskState::parse(&state).ok_or_else(|| corrupt("state", state.clone()))?,
        cpu_cores: u32::try_from(row.try_get::<i64, _>("cpu_cores")?)
            .map_err(|e| corrupt("cpu_cores", e.to_string()))?,
        creation_time: OffsetDateTime::parse(&creation_time, &Rfc3339)
            .map_err(|e| corrupt("creation_time", e.to_string()))?,
        spec: TaskSpec::from_stored(&get_str("spec")?).map_err(|e| corrupt("spec", e))?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", e.to_string()))?,
        logs_json: row.try_get("logs")?,
        notes: serde_json::from_str(&notes).map_err(|e| corrupt("notes", e.to_string()))?,
        created_by: UserId::parse(&get_str("created_by")?)
            .map_err(|e| corrupt("created_by", e.to_string()))?,
        seq: row.try_get("seq")?,
        compute_env: get_str("compute_env")?,
        executor_ref: row.try_get("executor_ref")?,
        owner: row.try_get("owner")?,
        lease_until: row.try_get("lease_until")?,
    })
}

fn push_state_list(q: &mut QueryBuilder<Sqlite>, states: &[TaskState]) {
    q.push("(");
    let mut list = q.separated(", ");
    for state in states {
        list.push_bind(state.as_str());
    }
    list.push_unseparated(")");
}

impl Store {
    /// Stores a new `QUEUED` task; returns once its transaction is committed.
    pub async fn insert_task(&self, task: NewTask) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.inserts
            .send(InsertRequest { task, done })
            .await
            .map_err(|_| Error::WriterGone)?;
        answer.await.map_err(|_| Error::WriterGone)?
    }

    /// The task with this id in this workspace; another workspace's task is `None`.
    pub async fn get_task(
        &self,
        workspace: &WorkspaceId,
        id: &TaskId,
    ) -> Result<Option<TaskRecord>, Error> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE id = "));
        q.push_bind(id.as_str());
        q.push(" AND workspace = ");
        q.push_bind(workspace.as_str());
        let row = q.build().fetch_optional(&self.reader).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// The task with this id whatever its workspace; for the scheduler and workers, never for callers.
    pub async fn get_task_for_system(&self, id: &TaskId) -> Result<Option<TaskRecord>, Error> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE id = "));
        q.push_bind(id.as_str());
        let row = q.build().fetch_optional(&self.reader).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// One page of a workspace's tasks, newest first, strictly older than `before_seq`.
    pub async fn list_tasks(
        &self,
        workspace: &WorkspaceId,
        filter: &TaskFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, Error> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS} FROM tasks t WHERE workspace = "
        ));
        q.push_bind(workspace.as_str());
        if let Some(seq) = before_seq {
            q.push(" AND seq < ").push_bind(seq);
        }
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(run) = &filter.run {
            q.push(" AND run_id = ").push_bind(run.clone());
        }
        if let Some(prefix) = &filter.name_prefix {
            // substr counts characters, so this is an exact, case-sensitive prefix match
            // (LIKE would be case-insensitive and treat % and _ specially).
            let chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
            q.push(" AND substr(name, 1, ")
                .push_bind(chars)
                .push(") = ")
                .push_bind(prefix.clone());
        }
        for tag in &filter.tags {
            q.push(" AND EXISTS (SELECT 1 FROM json_each(t.tags) j WHERE j.key = ")
                .push_bind(tag.key.clone());
            if let Some(value) = &tag.value {
                q.push(" AND j.value = ").push_bind(value.clone());
            }
            q.push(")");
        }
        q.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Moves a task to `to` if its current state allows it (see `TaskState::can_become`).
    /// `logs_json`, when given, replaces the stored logs in the same update.
    /// Returns whether the task moved.
    pub async fn transition(
        &self,
        id: &TaskId,
        to: TaskState,
        logs_json: Option<&str>,
    ) -> Result<bool, Error> {
        let mut q = QueryBuilder::<Sqlite>::new("UPDATE tasks SET state = ");
        q.push_bind(to.as_str());
        q.push(", logs = COALESCE(")
            .push_bind(logs_json.map(str::to_owned))
            .push(", logs), updated_at = ")
            .push_bind(format_time(OffsetDateTime::now_utc()));
        if to.is_terminal() {
            // An ended task's worker session and bootstrap token die with it, and so does its lease.
            q.push(", session_hash = NULL, bootstrap_hash = NULL, lease_until = NULL");
        }
        if to == TaskState::Queued {
            // Back in the queue, it belongs to nobody until it is claimed again.
            q.push(
                ", session_hash = NULL, bootstrap_hash = NULL, owner = NULL, lease_until = NULL",
            );
        }
        q.push(" WHERE id = ").push_bind(id.as_str());
        q.push(" AND state IN ");
        push_state_list(&mut q, &TaskState::predecessors(to));
        let done = q.build().execute(&self.writer).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels a task (a conditional move to CANCELED) and records `event` in the same
    /// transaction. Returns whether the task moved.
    pub async fn cancel_task(
        &self,
        id: &TaskId,
        logs_json: &str,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        self.audited_if(async |conn| {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE tasks SET state = 'CANCELED', session_hash = NULL, bootstrap_hash = NULL, lease_until = NULL, logs = ",
            );
            q.push_bind(logs_json.to_owned());
            q.push(", updated_at = ")
                .push_bind(format_time(OffsetDateTime::now_utc()));
            q.push(" WHERE id = ").push_bind(id.as_str());
            q.push(" AND state IN ");
            push_state_list(&mut q, &TaskState::predecessors(TaskState::Canceled));
            let done = q.build().execute(&mut *conn).await?;
            if done.rows_affected() == 0 {
                return Ok((false, None));
            }
            Ok((true, Some(event.clone())))
        })
        .await
    }

    /// Replaces the logs of a task that is still in `state` (progress within a state).
    pub async fn update_logs(
        &self,
        id: &TaskId,
        state: TaskState,
        logs_json: &str,
    ) -> Result<bool, Error> {
        let done =
            sqlx::query("UPDATE tasks SET logs = ?, updated_at = ? WHERE id = ? AND state = ?")
                .bind(logs_json)
                .bind(format_time(OffsetDateTime::now_utc()))
                .bind(id.as_str())
                .bind(state.as_str())
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims the oldest QUEUED task of a compute environment for `lease`'s owner (moving it to
    /// INITIALIZING) if it needs at most `max_cores`. `None` when the queue is empty or its head
    /// does not fit: first come, first served, so a large task at the head is never overtaken.
    /// One statement, so two processes can never claim the same task.
    /// `session_hash` becomes the task's worker session (see `task_session`).
    pub async fn claim_next_task(
        &self,
        compute_env: &str,
        max_cores: u32,
        session_hash: &[u8],
        lease: &Lease,
    ) -> Result<Option<TaskRecord>, Error> {
        let sql = format!(
            "UPDATE tasks SET state = 'INITIALIZING', updated_at = ?, session_hash = ?,
               secrets_delivered = 0, bootstrap_hash = NULL, executor_ref = NULL,
               owner = ?, lease_until = ?
             WHERE seq = (SELECT seq FROM tasks WHERE state = 'QUEUED' AND compute_env = ?
                          ORDER BY seq LIMIT 1)
               AND cpu_cores <= ?
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(session_hash)
            .bind(lease.owner.as_str())
            .bind(lease.until_ms)
            .bind(compute_env)
            .bind(i64::from(max_cores))
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// Extends the lease of every active task `lease.owner` holds. Returns how many it holds.
    pub async fn renew_leases(&self, lease: &Lease) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_until = ?
             WHERE owner = ? AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(lease.until_ms)
        .bind(lease.owner.as_str())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Active tasks another process (or nobody) owns, oldest first: the candidates for a
    /// takeover. The caller decides whose lease lapsed.
    pub async fn tasks_owned_by_others(&self, owner: &str) -> Result<Vec<TaskRecord>, Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks
             WHERE state IN ('INITIALIZING', 'RUNNING') AND (owner IS NULL OR owner != ?)
             ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Takes an active task over for `lease`'s owner if `from` still owns it with the lease the
    /// caller saw lapse (compare and swap): of two processes taking over the same task, exactly
    /// one succeeds, and a renewal that landed meanwhile keeps the task with its owner.
    pub async fn take_over(
        &self,
        id: &TaskId,
        from: Option<&str>,
        seen_until: Option<i64>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET owner = ?, lease_until = ?
             WHERE id = ? AND owner IS ? AND lease_until IS ?
               AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(lease.owner.as_str())
        .bind(lease.until_ms)
        .bind(id.as_str())
        .bind(from)
        .bind(seen_until)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up `owner`'s claim on an active task it could not follow: the task has no owner
    /// until a process takes it over.
    pub async fn disown(&self, id: &TaskId, owner: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tasks SET owner = NULL, lease_until = NULL
             WHERE id = ? AND owner = ? AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(id.as_str())
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Tasks whose stored document predates the typed task (a TES document): `(id, document,
    /// compute environment, cores)`, to be converted once at start.
    pub async fn legacy_task_specs(&self) -> Result<Vec<(TaskId, String, String)>, Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, spec, compute_env FROM tasks WHERE json_extract(spec, '$.version') IS NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(id, spec, env)| {
                let task = TaskId::parse(&id).map_err(|e| Error::Corrupt {
                    id: id.clone(),
                    column: "id",
                    reason: e.to_string(),
                })?;
                Ok((task, spec, env))
            })
            .collect()
    }

    /// Replaces a legacy task document with its typed form, unless it was converted meanwhile.
    pub async fn convert_task_spec(&self, id: &TaskId, spec: &TaskSpec) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tasks SET spec = ? WHERE id = ? AND json_extract(spec, '$.version') IS NULL",
        )
        .bind(spec.to_stored())
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// An active task's worker session hash (None once the task ended or before it started).
    pub async fn task_session(&self, id: &TaskId) -> Result<Option<Vec<u8>>, Error> {
        let hash: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT session_hash FROM tasks WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(hash.flatten())
    }

    /// Marks a task's secrets delivered under the worker's `delivery` id. They go out once: a
    /// second claim is refused, unless it repeats the first one's delivery id (the same worker
    /// asking again after its answer was lost).
    pub async fn claim_secret_delivery(
        &self,
        id: &TaskId,
        delivery: Option<&str>,
    ) -> Result<SecretClaim, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET secrets_delivered = 1, secrets_delivery = ? WHERE id = ? AND secrets_delivered = 0",
        )
        .bind(delivery)
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(SecretClaim::First);
        }
        let Some(delivery) = delivery else {
            return Ok(SecretClaim::Refused);
        };
        let same: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM tasks WHERE id = ? AND secrets_delivery = ?")
                .bind(id.as_str())
                .bind(delivery)
                .fetch_optional(&self.writer)
                .await?;
        Ok(if same.is_some() {
            SecretClaim::Repeat
        } else {
            SecretClaim::Refused
        })
    }

    /// Arms a claimed task's one-time bootstrap token (its SHA-256) before its batch job exists.
    pub async fn set_bootstrap(&self, id: &TaskId, hash: &[u8]) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET bootstrap_hash = ? WHERE id = ? AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(hash)
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The armed bootstrap token hash of an active task, if it has not been used.
    pub async fn task_bootstrap(&self, id: &TaskId) -> Result<Option<Vec<u8>>, Error> {
        let hash: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT bootstrap_hash FROM tasks WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(hash.flatten())
    }

    /// Spends a bootstrap token: if `presented` (already compared by the caller) is still the
    /// armed hash, clears it and installs `session_hash` in one statement. False if it was spent
    /// meanwhile, so two exchanges of one token can never both succeed.
    pub async fn spend_bootstrap(
        &self,
        id: &TaskId,
        presented: &[u8],
        session_hash: &[u8],
        exchange: Option<&str>,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET bootstrap_hash = NULL, session_hash = ?, bootstrap_spent = ?, bootstrap_exchange = ?
             WHERE id = ? AND bootstrap_hash = ? AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(session_hash)
        .bind(presented)
        .bind(exchange)
        .bind(id.as_str())
        .bind(presented)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether `presented` is the task's spent bootstrap token and `exchange` the id it was spent
    /// with (compared in constant time): the cheap check before a repeated exchange's work.
    pub async fn bootstrap_spent_with(
        &self,
        id: &TaskId,
        presented: &[u8],
        exchange: &str,
    ) -> Result<bool, Error> {
        use subtle::ConstantTimeEq;
        let row: Option<(Option<Vec<u8>>, Option<String>)> = sqlx::query_as(
            "SELECT bootstrap_spent, bootstrap_exchange FROM tasks WHERE id = ? AND bootstrap_hash IS NULL",
        )
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(match row {
            Some((Some(spent), Some(stored))) => {
                bool::from(spent.as_slice().ct_eq(presented))
                    & bool::from(stored.as_bytes().ct_eq(exchange.as_bytes()))
            }
            _ => false,
        })
    }

    /// The same exchange again (the spent token with the exchange id its worker gave it), after
    /// the answer was lost: a new session credential replaces the one never received. False for
    /// anything else, a replay by whoever read the token included.
    pub async fn repeat_bootstrap(
        &self,
        id: &TaskId,
        presented: &[u8],
        exchange: &str,
        session_hash: &[u8],
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE tasks SET session_hash = ?
             WHERE id = ? AND bootstrap_hash IS NULL AND bootstrap_spent = ? AND bootstrap_exchange = ?
             AND state IN ('INITIALIZING', 'RUNNING')",
        )
        .bind(session_hash)
        .bind(id.as_str())
        .bind(presented)
        .bind(exchange)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the executor's handle for a task's work (a SLURM job id).
    pub async fn set_executor_ref(&self, id: &TaskId, executor_ref: &str) -> Result<(), Error> {
        sqlx::query("UPDATE tasks SET executor_ref = ? WHERE id = ?")
            .bind(executor_ref)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Tasks in any of `states`, oldest first, across workspaces; for the scheduler and reconciler.
    pub async fn tasks_in_states(
        &self,
        states: &[TaskState],
        limit: u32,
    ) -> Result<Vec<TaskRecord>, Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM tasks WHERE state IN "));
        push_state_list(&mut q, states);
        q.push(" ORDER BY seq ASC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(task_from_row).collect()
    }

    /// How many tasks are in each state, across workspaces; for the metrics.
    pub async fn task_counts(&self) -> Result<Vec<(TaskState, i64)>, Error> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| TaskState::parse(&state).map(|s| (s, n)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&crate::test_settings(dir.path()))
            .await
            .unwrap();
        (dir, store)
    }

    fn new_task(id: &str, ws: &str, name: &str, tags: &[(&str, &str)]) -> NewTask {
        NewTask {
            id: TaskId::parse(id).unwrap(),
            workspace: WorkspaceId::parse(ws).unwrap(),
            name: Some(name.to_owned()),
            cpu_cores: 1,
            creation_time: OffsetDateTime::now_utc(),
            spec: TaskSpec::new(
                Vec::new(),
                tresor_domain::ComputeEnv {
                    id: "local".to_owned(),
                    kind: tresor_domain::ComputeEnvKind::Local,
                },
            ),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            notes: Vec::new(),
            created_by: UserId::parse("u1").unwrap(),
            compute_env: "local".to_owned(),
            audit: AuditEvent {
                actor: "u1".to_owned(),
                action: "task.create".to_owned(),
                object: format!("task:{id}"),
                workspace: Some(ws.to_owned()),
                source: None,
                result: "ok".to_owned(),
                detail: None,
            },
        }
    }

    fn lease() -> Lease {
        Lease {
            owner: "host:1:test".to_owned(),
            until_ms: i64::MAX,
        }
    }

    fn ids(records: &[TaskRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[tokio::test]
    async fn concurrent_inserts_are_all_committed() {
        let (_dir, store) = store().await;
        let mut handles = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                store
                    .insert_task(new_task(&format!("t{i}"), "ws", "n", &[]))
                    .await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let ws = WorkspaceId::parse("ws").unwrap();
        let all = store
            .list_tasks(&ws, &TaskFilter::default(), None, 1000)
            .await
            .unwrap();
        assert_eq!(all.len(), 200);
    }

    #[tokio::test]
    async fn tag_filters_follow_the_spec_truth_table() {
        let (_dir, store) = store().await;
        let ws = WorkspaceId::parse("ws").unwrap();
        store
            .insert_task(new_task("a", "ws", "n", &[("foo", "bar")]))
            .await
            .unwrap();
        store
            .insert_task(new_task("b", "ws", "n", &[("foo", "bat")]))
            .await
            .unwrap();
        store
            .insert_task(new_task("c", "ws", "n", &[("foo", "")]))
            .await
            .unwrap();
        store
            .insert_task(new_task("d", "ws", "n", &[("foo", "bar"), ("baz", "bat")]))
            .await
            .unwrap();
        store
            .insert_task(new_task("e", "ws", "n", &[]))
            .await
            .unwrap();
        let list = |tags: Vec<TagFilter>| {
            let store = store.clone();
            let ws = ws.clone();
            async move {
                let filter = TaskFilter {
                    run: None,
                    tags,
                    ..TaskFilter::default()
                };
                let found = store.list_tasks(&ws, &filter, None, 100).await.unwrap();
                let mut found: Vec<String> = ids(&found).into_iter().map(str::to_owned).collect();
                found.sort();
                found
            }
        };
        let tag = |k: &str, v: Option<&str>| TagFilter {
            key: k.to_owned(),
            value: v.map(str::to_owned),
        };
        assert_eq!(list(vec![tag("foo", Some("bar"))]).await, ["a", "d"]);
        assert_eq!(list(vec![tag("foo", None)]).await, ["a", "b", "c", "d"]);
        assert_eq!(
            list(vec![tag("foo", Some("bar")), tag("baz", Some("bat"))]).await,
            ["d"]
        );
        assert_eq!(list(vec![tag("nope", None)]).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn claims_take_the_oldest_task_and_never_overtake_it() {
        let (_dir, store) = store().await;
        let mut big = new_task("big", "ws", "n", &[]);
        big.cpu_cores = 4;
        store
            .insert_task(new_task("first", "ws", "n", &[]))
            .await
            .unwrap();
        store.insert_task(big).await.unwrap();
        store
            .insert_task(new_task("small", "ws", "n", &[]))
            .await
            .unwrap();
        let claimed = store
            .claim_next_task("local", 2, b"h", &lease())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (claimed.id.as_str(), claimed.state),
            ("first", TaskState::Initializing)
        );
        assert!(
            store
                .claim_next_task("local", 2, b"h", &lease())
                .await
                .unwrap()
                .is_none(),
            "the 4-core head waits"
        );
        assert_eq!(
            store
                .claim_next_task("local", 4, b"h", &lease())
                .await
                .unwrap()
                .unwrap()
                .id
                .as_str(),
            "big"
        );
        assert_eq!(
            store
                .claim_next_task("local", 1, b"h", &lease())
                .await
                .unwrap()
                .unwrap()
                .id
                .as_str(),
            "small"
        );
    }

    #[tokio::test]
    async fn a_hand_off_is_repeated_only_to_the_id_it_was_first_made_to() {
        let (_dir, store) = store().await;
        store
            .insert_task(new_task("t", "ws1", "n", &[]))
            .await
            .unwrap();
        let id = TaskId::parse("t").unwrap();
        assert!(
            store
                .transition(&id, TaskState::Initializing, None)
                .await
                .unwrap()
        );
        let claim = |d: Option<&'static str>| {
            let store = store.clone();
            let id = id.clone();
            async move { store.claim_secret_delivery(&id, d).await.unwrap() }
        };
        assert_eq!(claim(Some("delivery-one-0001")).await, SecretClaim::First);
        assert_eq!(claim(Some("delivery-one-0001")).await, SecretClaim::Repeat);
        assert_eq!(claim(Some("delivery-two-0002")).await, SecretClaim::Refused);
        assert_eq!(claim(None).await, SecretClaim::Refused);

        assert!(store.set_bootstrap(&id, b"token-hash").await.unwrap());
        assert!(
            !store
                .repeat_bootstrap(&id, b"token-hash", "exchange-one-01", b"s0")
                .await
                .unwrap(),
            "nothing to repeat before the token is spent"
        );
        assert!(
            store
                .spend_bootstrap(&id, b"token-hash", b"s1", Some("exchange-one-01"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .spend_bootstrap(&id, b"token-hash", b"s2", Some("exchange-one-01"))
                .await
                .unwrap(),
            "spent once"
        );
        for (presented, exchange) in [
            (&b"token-hash"[..], "exchange-two-02"),
            (b"other-hash", "exchange-one-01"),
        ] {
            assert!(
                !store
                    .repeat_bootstrap(&id, presented, exchange, b"s3")
                    .await
                    .unwrap()
            );
        }
        assert!(
            store
                .repeat_bootstrap(&id, b"token-hash", "exchange-one-01", b"s4")
                .await
                .unwrap()
        );
        assert_eq!(
            store.task_session(&id).await.unwrap().as_deref(),
            Some(&b"s4"[..])
        );
        assert!(
            store
                .transition(&id, TaskState::SystemError, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .repeat_bootstrap(&id, b"token-hash", "exchange-one-01", b"s5")
                .await
                .unwrap(),
            "not once the task has ended"
        );
    }

    #[tokio::test]
    async fn transitions_refuse_illegal_moves_and_workspaces_are_isolated() {
        let (_dir, store) = store().await;
        store
            .insert_task(new_task("t", "ws1", "n", &[]))
            .await
            .unwrap();
        let id = TaskId::parse("t").unwrap();
        assert!(
            !store
                .transition(&id, TaskState::Running, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .transition(&id, TaskState::Initializing, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .transition(&id, TaskState::Canceled, Some("[]"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .transition(&id, TaskState::Complete, None)
                .await
                .unwrap()
        );
        let other = WorkspaceId::parse("ws2").unwrap();
        assert!(store.get_task(&other, &id).await.unwrap().is_none());
        let mine = WorkspaceId::parse("ws1").unwrap();
        let task = store.get_task(&mine, &id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Canceled);
        assert_eq!(task.logs_json.as_deref(), Some("[]"));
    }
}

//! Tasks on batch schedulers (compute environments of type `slurm`): submission with a one-time
//! bootstrap token, the token's exchange for a worker session, the worker's status reports, one
//! batched poll per environment for what workers cannot report, cancel, and re-adoption after a
//! restart.
//!
//! The worker's own reports are the primary signal. The poll only settles jobs that ended
//! without a final report (a time or memory limit, a node failure, a killed worker) and cleans up
//! after every ended job.

use std::sync::Arc;
use std::time::Duration;

use tresor_api_types::tes::TesTask;
use tresor_domain::{TaskId, TaskState};
use tresor_executors::{
    BootstrapRequest, JobBootstrap, JobInfo, JobResources, SlurmExecutor, WorkerStatus, WorkerTask,
};
use tresor_store::{AuditEvent, TaskRecord};

use super::Inner;
use super::runner::{self, end_task, fail_task};
use crate::ServiceError;

/// The backend parameter that sets a SLURM job's time limit (`--time`).
pub const TIME_LIMIT: &str = "time_limit";

/// A submitted job the poll follows until SLURM reports it ended.
#[derive(Debug, Clone)]
pub(crate) struct BatchJob {
    pub env: String,
    /// None while `sbatch` runs, or for a task re-adopted before its id was recorded.
    pub job_id: Option<String>,
    /// Polls in a row that did not list the job.
    pub missing: u32,
}

fn track(inner: &Inner, id: &TaskId, job: BatchJob) {
    if let Ok(mut jobs) = inner.batch_jobs.lock() {
        jobs.insert(id.clone(), job);
    }
}

fn untrack(inner: &Inner, id: &TaskId) {
    if let Ok(mut jobs) = inner.batch_jobs.lock() {
        jobs.remove(id);
    }
    inner.wake.notify_one();
}

fn in_flight(inner: &Inner, env: &str) -> u32 {
    inner.batch_jobs.lock().map_or(u32::MAX, |jobs| {
        u32::try_from(jobs.values().filter(|j| j.env == env).count()).unwrap_or(u32::MAX)
    })
}

fn executor<'a>(inner: &'a Inner, env: &str) -> Option<&'a Arc<SlurmExecutor>> {
    inner.slurm.get(env)
}

/// The job's resources from the task's: cores, memory, scratch disk and the time limit.
fn job_resources(spec: &TesTask, cpu_cores: u32) -> JobResources {
    let resources = spec.resources.as_ref();
    JobResources {
        cpu_cores,
        ram_gb: resources.and_then(|r| r.ram_gb),
        disk_gb: resources.and_then(|r| r.disk_gb),
        time_limit: resources
            .and_then(|r| r.backend_parameters.as_ref())
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(TIME_LIMIT))
                    .map(|(_, v)| v.clone())
            }),
    }
}

/// Submits the environment's queued tasks, oldest first, while fewer than `max_jobs` run.
pub(crate) async fn submit_queued(inner: &Arc<Inner>, env: &str) -> Result<(), ServiceError> {
    let Some(executor) = executor(inner, env).cloned() else {
        return Ok(());
    };
    while in_flight(inner, env) < executor.settings().max_jobs {
        // The claim installs a session that nobody holds: the real one is minted when the job's
        // worker spends its bootstrap token.
        let (_, unused_session) = runner::new_credential()?;
        let Some(record) = inner
            .store
            .claim_next_task(env, u32::MAX, &unused_session)
            .await?
        else {
            return Ok(());
        };
        submit(inner, &executor, record).await?;
    }
    Ok(())
}

async fn submit(
    inner: &Arc<Inner>,
    executor: &SlurmExecutor,
    record: TaskRecord,
) -> Result<(), ServiceError> {
    let id = record.id.clone();
    let env = executor.settings().name.clone();
    let Some(spec) = runner::stored_spec(inner, &record).await else {
        return Ok(());
    };
    let (token, hash) = runner::new_credential()?;
    let token = zeroize::Zeroizing::new(token);
    if !inner.store.set_bootstrap(&id, &hash).await? {
        // Canceled between the claim and now.
        return Ok(());
    }
    track(
        inner,
        &id,
        BatchJob {
            env: env.clone(),
            job_id: None,
            missing: 0,
        },
    );
    let bootstrap = JobBootstrap {
        task_id: &id,
        server_url: server_url(inner, executor),
        token: &token,
    };
    let resources = job_resources(&spec, record.cpu_cores);
    match executor.submit(&bootstrap, &resources).await {
        Ok(job_id) => {
            tracing::info!(task = %id, job = %job_id, env = %env, "submitted to SLURM");
            inner.store.set_executor_ref(&id, &job_id).await?;
            track(
                inner,
                &id,
                BatchJob {
                    env: env.clone(),
                    job_id: Some(job_id.clone()),
                    missing: 0,
                },
            );
            let log = tresor_api_types::tes::TesTaskLog {
                metadata: Some(job_metadata(&env, &job_id)),
                system_logs: Some(vec![format!(
                    "submitted to SLURM as job {job_id} (compute environment {env})"
                )]),
                ..Default::default()
            };
            if let Some(logs) = runner::logs_json(log) {
                inner
                    .store
                    .update_logs(&id, TaskState::Initializing, &logs)
                    .await?;
            }
            // A cancel that came while sbatch ran found no job to cancel: do it now.
            let now = inner.store.get_task_for_system(&id).await?;
            if now.is_some_and(|r| r.state == TaskState::Canceled)
                && let Err(e) = executor.cancel(&id, Some(&job_id)).await
            {
                tracing::warn!(task = %id, error = %e, "canceling a job submitted during its cancel");
            }
        }
        Err(e) => {
            untrack(inner, &id);
            let _ = executor.remove(&id);
            fail_task(
                inner,
                &id,
                None,
                format!("could not submit the task to SLURM ({env}): {e}"),
            )
            .await;
        }
    }
    Ok(())
}

/// Where the environment's jobs reach the server.
fn server_url<'a>(inner: &'a Inner, executor: &'a SlurmExecutor) -> &'a str {
    executor
        .settings()
        .server_url
        .as_deref()
        .unwrap_or(&inner.settings.callback_url)
}

fn job_metadata(env: &str, job_id: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("compute_env".to_owned(), env.to_owned()),
        ("slurm_job_id".to_owned(), job_id.to_owned()),
    ]
    .into()
}

fn refused() -> ServiceError {
    ServiceError::Unauthenticated(
        "the bootstrap token is invalid, already used or expired".to_owned(),
    )
}

/// Records a refused bootstrap attempt with the real reason (the caller only learns "refused").
async fn audit_refusal(inner: &Inner, record: Option<&TaskRecord>, id: &str, reason: &str) {
    tracing::warn!(task = %id, %reason, "bootstrap token refused");
    let event = AuditEvent {
        actor: "-".to_owned(),
        action: "task.bootstrap".to_owned(),
        object: format!("task:{id}"),
        workspace: record.map(|r| r.workspace.to_string()),
        source: None,
        result: format!("denied: {reason}"),
        detail: None,
    };
    if let Err(e) = inner.store.record_audit(&event).await {
        tracing::error!(error = %e, "recording a refused bootstrap");
    }
}

/// Exchanges a batch job's one-time bootstrap token for its task and a fresh worker session.
/// The token must be the task's armed one and unused, and SLURM must report the task's job
/// running for less than `bootstrap_ttl`; each refusal is audited with its reason.
pub(crate) async fn bootstrap(
    inner: &Inner,
    id: &str,
    token: &str,
    request: BootstrapRequest,
) -> Result<WorkerTask, ServiceError> {
    use subtle::ConstantTimeEq;
    let Ok(task_id) = TaskId::parse(id) else {
        audit_refusal(inner, None, id, "no such task").await;
        return Err(refused());
    };
    let Some(record) = inner.store.get_task_for_system(&task_id).await? else {
        audit_refusal(inner, None, id, "no such task").await;
        return Err(refused());
    };
    let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let armed = inner.store.task_bootstrap(&task_id).await?;
    let matches = armed
        .as_ref()
        .is_some_and(|stored| bool::from(presented.as_ref().ct_eq(stored.as_slice())));
    if !matches {
        let reason = if record.state.is_terminal() {
            "the task has ended"
        } else if armed.is_none() {
            "the token was already used (replay)"
        } else {
            "the token does not match"
        };
        audit_refusal(inner, Some(&record), id, reason).await;
        return Err(refused());
    }
    let Some(executor) = executor(inner, &record.compute_env) else {
        audit_refusal(inner, Some(&record), id, "the task is not a batch task").await;
        return Err(refused());
    };
    // The job must be this task's, known to SLURM, running, and recently started: a token read
    // from a job script later, or from a job that never ran, is worthless.
    let Some(job_id) = request.job_id.filter(|j| !j.is_empty()) else {
        audit_refusal(inner, Some(&record), id, "no job id was presented").await;
        return Err(refused());
    };
    if record.executor_ref.as_deref().is_some_and(|r| r != job_id) {
        audit_refusal(
            inner,
            Some(&record),
            id,
            &format!("job {job_id} is not the task's job"),
        )
        .await;
        return Err(refused());
    }
    let job = executor
        .job(&job_id)
        .await
        .map_err(|e| ServiceError::Unavailable(anyhow::anyhow!("asking SLURM: {e}")))?;
    let ttl = executor.settings().bootstrap_ttl;
    let reason = match &job {
        None => Some(format!("SLURM does not know job {job_id}")),
        Some(job) if job.task_id.as_ref() != Some(&task_id) => {
            Some(format!("job {job_id} belongs to another task"))
        }
        Some(job) if job.state != "RUNNING" => {
            Some(format!("job {job_id} is {}, not RUNNING", job.state))
        }
        Some(job) if Duration::from_secs(job.elapsed_secs) > ttl => Some(format!(
            "the token expired: job {job_id} started {} s ago (limit {} s)",
            job.elapsed_secs,
            ttl.as_secs()
        )),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        audit_refusal(inner, Some(&record), id, &reason).await;
        return Err(refused());
    }
    // Everything that can fail is done before the token is spent: a worker whose exchange failed
    // after it was spent could never try again.
    let active = runner::active_task(inner, &task_id).await?;
    let spec: TesTask =
        serde_json::from_str(&active.spec_json).map_err(|e| ServiceError::Internal(e.into()))?;
    let declared = runner::declared_secrets(&spec)?;
    let files = runner::task_files(inner, &active).await?;
    let (credential, session_hash) = runner::new_credential()?;
    if !inner
        .store
        .spend_bootstrap(&task_id, presented.as_ref(), &session_hash)
        .await?
    {
        audit_refusal(
            inner,
            Some(&record),
            id,
            "the token was already used (replay)",
        )
        .await;
        return Err(refused());
    }
    let event = AuditEvent {
        actor: record.created_by.to_string(),
        action: "task.bootstrap".to_owned(),
        object: format!("task:{id}"),
        workspace: Some(record.workspace.to_string()),
        source: None,
        result: "ok".to_owned(),
        detail: Some(format!("slurm job {job_id}")),
    };
    inner.store.record_audit(&event).await?;
    if record.executor_ref.is_none() {
        inner.store.set_executor_ref(&task_id, &job_id).await?;
    }
    let mut task = runner::worker_task(
        inner,
        &task_id,
        spec,
        declared,
        credential,
        server_url(inner, executor),
        executor.settings().runtime_dir.clone(),
        files,
    );
    // SLURM holds the job to its memory, cores, disk and time (`--mem`, `--cpus-per-task`,
    // `--tmp`, `--time`); the worker on the node only caps what the task's log keeps.
    task.limits = tresor_executors::TaskLimits {
        log_bytes: task.limits.log_bytes,
        ..tresor_executors::TaskLimits::default()
    };
    Ok(task)
}

/// A batch worker's status report. Returns the task's state as the server now sees it.
pub(crate) async fn report(
    inner: &Inner,
    id: &str,
    credential: &str,
    mut status: WorkerStatus,
) -> Result<TaskState, ServiceError> {
    let id = runner::check_session(inner, id, credential).await?;
    let record = inner
        .store
        .get_task_for_system(&id)
        .await?
        .ok_or_else(|| ServiceError::Unauthenticated("unknown task".to_owned()))?;
    if let Some(job_id) = &record.executor_ref {
        status
            .log
            .metadata
            .get_or_insert_with(Default::default)
            .extend(job_metadata(&record.compute_env, job_id));
    }
    runner::apply_status(inner, &id, &status).await;
    Ok(inner
        .store
        .get_task_for_system(&id)
        .await?
        .map_or(record.state, |r| r.state))
}

/// After CancelTask committed: `scancel` the job. The poll removes it once SLURM reports it
/// ended. A job still being submitted is canceled by the submitter when `sbatch` returns.
pub(crate) async fn cancel_job(inner: &Inner, record: &TaskRecord) {
    let Some(executor) = executor(inner, &record.compute_env) else {
        return;
    };
    let job_id = inner
        .batch_jobs
        .lock()
        .ok()
        .and_then(|jobs| jobs.get(&record.id).and_then(|j| j.job_id.clone()))
        .or_else(|| record.executor_ref.clone());
    if record.state == TaskState::Queued && job_id.is_none() {
        return;
    }
    if let Err(e) = executor.cancel(&record.id, job_id.as_deref()).await {
        tracing::warn!(task = %record.id, error = %e, "scancel failed");
    }
}

/// Runs forever for one environment: one `squeue` per interval settles what ended.
pub(crate) async fn poll_loop(inner: Arc<Inner>, env: String) {
    let Some(executor) = executor(&inner, &env).cloned() else {
        return;
    };
    let interval = executor.settings().poll_interval;
    loop {
        tokio::time::sleep(interval).await;
        let tracked: Vec<(TaskId, BatchJob)> = match inner.batch_jobs.lock() {
            Ok(jobs) => jobs
                .iter()
                .filter(|(_, j)| j.env == env)
                .map(|(id, j)| (id.clone(), j.clone()))
                .collect(),
            Err(_) => continue,
        };
        if tracked.is_empty() {
            continue;
        }
        let jobs = match executor.poll().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(env = %env, error = %e, "polling SLURM failed; retrying");
                continue;
            }
        };
        for (id, tracked) in tracked {
            let job = jobs.get(&id);
            match (job, &tracked.job_id) {
                (Some(job), _) if job.has_ended() => {
                    settle(&inner, &executor, &id, Some(job)).await;
                }
                (Some(job), None) => {
                    // Re-adopted before its id was recorded: found by its name.
                    if let Err(e) = inner.store.set_executor_ref(&id, &job.job_id).await {
                        tracing::warn!(task = %id, error = %e, "recording a found job");
                    }
                    track(
                        &inner,
                        &id,
                        BatchJob {
                            job_id: Some(job.job_id.clone()),
                            missing: 0,
                            ..tracked
                        },
                    );
                }
                (Some(_), Some(_)) => {}
                (None, None) if tracked.missing == u32::MAX => {
                    // Re-adopted, never submitted: it goes back to the queue.
                    requeue(&inner, &id).await;
                }
                (None, None) => {} // sbatch is still running
                (None, Some(_)) if tracked.missing >= 2 => {
                    settle(&inner, &executor, &id, None).await;
                }
                (None, Some(_)) => track(
                    &inner,
                    &id,
                    BatchJob {
                        missing: tracked.missing + 1,
                        ..tracked
                    },
                ),
            }
        }
    }
}

async fn requeue(inner: &Inner, id: &TaskId) {
    tracing::info!(task = %id, "requeued: its job was never submitted");
    untrack(inner, id);
    if let Err(e) = inner.store.transition(id, TaskState::Queued, None).await {
        tracing::error!(task = %id, error = %e, "requeueing a task");
    }
}

/// A job SLURM reports ended (or no longer knows): keeps the worker's final status if there is
/// one, else ends the task with SLURM's reason; then removes its directory.
async fn settle(inner: &Inner, executor: &SlurmExecutor, id: &TaskId, job: Option<&JobInfo>) {
    let record = inner.store.get_task_for_system(id).await.ok().flatten();
    if let Some(record) = record.filter(|r| !r.state.is_terminal()) {
        match executor.read_status(id) {
            Some(status) if status.phase.is_final() => {
                runner::apply_status(inner, id, &status).await;
            }
            last => {
                let messages = executor.slurm_messages(id);
                let limit = job.is_some_and(JobInfo::hit_a_limit)
                    || messages.iter().any(|m| {
                        m.contains("exceeded memory limit") || m.contains("DUE TO TIME LIMIT")
                    });
                // A limit the task's commands ran into is their error; anything else is ours.
                let state = if limit && record.state == TaskState::Running {
                    TaskState::ExecutorError
                } else {
                    TaskState::SystemError
                };
                let mut log = last.map(|s| s.log).or_else(|| {
                    record
                        .logs_json
                        .as_deref()
                        .and_then(|j| serde_json::from_str::<Vec<_>>(j).ok())
                        .and_then(|mut logs| logs.pop())
                });
                if let Some(log) = log.as_mut() {
                    log.system_logs
                        .get_or_insert_with(Vec::new)
                        .extend(messages);
                } else {
                    log = Some(tresor_api_types::tes::TesTaskLog {
                        system_logs: Some(messages),
                        ..Default::default()
                    });
                }
                let reason = match job {
                    Some(job) => format!(
                        "SLURM ended job {} as {} (reason: {}) without a result from the worker",
                        job.job_id, job.state, job.reason
                    ),
                    None => "SLURM no longer knows the task's job, and the worker left no result"
                        .to_owned(),
                };
                end_task(inner, id, log, state, reason).await;
            }
        }
    }
    if let Err(e) = executor.remove(id) {
        tracing::error!(task = %id, error = %e, "removing the task's directory");
    }
    untrack(inner, id);
}

/// After a restart: follow an active batch task again. Its job id is in the store, or (if the
/// server died right after `sbatch`) the poll finds the job by name; a task that was claimed but
/// never submitted goes back to the queue.
pub(crate) async fn adopt(inner: &Arc<Inner>, record: TaskRecord) {
    if !inner.slurm.contains_key(&record.compute_env) {
        fail_task(
            inner,
            &record.id,
            None,
            format!(
                "compute environment {} is no longer configured on this server",
                record.compute_env
            ),
        )
        .await;
        return;
    }
    if record.state == TaskState::Queued {
        return;
    }
    tracing::info!(task = %record.id, job = ?record.executor_ref, "re-adopted a batch job");
    let missing = if record.executor_ref.is_none() {
        // Found by name at the first poll, or requeued.
        u32::MAX
    } else {
        0
    };
    track(
        inner,
        &record.id,
        BatchJob {
            env: record.compute_env.clone(),
            job_id: record.executor_ref.clone(),
            missing,
        },
    );
}

/// Removes task directories in the shared work dirs whose task has ended or is unknown, and
/// cancels any job still running for them (a cancel committed just before a crash).
pub(crate) async fn remove_stray_dirs(inner: &Inner) -> Result<(), ServiceError> {
    for executor in inner.slurm.values() {
        for id in executor.task_dirs() {
            let record = inner.store.get_task_for_system(&id).await?;
            if record.as_ref().is_some_and(|r| !r.state.is_terminal()) {
                continue;
            }
            if let Err(e) = executor
                .cancel(&id, record.and_then(|r| r.executor_ref).as_deref())
                .await
            {
                tracing::warn!(task = %id, error = %e, "canceling a stray job");
            }
            if let Err(e) = executor.remove(&id) {
                tracing::warn!(task = %id, error = %e, "removing a stray task directory");
            }
        }
    }
    Ok(())
}

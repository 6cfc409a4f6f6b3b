//! The loops that run accepted work: the scheduler, one watcher per running task, cancel, and the
//! reconciler that settles what a previous server process left behind.

use std::sync::Arc;
use std::time::Duration;

use tresor_api_types::tes::{TesTask, TesTaskLog};
use tresor_crypto::redact::MIN_SECRET_LEN;
use tresor_domain::{Caller, TaskId, TaskState};
use tresor_executors::PhaseState;
use tresor_executors::limits::{self, Enforcement, LimitSettings, TaskLimits};
use tresor_executors::{
    Attach, IdentityDelivery, SecretDelivery, WorkerExit, WorkerPhase, WorkerSession, WorkerStatus,
    WorkerTask,
};
use tresor_store::TaskRecord;

use super::Inner;
use crate::ServiceError;

/// How often a watcher looks at its worker's `status.json`.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// How long cancel waits for a killed worker to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A task holding scheduler slots.
#[derive(Debug)]
pub(crate) struct Slot {
    cores: u32,
    pid: Option<i32>,
    /// A cancel arrived before the worker's pid was known; the starter kills it once spawned.
    cancel_requested: bool,
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn used_cores(inner: &Inner) -> u32 {
    inner
        .running
        .lock()
        .map(|r| r.values().map(|s| s.cores).sum())
        .unwrap_or(u32::MAX)
}

pub(crate) fn release_slot(inner: &Inner, id: &TaskId) {
    if let Ok(mut running) = inner.running.lock() {
        running.remove(id);
    }
    inner.wake.notify_one();
}

/// Runs forever: starts queued tasks, oldest first, while their cores fit in the free slots.
pub(crate) async fn schedule(inner: Arc<Inner>) {
    loop {
        if let Err(e) = fill_slots(&inner).await {
            tracing::error!(error = %e, "scheduling failed; retrying");
        }
        tokio::select! {
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn fill_slots(inner: &Arc<Inner>) -> Result<(), ServiceError> {
    for env in inner.slurm.keys() {
        super::batch::submit_queued(inner, env).await?;
    }
    let slots = inner.executor.settings().slots;
    loop {
        let free = slots.saturating_sub(used_cores(inner));
        if free == 0 {
            return Ok(());
        }
        // The task's worker session is fixed in the same statement that claims it.
        let (credential, hash) = new_credential()?;
        let Some(record) = inner
            .store
            .claim_next_task(crate::LOCAL_ENV, free, &hash)
            .await?
        else {
            return Ok(());
        };
        if let Ok(mut running) = inner.running.lock() {
            running.insert(
                record.id.clone(),
                Slot {
                    cores: record.cpu_cores,
                    pid: None,
                    cancel_requested: false,
                },
            );
        }
        start_worker(inner, record, credential).await;
    }
}

pub(crate) fn network_requested(spec: &TesTask) -> bool {
    spec.resources
        .as_ref()
        .and_then(|r| r.backend_parameters.as_ref())
        .into_iter()
        .flatten()
        .any(|(k, v)| k.eq_ignore_ascii_case("network") && v.eq_ignore_ascii_case("true"))
}

/// The claimed task's stored document; a document that no longer parses fails the task.
pub(crate) async fn stored_spec(inner: &Inner, record: &TaskRecord) -> Option<TesTask> {
    match serde_json::from_str(&record.spec_json) {
        Ok(spec) => Some(spec),
        Err(e) => {
            fail_task(
                inner,
                &record.id,
                None,
                format!("the stored task does not parse: {e}"),
            )
            .await;
            None
        }
    }
}

async fn start_worker(inner: &Arc<Inner>, record: TaskRecord, credential: String) {
    let id = record.id.clone();
    let Some(spec) = stored_spec(inner, &record).await else {
        release_slot(inner, &id);
        return;
    };
    let declared = match declared_secrets(&spec) {
        Ok(d) => d,
        Err(e) => {
            fail_task(inner, &id, None, e.to_string()).await;
            release_slot(inner, &id);
            return;
        }
    };
    let files = match task_files(inner, &record).await {
        Ok(files) => files,
        Err(e) => {
            fail_task(inner, &id, None, e.to_string()).await;
            release_slot(inner, &id);
            return;
        }
    };
    let settings = inner.executor.settings();
    let worker_task = worker_task(
        inner,
        &id,
        spec,
        declared,
        credential,
        &inner.settings.callback_url,
        settings.runtime_dir.clone(),
        files,
    );
    tracing::debug!(task = %id, "starting worker");
    let (pid, exit) = match inner.executor.start(&id, &worker_task).await {
        Ok(started) => started,
        Err(e) => {
            fail_task(inner, &id, None, format!("could not start the worker: {e}")).await;
            let _ = inner.executor.remove(&id);
            release_slot(inner, &id);
            return;
        }
    };
    let canceled_meanwhile = match inner.running.lock() {
        Ok(mut running) => running.get_mut(&id).is_some_and(|slot| {
            slot.pid = Some(pid);
            slot.cancel_requested
        }),
        Err(_) => false,
    };
    if canceled_meanwhile {
        inner.executor.kill(&id, pid);
    }
    tokio::spawn(watch(inner.clone(), id, exit));
}

/// A task's `file://` storage on the host.
pub(crate) struct TaskFiles {
    /// The directories its worker may read and write: its workspace's file directory alone, so
    /// the worker itself enforces the boundary again after resolving links.
    pub dirs: Vec<std::path::PathBuf>,
    /// The workspace's host group, with which the worker copies files as the task's user; `None`
    /// when tasks get no host users of their own (the server is not root).
    pub group: Option<u32>,
}

/// The task's `file://` storage; its workspace's directory gets its host group first (see
/// `StorageService::prepare_file_root`).
pub(crate) async fn task_files(
    inner: &Inner,
    record: &TaskRecord,
) -> Result<TaskFiles, ServiceError> {
    let Some(root) = inner.storage.file_root(&record.workspace).await? else {
        return Ok(TaskFiles {
            dirs: Vec::new(),
            group: None,
        });
    };
    let group = match &inner.executor.settings().workspace_gids {
        Some(gids) => Some(
            inner
                .storage
                .prepare_file_root(&record.workspace, &root, gids)
                .await?,
        ),
        None => None,
    };
    Ok(TaskFiles {
        dirs: vec![root.dir],
        group,
    })
}

/// Everything a worker needs for a task; `server_url` is where the worker reaches the server,
/// `runtime_dir` the tmpfs, on the machine the worker runs on, for the task's identity directory.
#[allow(clippy::too_many_arguments)]
pub(crate) fn worker_task(
    inner: &Inner,
    id: &TaskId,
    spec: TesTask,
    declared: DeclaredSecrets,
    credential: String,
    server_url: &str,
    runtime_dir: std::path::PathBuf,
    files: TaskFiles,
) -> WorkerTask {
    // Every task gets a session: its identity token is renewed through it while it runs.
    let session = Some(WorkerSession {
        base_url: format!(
            "{}/internal/v1/tasks/{id}",
            server_url.trim_end_matches('/')
        ),
        credential,
    });
    let secrets = (!declared.files.is_empty()).then_some(SecretDelivery {
        files: declared.files,
        env: declared.env,
    });
    let settings = inner.executor.settings();
    let limits = local_limits(&spec, &settings.limits, inner.executor.enforcement());
    WorkerTask {
        limits,
        session,
        secrets,
        identity: Some(IdentityDelivery {
            runtime_dir,
            sdk_env: inner.identity.settings().sdk_env.clone(),
        }),
        task_id: id.to_string(),
        network: network_requested(&spec) && settings.allow_network,
        inputs: spec.inputs.unwrap_or_default(),
        outputs: spec.outputs.unwrap_or_default(),
        executors: spec.executors,
        volumes: spec.volumes.unwrap_or_default(),
        sandbox: settings.sandbox.clone(),
        allowed_dirs: files.dirs,
        file_group: files.group,
        log_tail_bytes: settings.log_tail_bytes,
        allow_private_http_inputs: settings.allow_private_http_inputs,
    }
}

/// A task's limits on the local executor: what it asked for (validation kept it within the
/// server's maxima), else the server's defaults.
pub(crate) fn local_limits(
    spec: &TesTask,
    settings: &LimitSettings,
    enforcement: &Enforcement,
) -> TaskLimits {
    let resources = spec.resources.as_ref();
    let bytes = |gb: f64, least: u64| ((gb * limits::GB) as u64).max(least);
    let time_limit = resources
        .and_then(|r| r.backend_parameters.as_ref())
        .into_iter()
        .flatten()
        .find(|(k, _)| k.eq_ignore_ascii_case(super::batch::TIME_LIMIT))
        .and_then(|(_, v)| tresor_executors::slurm::time_limit_seconds(v))
        .filter(|s| *s > 0);
    TaskLimits {
        memory_bytes: Some(bytes(
            resources
                .and_then(|r| r.ram_gb)
                .unwrap_or(settings.default_ram_gb),
            limits::MIN_MEMORY_BYTES,
        )),
        cpu_cores: Some(
            resources
                .and_then(|r| r.cpu_cores)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(1)
                .max(1),
        ),
        disk_bytes: Some(bytes(
            resources
                .and_then(|r| r.disk_gb)
                .unwrap_or(settings.default_disk_gb),
            limits::MIN_DISK_BYTES,
        )),
        run_seconds: Some(
            time_limit
                .unwrap_or(settings.max_run_seconds)
                .min(settings.max_run_seconds),
        ),
        processes: Some(settings.max_processes),
        log_bytes: Some(settings.max_log_bytes),
        enforcement: enforcement.clone(),
    }
}

/// The tag naming the secrets a task gets as files.
pub(crate) const SECRETS_TAG: &str = "tresor.secrets";
/// The tag naming the secrets a task also gets as environment variables.
pub(crate) const SECRETS_ENV_TAG: &str = "tresor.secrets.env";

/// The secrets a task declared in its tags: `tresor.secrets` as files, `tresor.secrets.env`
/// also as environment variables (and as files).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeclaredSecrets {
    pub files: Vec<String>,
    pub env: Vec<String>,
}

pub(crate) fn declared_secrets(spec: &TesTask) -> Result<DeclaredSecrets, ServiceError> {
    let tags = spec.tags.clone().unwrap_or_default();
    let parse = |tag: &str| -> Result<Vec<String>, ServiceError> {
        let mut names = Vec::new();
        for name in tags
            .get(tag)
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            crate::secrets::check_name(name).map_err(|_| {
                ServiceError::invalid(
                    format!("tags.{tag}"),
                    format!("{name:?} is not a secret name; list names separated by commas"),
                )
            })?;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    };
    let env = parse(SECRETS_ENV_TAG)?;
    let mut files = parse(SECRETS_TAG)?;
    for name in &env {
        if !files.contains(name) {
            files.push(name.clone());
        }
    }
    Ok(DeclaredSecrets { files, env })
}

/// A new worker session credential and the SHA-256 that the store keeps of it.
pub(crate) fn new_credential() -> Result<(String, [u8; 32]), ServiceError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| {
            ServiceError::Internal(anyhow::anyhow!("the system random number generator failed"))
        })?;
    let credential = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(
        ring::digest::digest(&ring::digest::SHA256, credential.as_bytes()).as_ref(),
    );
    Ok((credential, hash))
}

fn refused() -> ServiceError {
    ServiceError::Unauthenticated("the task credential is invalid or the task has ended".to_owned())
}

/// Checks a worker's credential against its task's session, in constant time. The session is in
/// the store, so a worker re-attached after a server restart keeps it; it is cleared when the
/// task ends.
pub(crate) async fn check_session(
    inner: &Inner,
    id: &str,
    credential: &str,
) -> Result<TaskId, ServiceError> {
    use subtle::ConstantTimeEq;
    let id = TaskId::parse(id).map_err(|_| refused())?;
    let presented = ring::digest::digest(&ring::digest::SHA256, credential.as_bytes());
    match inner.store.task_session(&id).await? {
        Some(stored) if bool::from(presented.as_ref().ct_eq(stored.as_slice())) => Ok(id),
        _ => Err(refused()),
    }
}

/// The task a worker's credential belongs to.
pub(crate) async fn authorize_worker(
    inner: &Inner,
    id: &str,
    credential: &str,
) -> Result<TaskId, ServiceError> {
    check_session(inner, id, credential).await
}

/// The task's record, if it has not ended and its submitter may still launch in its workspace:
/// a removed or demoted member's work gets no secrets, tokens or storage URLs.
pub(crate) async fn active_task(inner: &Inner, id: &TaskId) -> Result<TaskRecord, ServiceError> {
    let record = inner
        .store
        .get_task_for_system(id)
        .await?
        .ok_or_else(refused)?;
    if record.state.is_terminal() {
        return Err(refused());
    }
    let role = inner
        .store
        .membership(&record.workspace, &record.created_by)
        .await?;
    if !role
        .is_some_and(|r| tresor_domain::permissions::allows(r, tresor_domain::Action::SubmitTask))
    {
        return Err(ServiceError::Forbidden(
            "the task's submitter may no longer launch in this workspace".to_owned(),
        ));
    }
    Ok(record)
}

/// Hands a starting task its secrets, once: a matching credential is consumed by its first use.
pub(crate) async fn deliver_secrets(
    inner: &Inner,
    id: &str,
    credential: &str,
) -> Result<Vec<(String, tresor_crypto::SecretValue)>, ServiceError> {
    let id = check_session(inner, id, credential).await?;
    let record = active_task(inner, &id).await?;
    if !inner.store.claim_secret_delivery(&id).await? {
        return Err(ServiceError::Conflict(
            "this task's secrets were already delivered; they are handed out once".to_owned(),
        ));
    }
    let spec: TesTask =
        serde_json::from_str(&record.spec_json).map_err(|e| ServiceError::Internal(e.into()))?;
    let declared = declared_secrets(&spec)?;
    let mut resolved = Vec::with_capacity(declared.files.len());
    for name in declared.files {
        let Some((key, version, value)) = inner
            .secrets
            .resolve(&record.workspace, &record.created_by, &name)
            .await?
        else {
            return Err(ServiceError::Conflict(format!(
                "secret {name} no longer exists"
            )));
        };
        // Values this short were accepted before the minimum existed; the redactor no longer
        // hides them, so a task could print one in plain sight. The message names the secret,
        // never the value.
        if value.len() < MIN_SECRET_LEN {
            return Err(ServiceError::Conflict(format!(
                "the {} secret {name} is shorter than {MIN_SECRET_LEN} bytes, so task logs could not hide it; set a value of at least {MIN_SECRET_LEN} bytes and submit the task again",
                key.scope()
            )));
        }
        resolved.push((name, key, version, value));
    }
    let uses: Vec<_> = resolved
        .iter()
        .map(|(_, key, version, value)| (key.clone(), *version, value))
        .collect();
    inner
        .secrets
        .record_deliveries(&uses, id.as_str(), record.created_by.as_str())
        .await?;
    let delivered: Vec<_> = resolved
        .into_iter()
        .map(|(name, _, _, value)| (name, value))
        .collect();
    Ok(delivered)
}

/// Follows one worker: mirrors its status into the store while it runs, settles the task when it ends.
async fn watch(inner: Arc<Inner>, id: TaskId, exit: WorkerExit) {
    let mut last: Option<WorkerStatus> = None;
    let exit = exit.wait();
    tokio::pin!(exit);
    tracing::debug!(task = %id, "worker started");
    let how = loop {
        tokio::select! {
            how = &mut exit => break how,
            () = tokio::time::sleep(STATUS_POLL) => {
                if let Some(status) = inner.executor.read_status(&id)
                    && last.as_ref() != Some(&status)
                {
                    apply_status(&inner, &id, &status).await;
                    last = Some(status);
                }
            }
        }
    };
    tracing::debug!(task = %id, "worker exited");
    settle(&inner, &id, &how).await;
    tracing::debug!(task = %id, "task settled");
    release_slot(&inner, &id);
}

/// Records the worker's final status (or its absence), then removes the task's directory.
async fn settle(inner: &Arc<Inner>, id: &TaskId, how: &str) {
    match inner.executor.read_status(id) {
        Some(status) if status.phase.is_final() => apply_status(inner, id, &status).await,
        other => {
            let log = other.map(|s| s.log);
            fail_task(
                inner,
                id,
                log,
                format!("the worker ended without reporting a result: {how}"),
            )
            .await;
        }
    }
    if let Err(e) = inner.executor.remove(id) {
        tracing::error!(task = %id, error = %e, "removing the task directory");
    }
}

pub(crate) fn logs_json(log: TesTaskLog) -> Option<String> {
    serde_json::to_string(&vec![log]).ok()
}

pub(crate) async fn apply_status(inner: &Inner, id: &TaskId, status: &WorkerStatus) {
    let state = status.phase.task_state();
    let Some(logs) = logs_json(status.log.clone()) else {
        return;
    };
    // A move to a new state is the common case and needs one conditional update; progress
    // within the current state falls through to a logs-only update.
    let result = match inner.store.transition(id, state, Some(&logs)).await {
        Ok(true) => Ok(true),
        Ok(false) if !state.is_terminal() => inner.store.update_logs(id, state, &logs).await,
        other => other,
    };
    if let Err(e) = result {
        tracing::error!(task = %id, error = %e, "recording worker status");
    }
}

/// Ends a task as SYSTEM_ERROR with `reason` in its system logs (unless it already ended).
pub(crate) async fn fail_task(inner: &Inner, id: &TaskId, log: Option<TesTaskLog>, reason: String) {
    end_task(inner, id, log, TaskState::SystemError, reason).await;
}

/// Ends a task in `state` with `reason` in its system logs (unless it already ended).
pub(crate) async fn end_task(
    inner: &Inner,
    id: &TaskId,
    log: Option<TesTaskLog>,
    state: TaskState,
    reason: String,
) {
    tracing::warn!(task = %id, %reason, "task failed");
    let mut log = log.unwrap_or_default();
    log.system_logs.get_or_insert_with(Vec::new).push(reason);
    log.end_time = Some(now());
    if let Some(logs) = logs_json(log)
        && let Err(e) = inner.store.transition(id, state, Some(&logs)).await
    {
        tracing::error!(task = %id, error = %e, "recording a task failure");
    }
}

/// CancelTask: the state change is committed first, then the worker's process group is killed.
pub(crate) async fn cancel(
    inner: &Inner,
    caller: &Caller,
    record: TaskRecord,
) -> Result<(), ServiceError> {
    let id = record.id.clone();
    if record.state == TaskState::Canceled {
        return Ok(());
    }
    let conflict = |state: TaskState| {
        ServiceError::Conflict(format!(
            "task {id} is already {}; only QUEUED, INITIALIZING or RUNNING tasks can be canceled",
            state.as_str()
        ))
    };
    if record.state.is_terminal() {
        return Err(conflict(record.state));
    }
    let mut logs: Vec<TesTaskLog> = record
        .logs_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    if logs.is_empty() {
        logs.push(TesTaskLog::default());
    }
    if let Some(last) = logs.last_mut() {
        last.system_logs.get_or_insert_with(Vec::new).push(format!(
            "canceled by request in state {}",
            record.state.as_str()
        ));
        last.end_time = Some(now());
    }
    let logs = serde_json::to_string(&logs).map_err(|e| ServiceError::Internal(e.into()))?;
    let audit = crate::platform::caller_event(caller, "task.cancel", format!("task:{id}"));
    if !inner.store.cancel_task(&id, &logs, &audit).await? {
        // It moved meanwhile: report what it became.
        let now = inner
            .store
            .get_task_for_system(&id)
            .await?
            .map(|r| r.state)
            .unwrap_or(TaskState::Canceled);
        return if now == TaskState::Canceled {
            Ok(())
        } else {
            Err(conflict(now))
        };
    }
    if record.compute_env != crate::LOCAL_ENV {
        super::batch::cancel_job(inner, &record).await;
        return Ok(());
    }
    // The pid is known unless the scheduler is still starting the worker; then it is asked to
    // kill the worker as soon as it has one.
    let pid = match inner.running.lock() {
        Ok(mut running) => match running.get_mut(&id) {
            Some(slot) if slot.pid.is_none() => {
                slot.cancel_requested = true;
                None
            }
            Some(slot) => slot.pid,
            None => None,
        },
        Err(_) => None,
    };
    if let Some(pid) = pid {
        kill_and_wait(inner, &id, pid).await;
    }
    Ok(())
}

/// Kills a worker's process group and waits (bounded) until its lock is free.
async fn kill_and_wait(inner: &Inner, id: &TaskId, pid: i32) {
    inner.executor.kill(id, pid);
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    while inner.executor.is_running(id) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Settles tasks a previous server process left active, and task directories nobody owns.
pub(crate) async fn reconcile(inner: &Arc<Inner>) -> Result<(), ServiceError> {
    let active = inner
        .store
        .tasks_in_states(&TaskState::ACTIVE, u32::MAX)
        .await?;
    for record in active {
        if record.compute_env != crate::LOCAL_ENV {
            super::batch::adopt(inner, record).await;
            continue;
        }
        let id = record.id.clone();
        let attach = inner
            .executor
            .attach(&id)
            .map_err(|e| ServiceError::Unavailable(e.into()))?;
        match attach {
            Attach::Alive(exit) => {
                tracing::info!(task = %id, "re-attached to a running worker");
                if let Ok(mut running) = inner.running.lock() {
                    running.insert(
                        id.clone(),
                        Slot {
                            cores: record.cpu_cores,
                            pid: inner.executor.worker_pid(&id),
                            cancel_requested: false,
                        },
                    );
                }
                tokio::spawn(watch(inner.clone(), id, exit));
            }
            Attach::Gone => settle_orphan(inner, &record).await?,
        }
    }
    remove_stray_dirs(inner).await?;
    super::batch::remove_stray_dirs(inner).await
}

/// A task whose worker is gone: keep its result, requeue it if it provably never ran, or fail it.
async fn settle_orphan(inner: &Inner, record: &TaskRecord) -> Result<(), ServiceError> {
    let id = &record.id;
    match inner.executor.read_status(id) {
        Some(status) if status.phase.is_final() => {
            tracing::info!(task = %id, "collected a result the worker left while the server was down");
            apply_status(inner, id, &status).await;
        }
        Some(status) if status.phase == WorkerPhase::Running => {
            fail_task(
                inner,
                id,
                Some(status.log),
                "the worker stopped while the server was down, after its executors had started"
                    .to_owned(),
            )
            .await;
        }
        _ if record.state == TaskState::Initializing => {
            tracing::info!(task = %id, "requeued: its worker never started an executor");
            inner.store.transition(id, TaskState::Queued, None).await?;
        }
        other => {
            fail_task(
                inner,
                id,
                other.map(|s| s.log),
                "the worker was gone after a server restart and left no result".to_owned(),
            )
            .await;
        }
    }
    inner
        .executor
        .remove(id)
        .map_err(|e| ServiceError::Unavailable(e.into()))
}

/// Removes task directories whose task is over or unknown, killing any worker still in them
/// (for example one whose cancel was committed just before the server died).
async fn remove_stray_dirs(inner: &Inner) -> Result<(), ServiceError> {
    let root = inner.executor.settings().work_root.clone();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| TaskId::parse(n).ok())
        else {
            continue;
        };
        let record = inner.store.get_task_for_system(&id).await?;
        if record.as_ref().is_some_and(|r| !r.state.is_terminal()) {
            continue;
        }
        if let Some(pid) = inner.executor.worker_pid(&id) {
            kill_and_wait(inner, &id, pid).await;
        }
        if let Err(e) = inner.executor.remove(&id) {
            tracing::warn!(task = %id, error = %e, "removing a stray task directory");
        }
    }
    Ok(())
}

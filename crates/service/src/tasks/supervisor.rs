//! The supervisor: the one owner of every task's state machine, whatever its backend.
//!
//! ```text
//!   QUEUED --claim--> INITIALIZING --report--> RUNNING --report--> COMPLETE | EXECUTOR_ERROR
//!     ^                   |    \                  |                | SYSTEM_ERROR
//!     '--requeue (never   |     '--cancel--> CANCELED <--cancel---'
//!        started)         '--end without a result--> SYSTEM_ERROR
//! ```
//!
//! - **Claim.** One statement moves the oldest queued task that fits the backend's free capacity
//!   to INITIALIZING and records this process as its owner, with a lease.
//! - **Start.** The backend submits the task's worker, with its assignment in hand or with a
//!   one-time bootstrap token. A task canceled while it was being submitted is stopped at once.
//! - **Status.** Workers report over HTTP ([`Supervisor::apply_report`]); every move is a
//!   conditional update of the store, so a report never revives an ended task.
//! - **End.** When the backend says the work is over (an event, or a poll), the task keeps the
//!   result its worker reported; if none arrived, the status file the worker left is read; if
//!   there is none, the task fails with the backend's reason. Then the backend cleans up.
//! - **Leases.** Each process renews the leases of the tasks it owns. A process takes over an
//!   active task whose owner's lease lapsed (or whose owner is a dead process on this host) with
//!   a compare-and-swap on the owner, then adopts its work, so no task is run twice.

use crate::images::ImageService;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tresor_api_types::tes::TesTaskLog;
use tresor_domain::{TaskId, TaskState};
use tresor_executors::{
    BackendEvent, CapacityUnit, ComputeBackend, Events, HandOff, IdentityDelivery, Launch,
    Observation, PhaseState, RunDelivery, SandboxSettings, SecretDelivery, Start, WorkerPhase,
    WorkerSession, WorkerStatus, WorkerTask,
};
use tresor_store::{Lease, Store, TaskRecord};

use crate::ServiceError;
use crate::storage::StorageService;

/// How the supervisor runs: its lease and what every worker gets.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// How long a claim holds without renewal; renewed every third of it.
    pub lease: Duration,
    /// The server's own URL as workers reach it.
    pub callback_url: String,
    /// What every worker gets from the server's local settings.
    pub worker: WorkerDefaults,
    /// Host gids of the workspaces' `file://` groups; `None` when the server is not root.
    pub workspace_gids: Option<std::ops::RangeInclusive<u32>>,
}

/// The parts of a worker's assignment that are the same for every task.
#[derive(Debug, Clone)]
pub struct WorkerDefaults {
    pub sandbox: SandboxSettings,
    pub log_tail_bytes: usize,
    pub max_log_bytes: usize,
    pub allow_private_http_inputs: bool,
    pub allow_network: bool,
    pub allow_egress: bool,
    pub allow_private_egress: bool,
    /// Variables set to the task's identity token file (`AWS_WEB_IDENTITY_TOKEN_FILE`, …).
    pub sdk_env: Vec<String>,
}

/// A task this process runs: what it holds of its backend's capacity and what is known of its
/// work.
#[derive(Debug, Clone)]
struct Tracked {
    env: String,
    cost: u32,
    /// The backend's handle, once known.
    handle: Option<String>,
    /// The backend is still submitting it: a poll that does not find it means nothing yet.
    submitting: bool,
    /// Adopted without a handle: if the backend does not know it, it was never submitted.
    adopted_unsubmitted: bool,
    /// Polls in a row that did not find it.
    missing: u32,
}

/// Owns every task's lifecycle; see the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    store: Store,
    storage: StorageService,
    images: ImageService,
    backends: BTreeMap<String, Arc<dyn ComputeBackend>>,
    settings: SupervisorSettings,
    metrics: crate::Metrics,
    /// This process's id as a task owner: `host:pid:nonce`.
    owner: String,
    wake: Notify,
    events: Events,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<BackendEvent>>>,
    tracked: Mutex<HashMap<TaskId, Tracked>>,
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A finished worker's log lines, into this process's log (and its redactor) under the target
/// `tresor::worker`: lines that report a warning or an error at WARN, the others at INFO.
fn relay_worker_log(id: &TaskId, log: &str) {
    for line in log.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let serious = ["ERROR", "WARN", "slurmstepd"]
            .iter()
            .any(|word| line.contains(word));
        // The worker's line as a field of the server's, never as its message format.
        if serious {
            tracing::warn!(target: "tresor::worker", task = %id, line, "worker");
        } else {
            tracing::info!(target: "tresor::worker", task = %id, line, "worker");
        }
    }
}

/// From a task log's start to its end, when it has both.
fn run_time(log: &TesTaskLog) -> Option<std::time::Duration> {
    let parse = |t: &Option<String>| {
        t.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let run = parse(&log.end_time)? - parse(&log.start_time)?;
    run.try_into().ok()
}

pub(crate) fn logs_json(log: TesTaskLog) -> Option<String> {
    serde_json::to_string(&vec![log]).ok()
}

/// Where this process's pids mean something: the host's name, its boot, and the pid namespace.
/// Another owner's pid is checked only when its place is the same; replicas in other pid
/// namespaces (containers sharing a host name) or before a reboot wait for their leases.
pub(crate) fn pid_place() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    let host = read("/proc/sys/kernel/hostname").unwrap_or_default();
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    format!("{host}@{boot}@{namespace}")
}

/// A new random credential (worker session or bootstrap token) and the SHA-256 the store keeps.
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

impl Supervisor {
    pub fn new(
        store: Store,
        storage: StorageService,
        images: ImageService,
        backends: Vec<Arc<dyn ComputeBackend>>,
        settings: SupervisorSettings,
        metrics: crate::Metrics,
    ) -> Arc<Supervisor> {
        let (events, receiver) = mpsc::unbounded_channel();
        let owner = format!(
            "{}:{}:{}",
            pid_place(),
            std::process::id(),
            // The random tail of a v7 uuid: two processes that reuse a pid differ.
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        );
        Arc::new(Supervisor {
            store,
            storage,
            images,
            backends: backends
                .into_iter()
                .map(|b| (b.env().id.clone(), b))
                .collect(),
            settings,
            metrics,
            owner,
            wake: Notify::new(),
            events,
            receiver: Mutex::new(Some(receiver)),
            tracked: Mutex::new(HashMap::new()),
        })
    }

    /// This process's id as a task owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub(crate) fn storage(&self) -> &StorageService {
        &self.storage
    }

    pub fn backend(&self, env: &str) -> Option<&Arc<dyn ComputeBackend>> {
        self.backends.get(env)
    }

    pub fn backends(&self) -> impl Iterator<Item = &Arc<dyn ComputeBackend>> {
        self.backends.values()
    }

    /// A task was queued: look for work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lease(&self) -> Lease {
        Lease {
            owner: self.owner.clone(),
            until_ms: now_ms()
                .saturating_add(i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Takes over what a previous process left (tasks whose lease lapsed, leftovers of ended
    /// tasks), then starts the loops: scheduling, backend events, polls and lease renewal.
    pub async fn start(self: &Arc<Self>) -> Result<(), ServiceError> {
        self.take_over_lapsed().await?;
        self.remove_leftovers().await?;
        let receiver = self.receiver.lock().ok().and_then(|mut r| r.take());
        if let Some(mut receiver) = receiver {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    me.handle_event(event).await;
                }
            });
        }
        for (env, backend) in &self.backends {
            if let Some(interval) = backend.capabilities().poll_interval {
                tokio::spawn(self.clone().poll_loop(env.clone(), interval));
            }
        }
        tokio::spawn(self.clone().lease_loop());
        tokio::spawn(self.clone().schedule_loop());
        Ok(())
    }

    async fn schedule_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.fill().await {
                tracing::error!(error = %e, "scheduling failed; retrying");
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Renews this process's leases and takes over tasks whose owner's lease lapsed.
    async fn lease_loop(self: Arc<Self>) {
        let period = self.settings.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = self.store.renew_leases(&self.lease()).await {
                tracing::error!(error = %e, "renewing task leases");
            }
            if let Err(e) = self.take_over_lapsed().await {
                tracing::error!(error = %e, "taking over tasks with lapsed leases");
            }
        }
    }

    async fn poll_loop(self: Arc<Self>, env: String, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.poll(&env).await {
                tracing::warn!(env = %env, error = %e, "polling the compute environment failed; retrying");
            }
        }
    }

    fn used(&self, env: &str) -> u32 {
        self.tracked.lock().map_or(u32::MAX, |t| {
            t.values()
                .filter(|t| t.env == env)
                .map(|t| t.cost)
                .fold(0u32, u32::saturating_add)
        })
    }

    fn track(&self, id: &TaskId, tracked: Tracked) {
        if let Ok(mut t) = self.tracked.lock() {
            t.insert(id.clone(), tracked);
        }
    }

    fn update<F: FnOnce(&mut Tracked)>(&self, id: &TaskId, f: F) {
        if let Ok(mut t) = self.tracked.lock()
            && let Some(tracked) = t.get_mut(id)
        {
            f(tracked);
        }
    }

    fn untrack(&self, id: &TaskId) {
        if let Ok(mut t) = self.tracked.lock() {
            t.remove(id);
        }
        self.wake.notify_one();
    }

    fn tracked(&self, id: &TaskId) -> Option<Tracked> {
        self.tracked.lock().ok().and_then(|t| t.get(id).cloned())
    }

    /// Whether this process runs the task.
    pub fn runs(&self, id: &TaskId) -> bool {
        self.tracked(id).is_some()
    }

    /// Claims and starts queued tasks, oldest first, while they fit each backend's free capacity.
    pub(crate) async fn fill(&self) -> Result<(), ServiceError> {
        for (env, backend) in &self.backends {
            let caps = backend.capabilities();
            loop {
                let free = caps.capacity.saturating_sub(self.used(env));
                if free == 0 {
                    break;
                }
                let max_cores = match caps.capacity_unit {
                    CapacityUnit::Cores => free,
                    CapacityUnit::Tasks => u32::MAX,
                };
                // The worker session is fixed in the same statement that claims the task; a
                // bootstrap hand-off installs one nobody holds, replaced when the token is spent.
                let (credential, hash) = new_credential()?;
                let Some(record) = self
                    .store
                    .claim_next_task(env, max_cores, &hash, &self.lease())
                    .await?
                else {
                    break;
                };
                let cost = capacity_cost(caps.capacity_unit, &record);
                self.track(
                    &record.id,
                    Tracked {
                        env: env.clone(),
                        cost,
                        handle: None,
                        submitting: true,
                        adopted_unsubmitted: false,
                        missing: 0,
                    },
                );
                if !self.start_task(backend.as_ref(), record, credential).await {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The task's `file://` storage: its workspace's directory alone, with the workspace's group.
    pub(crate) async fn task_files(
        &self,
        record: &TaskRecord,
    ) -> Result<(Vec<std::path::PathBuf>, Option<u32>), ServiceError> {
        Ok(match self.workspace_files(&record.workspace).await? {
            Some((dir, group)) => (vec![dir], group),
            None => (Vec::new(), None),
        })
    }

    /// A workspace's `file://` directory, made ready (with its group, when the server is root).
    pub(crate) async fn workspace_files(
        &self,
        workspace: &tresor_domain::WorkspaceId,
    ) -> Result<Option<(std::path::PathBuf, Option<u32>)>, ServiceError> {
        let Some(root) = self.storage.file_root(workspace).await? else {
            return Ok(None);
        };
        let group = match &self.settings.workspace_gids {
            Some(gids) => Some(
                self.storage
                    .prepare_file_root(workspace, &root, gids)
                    .await?,
            ),
            None => None,
        };
        Ok(Some((root.dir, group)))
    }

    /// Everything a worker needs for a task on `backend`.
    pub(crate) async fn assignment(
        &self,
        backend: &dyn ComputeBackend,
        record: &TaskRecord,
        credential: String,
    ) -> Result<WorkerTask, ServiceError> {
        let (allowed_dirs, file_group) = self.task_files(record).await?;
        let spec = &record.spec;
        let caps = backend.capabilities();
        let server_url = caps
            .server_url
            .as_deref()
            .unwrap_or(&self.settings.callback_url);
        let defaults = &self.settings.worker;
        let mut limits = backend.worker_limits(spec);
        limits.log_bytes = limits.log_bytes.or(Some(defaults.max_log_bytes));
        let images = self.images.delivery(record, &caps.image_cache).await?;
        let network = spec.resources.network && defaults.allow_network;
        // Read at each start: a changed allowlist holds for every task started after it, and
        // an operator's turning egress off holds at once.
        let egress = if network || !defaults.allow_egress {
            Vec::new()
        } else {
            self.store.workspace_egress(&record.workspace).await?
        };
        Ok(WorkerTask {
            task_id: record.id.to_string(),
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.clone(),
            executors: spec.executors.clone(),
            volumes: spec.volumes.clone(),
            network,
            sandbox: defaults.sandbox.clone(),
            allowed_dirs,
            file_group,
            log_tail_bytes: defaults.log_tail_bytes,
            allow_private_http_inputs: defaults.allow_private_http_inputs,
            // Every task gets a session: its identity token is renewed through it while it runs.
            session: Some(WorkerSession {
                base_url: format!(
                    "{}/internal/v1/tasks/{}",
                    server_url.trim_end_matches('/'),
                    record.id
                ),
                credential,
            }),
            secrets: (!spec.secrets.is_empty()).then(|| SecretDelivery {
                files: spec.secrets.files.clone(),
                env: spec.secrets.env.clone(),
            }),
            identity: Some(IdentityDelivery {
                runtime_dir: caps.runtime_dir.clone(),
                sdk_env: defaults.sdk_env.clone(),
            }),
            limits,
            images,
            run: spec.run.as_ref().map(|run| RunDelivery {
                dir: run.dir.clone().into(),
                engine: run.role == tresor_domain::RunRole::Engine,
            }),
            egress,
            egress_private: defaults.allow_private_egress,
            request_id: spec.request_id.clone(),
        })
    }

    /// Starts a claimed task's work. Returns false if the task went back to the queue (a
    /// dependency or every host id was unavailable), so the caller stops filling this backend
    /// for the round instead of claiming the same task again at once.
    async fn start_task(
        &self,
        backend: &dyn ComputeBackend,
        record: TaskRecord,
        credential: String,
    ) -> bool {
        let id = record.id.clone();
        let env = backend.env().id.clone();
        tracing::info!(task = %id, env = %env, owner = %self.owner, "starting the task's work");
        let result = async {
            match backend.capabilities().hand_off {
                HandOff::Direct => {
                    let assignment = self.assignment(backend, &record, credential).await?;
                    let launch = Launch {
                        id: &id,
                        spec: &record.spec,
                        start: Start::Direct(&assignment),
                    };
                    Ok::<_, ServiceError>(Some(backend.submit(launch, &self.events).await))
                }
                HandOff::Bootstrap => {
                    let (token, hash) = new_credential()?;
                    let token = zeroize::Zeroizing::new(token);
                    if !self.store.set_bootstrap(&id, &hash).await? {
                        // Canceled between the claim and now.
                        return Ok(None);
                    }
                    let server_url = backend
                        .capabilities()
                        .server_url
                        .clone()
                        .unwrap_or_else(|| self.settings.callback_url.clone());
                    let launch = Launch {
                        id: &id,
                        spec: &record.spec,
                        start: Start::Bootstrap {
                            server_url: &server_url,
                            token: &token,
                        },
                    };
                    Ok(Some(backend.submit(launch, &self.events).await))
                }
            }
        }
        .await;
        let submitted = match result {
            Ok(Some(Ok(submitted))) => submitted,
            Ok(None) => {
                self.untrack(&id);
                return true;
            }
            Ok(Some(Err(e @ tresor_executors::Error::NoFreeId { .. }))) => {
                // Every host id is held, by this process or another on the host: it waits.
                tracing::warn!(task = %id, error = %e, "no host id free; requeued");
                if let Err(e) = backend.clean_up(&id) {
                    tracing::warn!(task = %id, error = %e, "cleaning up before a requeue");
                }
                self.requeue(&id, "every host id was held").await;
                return false;
            }
            Ok(Some(Err(e))) => {
                let reason = format!("could not start the task on compute environment {env}: {e}");
                self.fail(&id, None, reason).await;
                self.clean_up(backend, &id);
                return true;
            }
            Err(ServiceError::Unavailable(cause)) => {
                // Nothing of the task has started: it waits for the next round instead of
                // failing for a dependency's moment of trouble.
                tracing::warn!(task = %id, error = ?cause, "could not prepare the task; requeued");
                if let Err(e) = backend.clean_up(&id) {
                    tracing::warn!(task = %id, error = %e, "cleaning up before a requeue");
                }
                self.requeue(&id, "a dependency was unavailable").await;
                return false;
            }
            Err(e) => {
                tracing::error!(task = %id, error = ?e, "could not prepare the task");
                self.fail(&id, None, format!("could not prepare the task: {e}"))
                    .await;
                self.clean_up(backend, &id);
                return true;
            }
        };
        let waited = time::OffsetDateTime::now_utc() - record.creation_time;
        self.metrics
            .observe_queue_wait(waited.try_into().unwrap_or_default());
        self.update(&id, |t| {
            t.submitting = false;
            t.handle.clone_from(&submitted.handle);
        });
        if let Some(handle) = &submitted.handle {
            tracing::info!(task = %id, handle = %handle, env = %env, "submitted");
            if let Err(e) = self.store.set_executor_ref(&id, handle).await {
                tracing::error!(task = %id, error = %e, "recording the task's handle");
            }
            if let Some(key) = backend.capabilities().handle_key {
                let log = TesTaskLog {
                    metadata: Some(handle_metadata(&env, key, handle)),
                    system_logs: Some(vec![format!(
                        "submitted to compute environment {env} as {handle}"
                    )]),
                    ..Default::default()
                };
                if let Some(logs) = logs_json(log)
                    && let Err(e) = self
                        .store
                        .update_logs(&id, TaskState::Initializing, &logs)
                        .await
                {
                    tracing::error!(task = %id, error = %e, "recording the submission");
                }
            }
        }
        // A cancel committed while the backend submitted found no work to stop: stop it now.
        let now = self.store.get_task_for_system(&id).await.ok().flatten();
        if now.is_some_and(|r| r.state == TaskState::Canceled)
            && let Err(e) = backend.cancel(&id, submitted.handle.as_deref()).await
        {
            tracing::warn!(task = %id, error = %e, "stopping a task canceled while it was submitted");
        }
        true
    }

    /// A worker's status report. Moves the task to the reported state (or records progress
    /// within it); a report never moves an ended task.
    pub async fn apply_report(&self, record: &TaskRecord, mut status: WorkerStatus) {
        if let (Some(handle), Some(backend)) =
            (&record.executor_ref, self.backends.get(&record.compute_env))
            && let Some(key) = backend.capabilities().handle_key
        {
            status
                .log
                .metadata
                .get_or_insert_with(Default::default)
                .extend(handle_metadata(&record.compute_env, key, handle));
        }
        self.apply_status(&record.id, &status).await;
    }

    async fn apply_status(&self, id: &TaskId, status: &WorkerStatus) {
        let state = status.phase.task_state();
        let Some(logs) = logs_json(status.log.clone()) else {
            return;
        };
        // A move to a new state is the common case and needs one conditional update; progress
        // within the current state falls through to a logs-only update.
        let result = match self.store.transition(id, state, Some(&logs)).await {
            Ok(true) => {
                if state.is_terminal()
                    && let Some(run) = run_time(&status.log)
                {
                    self.metrics.observe_run_time(state, run);
                }
                Ok(true)
            }
            Ok(false) if !state.is_terminal() => self.store.update_logs(id, state, &logs).await,
            other => other,
        };
        if let Err(e) = result {
            tracing::error!(task = %id, error = %e, "recording a worker's status");
        }
    }

    /// Ends a task as SYSTEM_ERROR with `reason` in its system logs (unless it already ended).
    pub(crate) async fn fail(&self, id: &TaskId, log: Option<TesTaskLog>, reason: String) {
        self.end(id, log, TaskState::SystemError, reason).await;
    }

    async fn end(&self, id: &TaskId, log: Option<TesTaskLog>, state: TaskState, reason: String) {
        tracing::warn!(task = %id, %reason, "task failed");
        let mut log = log.unwrap_or_default();
        log.system_logs.get_or_insert_with(Vec::new).push(reason);
        log.end_time = Some(now());
        if let Some(logs) = logs_json(log)
            && let Err(e) = self.store.transition(id, state, Some(&logs)).await
        {
            tracing::error!(task = %id, error = %e, "recording a task's end");
        }
    }

    fn clean_up(&self, backend: &dyn ComputeBackend, id: &TaskId) {
        if let Some(log) = backend.worker_log(id) {
            relay_worker_log(id, &log);
        }
        if let Err(e) = backend.clean_up(id) {
            tracing::error!(task = %id, error = %e, "cleaning up after a task");
        }
        self.untrack(id);
    }

    pub(crate) async fn handle_event(&self, event: BackendEvent) {
        match event {
            BackendEvent::Ended { id, how } => {
                let Some(tracked) = self.tracked(&id) else {
                    return;
                };
                let Some(backend) = self.backends.get(&tracked.env).cloned() else {
                    return;
                };
                let ended = Observation::Ended {
                    how: format!("the worker ended without reporting a result: {how}"),
                    hit_limit: false,
                    messages: Vec::new(),
                };
                self.settle(backend.as_ref(), &id, &ended).await;
            }
        }
    }

    /// The task's work is over: keep the result its worker reported, else the one it left in its
    /// status file, else end the task with the backend's reason; then clean up.
    async fn settle(&self, backend: &dyn ComputeBackend, id: &TaskId, seen: &Observation) {
        let record = self.store.get_task_for_system(id).await.ok().flatten();
        if let Some(record) = &record
            && !record.state.is_terminal()
            && record.owner.as_deref() != Some(self.owner.as_str())
        {
            // Another process took the task over (this one's lease lapsed): it is that
            // process's to settle, and what this one knew of its work is stale.
            tracing::warn!(task = %id, owner = ?record.owner, "the task was taken over; leaving it");
            self.untrack(id);
            return;
        }
        if let Some(record) = record.filter(|r| !r.state.is_terminal()) {
            match backend.last_status(id) {
                Some(status) if status.phase.is_final() => {
                    tracing::info!(task = %id, "recovered the result its worker left");
                    self.apply_report(&record, status).await;
                }
                last => {
                    let (how, hit_limit, messages) = match seen {
                        Observation::Ended {
                            how,
                            hit_limit,
                            messages,
                        } => (how.clone(), *hit_limit, messages.clone()),
                        _ => (
                            "the compute environment no longer knows the task's work, and its worker left no result"
                                .to_owned(),
                            false,
                            Vec::new(),
                        ),
                    };
                    // A limit the task's commands ran into is their error; anything else is ours.
                    let state = if hit_limit && record.state == TaskState::Running {
                        TaskState::ExecutorError
                    } else {
                        TaskState::SystemError
                    };
                    let mut log = last.map(|s| s.log).or_else(|| {
                        record
                            .logs_json
                            .as_deref()
                            .and_then(|j| serde_json::from_str::<Vec<TesTaskLog>>(j).ok())
                            .and_then(|mut logs| logs.pop())
                    });
                    if !messages.is_empty() {
                        log.get_or_insert_with(TesTaskLog::default)
                            .system_logs
                            .get_or_insert_with(Vec::new)
                            .extend(messages);
                    }
                    self.end(id, log, state, how).await;
                }
            }
        }
        self.clean_up(backend, id);
    }

    /// One poll of a backend that does not send events: settles what ended.
    pub(crate) async fn poll(&self, env: &str) -> Result<(), ServiceError> {
        let Some(backend) = self.backends.get(env).cloned() else {
            return Ok(());
        };
        let tracked: Vec<(TaskId, Tracked)> = match self.tracked.lock() {
            Ok(t) => t
                .iter()
                .filter(|(_, t)| t.env == env)
                .map(|(id, t)| (id.clone(), t.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        if tracked.is_empty() {
            return Ok(());
        }
        let asked: Vec<(TaskId, Option<String>)> = tracked
            .iter()
            .map(|(id, t)| (id.clone(), t.handle.clone()))
            .collect();
        let polled = std::time::Instant::now();
        let seen = backend.observe(&asked).await;
        self.metrics.observe_poll(env, polled.elapsed());
        let seen = seen.map_err(|e| ServiceError::Unavailable(e.into()))?;
        for (id, tracked) in tracked {
            match seen.get(&id).unwrap_or(&Observation::Unknown) {
                ended @ Observation::Ended { .. } => {
                    self.settle(backend.as_ref(), &id, ended).await
                }
                Observation::Active { handle } => {
                    if tracked.handle.is_none()
                        && let Some(handle) = handle
                    {
                        // Adopted before its handle was recorded: found by its name.
                        if let Err(e) = self.store.set_executor_ref(&id, handle).await {
                            tracing::warn!(task = %id, error = %e, "recording a found handle");
                        }
                    }
                    self.update(&id, |t| {
                        t.handle = t.handle.take().or_else(|| handle.clone());
                        t.missing = 0;
                        t.adopted_unsubmitted = false;
                    });
                }
                Observation::Unknown if tracked.submitting => {}
                Observation::Unknown if tracked.adopted_unsubmitted => {
                    self.requeue(&id, "its work was never submitted").await;
                }
                Observation::Unknown if tracked.missing >= 2 => {
                    self.settle(backend.as_ref(), &id, &Observation::Unknown)
                        .await;
                }
                Observation::Unknown => self.update(&id, |t| t.missing += 1),
            }
        }
        Ok(())
    }

    async fn requeue(&self, id: &TaskId, why: &str) {
        tracing::info!(task = %id, why, "requeued");
        self.untrack(id);
        if let Err(e) = self.store.transition(id, TaskState::Queued, None).await {
            tracing::error!(task = %id, error = %e, "requeueing a task");
        }
    }

    /// After CancelTask committed: stop the task's work wherever it runs.
    pub async fn cancel_work(&self, record: &TaskRecord) {
        let Some(backend) = self.backends.get(&record.compute_env) else {
            return;
        };
        let handle = self
            .tracked(&record.id)
            .and_then(|t| t.handle)
            .or_else(|| record.executor_ref.clone());
        if record.state == TaskState::Queued && handle.is_none() {
            return;
        }
        if let Err(e) = backend.cancel(&record.id, handle.as_deref()).await {
            tracing::warn!(task = %record.id, error = %e, "stopping a canceled task's work");
        }
    }

    /// Whether `owner`'s claim has lapsed: its lease ran out, or it names a process that no
    /// longer exists in this process's own pid namespace since this boot (a restarted server
    /// takes over its tasks at once).
    fn lapsed(&self, record: &TaskRecord) -> bool {
        let Some(owner) = &record.owner else {
            return true;
        };
        if record.lease_until.is_none_or(|until| until < now_ms()) {
            return true;
        }
        let mut parts = owner.rsplitn(3, ':');
        let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
        match (host, pid.and_then(|p| p.parse::<i32>().ok())) {
            (Some(host), Some(pid)) if host == pid_place() => rustix::process::Pid::from_raw(pid)
                .is_none_or(|pid| {
                    matches!(
                        rustix::process::test_kill_process(pid),
                        Err(rustix::io::Errno::SRCH)
                    )
                }),
            _ => false,
        }
    }

    /// Takes over every active task whose owner's claim lapsed, and follows its work again.
    pub(crate) async fn take_over_lapsed(&self) -> Result<(), ServiceError> {
        for record in self.store.tasks_owned_by_others(&self.owner).await? {
            if !self.lapsed(&record) {
                continue;
            }
            if !self
                .store
                .take_over(
                    &record.id,
                    record.owner.as_deref(),
                    record.lease_until,
                    &self.lease(),
                )
                .await?
            {
                continue; // another process was faster, or the task moved on
            }
            tracing::info!(task = %record.id, from = ?record.owner, "took over a task");
            let id = record.id.clone();
            if let Err(e) = self.adopt(record).await {
                // Let the claim lapse at once, so the next round (here or in another process)
                // tries again, instead of holding a task nobody follows.
                tracing::error!(task = %id, error = ?e, "adopting a task failed; it will be tried again");
                self.untrack(&id);
                self.store.disown(&id, &self.owner).await?;
            }
        }
        Ok(())
    }

    /// Follows a taken-over task's work: keep watching it, collect its result, requeue it if it
    /// provably never started, or fail it.
    async fn adopt(&self, record: TaskRecord) -> Result<(), ServiceError> {
        let id = record.id.clone();
        let Some(backend) = self.backends.get(&record.compute_env).cloned() else {
            self.fail(
                &id,
                None,
                format!(
                    "compute environment {} is no longer configured on this server",
                    record.compute_env
                ),
            )
            .await;
            return Ok(());
        };
        let caps = backend.capabilities();
        let cost = capacity_cost(caps.capacity_unit, &record);
        self.track(
            &id,
            Tracked {
                env: record.compute_env.clone(),
                cost,
                handle: record.executor_ref.clone(),
                submitting: false,
                adopted_unsubmitted: record.executor_ref.is_none(),
                missing: 0,
            },
        );
        let seen = backend
            .adopt(&id, record.executor_ref.as_deref(), &self.events)
            .await
            .map_err(|e| ServiceError::Unavailable(e.into()))?;
        match seen {
            Observation::Active { .. } => {
                tracing::info!(task = %id, "following its work again");
            }
            Observation::Unknown | Observation::Ended { .. } => {
                match backend.last_status(&id) {
                    Some(status) if status.phase.is_final() => {
                        self.apply_report(&record, status).await;
                    }
                    Some(status) if status.phase == WorkerPhase::Running => {
                        self.fail(
                            &id,
                            Some(status.log),
                            "the worker stopped while the server was down (no server process watched it), after its executors had started"
                                .to_owned(),
                        )
                        .await;
                    }
                    _ if record.state == TaskState::Initializing => {
                        // Cleaned up first: once requeued, it may be claimed and started again
                        // at once, and a later clean-up would remove the new run's files.
                        if let Err(e) = backend.clean_up(&id) {
                            tracing::warn!(task = %id, error = %e, "cleaning up before a requeue");
                        }
                        self.requeue(&id, "its worker never started an executor")
                            .await;
                        return Ok(());
                    }
                    other => {
                        self.fail(
                            &id,
                            other.map(|s| s.log),
                            "the worker was gone when its task was taken over, and left no result"
                                .to_owned(),
                        )
                        .await;
                    }
                }
                self.clean_up(backend.as_ref(), &id);
            }
        }
        Ok(())
    }

    /// Removes what backends hold of tasks that ended or are unknown, stopping any work still
    /// running for them (a cancel committed just before a crash).
    async fn remove_leftovers(&self) -> Result<(), ServiceError> {
        for backend in self.backends.values() {
            for id in backend.leftovers() {
                let record = self.store.get_task_for_system(&id).await?;
                if record.as_ref().is_some_and(|r| !r.state.is_terminal()) {
                    continue;
                }
                let handle = record.and_then(|r| r.executor_ref);
                if let Err(e) = backend.cancel(&id, handle.as_deref()).await {
                    tracing::warn!(task = %id, error = %e, "stopping a stray task's work");
                }
                if let Err(e) = backend.clean_up(&id) {
                    tracing::warn!(task = %id, error = %e, "removing a stray task's leftovers");
                }
            }
        }
        Ok(())
    }
}

fn handle_metadata(env: &str, key: &str, handle: &str) -> BTreeMap<String, String> {
    [
        ("compute_env".to_owned(), env.to_owned()),
        (key.to_owned(), handle.to_owned()),
    ]
    .into()
}

/// What a task holds of its backend's capacity while it runs. A workflow engine holds none: it
/// mostly waits for its jobs, and if engines held capacity, a few runs at once could fill it and
/// wait forever for jobs that cannot start.
fn capacity_cost(unit: CapacityUnit, record: &TaskRecord) -> u32 {
    let engine = record
        .spec
        .run
        .as_ref()
        .is_some_and(|run| run.role == tresor_domain::RunRole::Engine);
    match unit {
        _ if engine => 0,
        CapacityUnit::Cores => record.cpu_cores,
        CapacityUnit::Tasks => 1,
    }
}

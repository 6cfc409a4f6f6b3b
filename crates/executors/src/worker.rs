//! The program behind `tresor worker`: runs one task from its directory and reports through
//! `status.json`. It keeps going if the server dies, so a restarted server finds the result.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tresor_api_types::tes::{TesExecutorLog, TesOutputFileLog, TesTaskLog};
use tresor_domain::task::{Executor, FileType, Input, Output};

use crate::limits::{self, TaskCgroup, TaskDisk, TaskLimits};
use crate::paths::{self, ResolveError};
use crate::sandbox::{self, SandboxSpec};
use base64::Engine;
use tresor_crypto::SecretValue;
use tresor_crypto::redact::Redactor;

use crate::protocol::{
    DeliveredSecrets, IDENTITY_DIR, PresignedInputs, PresignedUploads, UploadRequest,
};
use crate::public_http;
use crate::session::{self, Identity, Session};
use crate::users;
use crate::{WorkerPhase, WorkerStatus, WorkerTask};

/// File names inside a task directory.
pub const TASK_FILE: &str = "task.json";
pub const STATUS_FILE: &str = "status.json";
pub const LOCK_FILE: &str = "worker.lock";
pub const PID_FILE: &str = "worker.pid";
pub const LOG_FILE: &str = "worker.log";
pub const ROOT_DIR: &str = "root";

/// How often a running executor's output so far is reported.
const LIVE_OUTPUT_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The last 64 KiB of the worker log in `task_dir`, from its first whole line.
pub fn read_log_tail(task_dir: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    const TAIL: u64 = 64 * 1024;
    // Never through a link, and only a regular file: the server reads this as root.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(task_dir.join(LOG_FILE))
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut raw = Vec::new();
    file.take(TAIL).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let text = if len > TAIL {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    Some(text.to_owned())
}

/// The line that tells users where their commands really ran, on a host that runs no images.
pub const RUNTIME_NOTE: &str = "runtime: host; each executor ran in a bubblewrap sandbox on the \
     host, and the executor's image was recorded but not pulled or used";
/// The same, where each executor runs in its image.
pub const IMAGE_RUNTIME_NOTE: &str = "runtime: oci; each executor ran in a bubblewrap sandbox \
     with its image's root as /";

/// `PATH` where neither the image nor the executor sets one (what OCI runtimes give).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` where neither sets one: writable, on the task's own disk.
pub const DEFAULT_HOME: &str = "/tmp";

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A failure that ends the task as SYSTEM_ERROR; its text goes to `system_logs`.
#[derive(Debug)]
struct SystemError(String);

impl From<ResolveError> for SystemError {
    fn from(e: ResolveError) -> Self {
        SystemError(e.to_string())
    }
}

fn sys(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SystemError {
    move |e| SystemError(format!("{context}: {e}"))
}

/// Runs the task in `task_dir` to its end. Errors only if the task file cannot be read or the
/// status cannot be written; every task failure is reported in the status instead.
pub async fn run(task_dir: &Path) -> Result<(), String> {
    let raw = std::fs::read(task_dir.join(TASK_FILE))
        .map_err(|e| format!("reading {}: {e}", task_dir.join(TASK_FILE).display()))?;
    let task: WorkerTask =
        serde_json::from_slice(&raw).map_err(|e| format!("parsing the task file: {e}"))?;
    // Reports go to the server over HTTP like a batch job's; the status file is only for a
    // server that recovers after a crash, so a final report that fails is retried briefly.
    let remote = task.session.as_ref().map(Session::new).transpose()?;
    run_task(task_dir, &task, remote, LOCAL_FINAL_ATTEMPTS)
        .instrument(task_span(&task))
        .await
}

/// Every log line of a task's worker names the task and the API request that created it.
fn task_span(task: &WorkerTask) -> tracing::Span {
    tracing::info_span!(
        "task",
        task = %task.task_id,
        request_id = %task.request_id.as_deref().unwrap_or("-"),
    )
}

/// How often a final status report is tried: a local worker's server reads the status file when
/// the worker exits; a batch job's server may be restarting, and learns of the job's end only
/// from its next poll.
const LOCAL_FINAL_ATTEMPTS: u32 = 3;
const BATCH_FINAL_ATTEMPTS: u32 = 30;

/// Runs a batch job's task: exchanges the job's one-time bootstrap token (from the environment
/// the job script set) for the task and its session, then runs it in the current directory,
/// reporting to the server as well as to `status.json`.
pub async fn run_bootstrapped() -> Result<(), String> {
    use crate::protocol::{
        BootstrapRequest, ENV_BOOTSTRAP_TOKEN, ENV_SERVER_URL, ENV_TASK_ID, WorkerSession,
    };
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("{name} is not set; the job script sets it"))
    };
    let (task_id, server_url, token) = (
        var(ENV_TASK_ID)?,
        var(ENV_SERVER_URL)?,
        zeroize::Zeroizing::new(var(ENV_BOOTSTRAP_TOKEN)?),
    );
    let bootstrap = Session::new(&WorkerSession {
        base_url: format!(
            "{}/internal/v1/tasks/{task_id}",
            server_url.trim_end_matches('/')
        ),
        credential: token.to_string(),
    })?;
    let request = BootstrapRequest {
        job_id: std::env::var("SLURM_JOB_ID").ok(),
        // Asked again after a lost answer, the server recognises this exchange by it.
        exchange: Some(crate::session::random_hex()?),
    };
    // The server may be restarting when the job starts: an unreachable server (or a 5xx) is
    // retried for two minutes, well inside the token's validity after the job's start.
    let mut attempt = 0;
    let task: WorkerTask = loop {
        attempt += 1;
        match bootstrap.call("bootstrap", Some(&request)).await {
            Ok(task) => break task,
            Err(e) if attempt < 60 && e.status.is_none_or(|s| s >= 500) => {
                tracing::warn!(error = %e, attempt, "the server is not answering; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("exchanging the bootstrap token: {e}")),
        }
    };
    drop(bootstrap);
    let remote = task.session.as_ref().map(Session::new).transpose()?;
    let task_dir =
        std::env::current_dir().map_err(|e| format!("reading the job's directory: {e}"))?;
    // SLURM ends a job (cancel, time or memory limit) with SIGTERM and kills it `KillWait`
    // seconds later. Stopping at once drops the run, which removes the identity directory from
    // the node's tmpfs; the server learns why from SLURM.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("watching for SIGTERM: {e}"))?;
    tokio::select! {
        result = run_task(&task_dir, &task, remote, BATCH_FINAL_ATTEMPTS).instrument(task_span(&task)) => result,
        _ = terminate.recv() => Err("SLURM is ending the job (SIGTERM); stopped".to_owned()),
    }
}

async fn run_task(
    task_dir: &Path,
    task: &WorkerTask,
    remote: Option<Session>,
    final_attempts: u32,
) -> Result<(), String> {
    // One session for the whole run: the reports, the credentials and the task's storage.
    let session = remote.clone();
    let mut report = Reporter::new(task_dir, remote, final_attempts);
    let note = if task.images.is_some() {
        if let Some(metadata) = report.status.log.metadata.as_mut() {
            metadata.insert("runtime".to_owned(), "oci".to_owned());
        }
        IMAGE_RUNTIME_NOTE
    } else {
        RUNTIME_NOTE
    };
    report.status.log.system_logs = Some(vec![note.to_owned()]);
    report.publish().await?;
    tracing::info!(
        executors = task.executors.len(),
        inputs = task.inputs.len(),
        outputs = task.outputs.len(),
        "the worker started the task"
    );

    let root = task_dir.join(ROOT_DIR);
    // The disk is made on a thread while the secrets and the identity token are fetched.
    let mounting = {
        let (task, root) = (task.clone(), root.clone());
        tokio::task::spawn_blocking(move || mount_disk(&task, &root))
    };
    let credentials = fetch_credentials(task, session.as_ref());
    let (mounted, credentials) = tokio::join!(mounting, credentials);
    let mounted = mounted
        .unwrap_or_else(|e| Err(SystemError(format!("making the task's disk stopped: {e}"))));
    let (outcome, disk) = match mounted {
        Ok(disk) => {
            let outcome = execute(
                task,
                &root,
                &mut report,
                disk.as_ref(),
                session,
                credentials,
            )
            .await;
            let outcome = match outcome {
                // Inputs that do not fit the disk the task asked for are the task's failure.
                Err(SystemError(message)) if disk.as_ref().is_some_and(TaskDisk::is_full) => {
                    report.system_log(message);
                    report.system_log(format!("the task's inputs {}", disk_limit(&task.limits)));
                    Ok(WorkerPhase::ExecutorError)
                }
                other => other,
            };
            (outcome, disk)
        }
        Err(e) => {
            // Nothing ran: the identity token and the secrets go before the result is reported.
            drop(credentials);
            (Err(e), None)
        }
    };
    let phase = match outcome {
        Ok(phase) => phase,
        Err(SystemError(message)) => {
            report.system_log(message);
            WorkerPhase::SystemError
        }
    };
    // The result is known once the executors are done and the outputs delivered: it is
    // reported before the task's disk is taken down, which is cleanup the task does not wait
    // for. The server removes whatever this worker leaves when it exits.
    report.status.phase = phase;
    report.status.log.end_time = Some(now());
    let published = report.publish().await;
    tracing::info!(result = ?phase, reported = published.is_ok(), "the worker ended the task");
    // Unmounted (and its image removed) before the tree's mount point goes.
    drop(disk);
    if let Err(e) = std::fs::remove_dir_all(&root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "removing the task's files");
    }
    published
}

/// Keeps the current status and writes it atomically.
struct Reporter {
    dir: PathBuf,
    /// The server: its reports are the primary signal.
    remote: Option<Session>,
    /// How often the final report is tried.
    final_attempts: u32,
    status: WorkerStatus,
    /// Set once the task's secrets are known: every log line is redacted with it.
    redactor: Option<Redactor>,
    /// Progress goes to the server from a task of its own, in order, so the task never waits
    /// for it; the final report waits until progress sent before it has arrived.
    progress: Option<(
        tokio::sync::mpsc::UnboundedSender<WorkerStatus>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Reporter {
    fn new(dir: &Path, remote: Option<Session>, final_attempts: u32) -> Reporter {
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), "host".to_owned());
        metadata.insert("sandbox".to_owned(), "bubblewrap".to_owned());
        let progress = remote.clone().map(|session| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WorkerStatus>();
            let sender = tokio::spawn(async move {
                while let Some(mut status) = rx.recv().await {
                    // Only the latest progress matters: skip what a newer report replaces.
                    while let Ok(newer) = rx.try_recv() {
                        status = newer;
                    }
                    send(&session, &status, 1).await;
                }
            });
            (tx, sender)
        });
        Reporter {
            dir: dir.to_owned(),
            remote,
            final_attempts,
            status: WorkerStatus {
                phase: WorkerPhase::Initializing,
                log: TesTaskLog {
                    start_time: Some(now()),
                    metadata: Some(metadata),
                    ..TesTaskLog::default()
                },
            },
            redactor: None,
            progress,
        }
    }

    /// Sends `status` to the server as progress (coalesced with newer progress), leaving the
    /// status file alone: for the executors' output while they run.
    fn progress(&self, status: WorkerStatus) {
        if let Some((progress, _)) = &self.progress {
            let _ = progress.send(status);
        }
    }

    fn system_log(&mut self, line: String) {
        let line = match &self.redactor {
            Some(r) => r.redact_str(&line),
            None => line,
        };
        let line = tresor_crypto::redact::mask_credentials_str(&line);
        self.status
            .log
            .system_logs
            .get_or_insert_with(Vec::new)
            .push(line);
    }

    /// Replaces `status.json` atomically, then tells the server if this worker reports to it:
    /// progress in the background, the final status in order after it, awaited.
    /// No fsync: the rename survives a killed process, and after a machine crash the reconciler
    /// treats a task without a final status as failed.
    async fn publish(&mut self) -> Result<(), String> {
        self.write_file()?;
        if !self.status.phase.is_final() {
            if let Some((progress, _)) = &self.progress {
                let _ = progress.send(self.status.clone());
            }
            return Ok(());
        }
        if let Some((progress, sender)) = self.progress.take() {
            drop(progress);
            let _ = sender.await;
        }
        if let Some(remote) = &self.remote {
            send(remote, &self.status, self.final_attempts).await;
        }
        Ok(())
    }

    fn write_file(&self) -> Result<(), String> {
        let tmp = self.dir.join(format!("{STATUS_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&serde_json::to_vec(&self.status).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, self.dir.join(STATUS_FILE))
        };
        write().map_err(|e| format!("writing {STATUS_FILE}: {e}"))
    }
}

/// Sends a status to the server, up to `attempts` times 2 s apart (the server may be
/// restarting). If the final report never arrives, the server reads the same status from the
/// status file when the work has ended.
async fn send(remote: &Session, status: &WorkerStatus, attempts: u32) {
    for attempt in 1..=attempts {
        match remote
            .call::<crate::StatusAck>("status", Some(status))
            .await
        {
            Ok(_) => return,
            // The server refused it (the task ended, or was canceled): nothing to retry.
            Err(e) if e.status.is_some_and(|s| s < 500) => {
                tracing::warn!(error = %e, "the server refused a status report");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "reporting the status failed");
                if attempt < attempts {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// The task's tree on its own disk image of the task's size, where this host makes them.
fn mount_disk(task: &WorkerTask, root: &Path) -> Result<Option<TaskDisk>, SystemError> {
    match (&task.limits.enforcement.disk_image, task.limits.disk_bytes) {
        (Some(tools), Some(bytes)) => TaskDisk::mount(root, bytes, tools)
            .map(Some)
            .map_err(|e| SystemError(format!("preparing the task's disk: {e}"))),
        _ => Ok(None),
    }
}

fn disk_limit(limits: &TaskLimits) -> String {
    format!(
        "exceeded the task's disk limit of {} (resources.disk_gb)",
        limits::gb(limits.disk_bytes.unwrap_or_default())
    )
}

/// Whether the task's files exceed its disk: a full image, or, where there is none, a tree
/// larger than the limit.
fn disk_exceeded(task: &WorkerTask, root: &Path, disk: Option<&TaskDisk>) -> bool {
    match (disk, task.limits.disk_bytes) {
        (Some(disk), _) => disk.is_full(),
        (None, Some(limit)) => limits::tree_bytes(root) > limit,
        (None, None) => false,
    }
}

/// The task's secrets and its identity (the first token, and its refresh), fetched from the
/// server while the task's disk is made.
type Credentials = (
    Vec<(String, SecretValue)>,
    Option<Identity>,
    Vec<tresor_images::RegistryLogin>,
);

/// Fetches the task's secrets and its first identity token: two round trips, in parallel.
async fn fetch_credentials(
    task: &WorkerTask,
    session: Option<&Session>,
) -> Result<Credentials, SystemError> {
    let logins = task.images.as_ref().is_some_and(|i| i.logins);
    let secrets = async {
        match (task.secrets.is_some() || logins, session) {
            (true, Some(session)) => fetch_secrets(session).await,
            (true, None) => Err(SystemError(
                "the task declares secrets but has no session to fetch them".to_owned(),
            )),
            (false, _) => Ok((Vec::new(), Vec::new())),
        }
    };
    // Held until the executors are done: dropping it stops the token's refresh and removes it.
    let identity = async {
        match (&task.identity, session) {
            (Some(delivery), Some(session)) => {
                let engine = task.run.as_ref().is_some_and(|run| run.engine);
                Identity::start(
                    &task.task_id,
                    delivery,
                    session,
                    task.sandbox.run_as,
                    engine,
                )
                .await
                .map(Some)
                .map_err(SystemError)
            }
            _ => Ok(None),
        }
    };
    let (secrets, identity) = tokio::join!(secrets, identity);
    let (secrets, logins) = secrets?;
    Ok((secrets, identity?, logins))
}

async fn execute(
    task: &WorkerTask,
    root: &Path,
    report: &mut Reporter,
    disk: Option<&TaskDisk>,
    session: Option<Session>,
    credentials: Result<Credentials, SystemError>,
) -> Result<WorkerPhase, SystemError> {
    if task.run.is_some() {
        // A run's tasks are different host users of one group sharing the run's directory:
        // what one writes, the next must be able to extend (see `RunDelivery`). The worker's
        // own files all have explicit modes; the umask is for the executors it starts.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o007));
    }
    let (dirs, mounts) = paths::task_dirs(task);
    prepare_tree(root, &dirs)?;
    if let Some(owner) = task.sandbox.run_as {
        // The tree is the task user's before `file://` inputs are copied in with its rights.
        chown_tree(root, owner)?;
    }
    let (secrets, identity, logins) = credentials?;
    // Registry passwords are hidden from the task's logs like its secrets.
    let login_values: Vec<SecretValue> = logins
        .iter()
        .map(|l| SecretValue::new(l.password.as_bytes().to_vec()))
        .collect();
    report.redactor = Some(Redactor::new(
        secrets.iter().map(|(_, v)| v).chain(&login_values),
    ));
    drop(login_values);
    // Images are pulled while the inputs are staged.
    let staging = async {
        stage_file_inputs(task, root).await?;
        for input in &task.inputs {
            stage_input(task, root, input).await?;
        }
        if task.inputs.iter().any(is_s3_input) {
            stage_s3_inputs(session.as_ref(), root, &task.inputs).await?;
        }
        Ok::<(), SystemError>(())
    };
    let (staged, images) = tokio::join!(staging, ready_images(task, logins));
    staged?;
    let images = images?;
    if let Some(metadata) = report.status.log.metadata.as_mut() {
        for (index, image) in images.iter().enumerate() {
            if let Some((plan, ready)) = image {
                metadata.insert(format!("executor.{index}.image"), plan.name.clone());
                metadata.insert(
                    format!("executor.{index}.image_digest"),
                    ready.digest.clone(),
                );
            }
        }
    }
    for (index, image) in images.iter().enumerate() {
        for note in image.iter().flat_map(|(_, ready)| &ready.notes) {
            report.system_log(format!("executor {index}: image: {note}"));
        }
    }
    if disk.is_none() && disk_exceeded(task, root, None) {
        report.system_log(format!("the task's inputs {}", disk_limit(&task.limits)));
        return Ok(WorkerPhase::ExecutorError);
    }
    if let Some(owner) = task.sandbox.run_as {
        chown_tree(root, owner)?;
    }
    let identity_binds: Vec<(PathBuf, String)> = identity
        .iter()
        .map(|i| (i.dir().to_owned(), IDENTITY_DIR.to_owned()))
        .collect();
    let identity_env = task
        .identity
        .as_ref()
        .filter(|_| identity.is_some())
        .map(Identity::env)
        .unwrap_or_default();

    // One cgroup for all the task's executors: its limits are the task's. Removed when dropped.
    let cgroup = match &task.limits.enforcement.cgroups {
        Some(cgroups) => {
            Some(TaskCgroup::create(cgroups, &task.task_id, &task.limits).map_err(SystemError)?)
        }
        None => None,
    };
    report.status.phase = WorkerPhase::Running;
    report.publish().await.map_err(SystemError)?;
    let shared_dirs: Vec<PathBuf> = task.run.iter().map(|run| run.dir.clone()).collect();
    // A task with the host's network needs no proxy; the server sends no allowlist then.
    let egress = tresor_domain::egress::parse_allowlist(&task.egress)
        .map_err(|e| SystemError(format!("the workspace's egress allowlist: {e}")))?;
    let mut sandbox_env = identity_env;
    if !egress.is_empty() && !task.network {
        sandbox_env.extend(crate::egress::proxy_env());
    }
    let sandbox_extras = SandboxExtras {
        ro_binds: &identity_binds,
        env: &sandbox_env,
        shared_dirs: &shared_dirs,
        group: task.run.as_ref().and(task.file_group),
        egress: if task.network { &[] } else { &egress },
    };
    // The time limit covers all executors together, like a batch job's.
    let deadline = task
        .limits
        .run_seconds
        .and_then(|s| tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(s)));
    let mut log_budget = task.limits.log_bytes.unwrap_or(usize::MAX);
    for (index, executor) in task.executors.iter().enumerate() {
        let before = (
            cgroup.as_ref().map_or(0, TaskCgroup::oom_kills),
            cgroup.as_ref().map_or(0, TaskCgroup::process_limit_hits),
        );
        let confinement = Confinement {
            cgroup: cgroup.as_ref(),
            limits: &task.limits,
            deadline,
            log_budget,
        };
        let live = LiveOutput::default();
        let run = {
            let running = run_executor(
                task,
                root,
                &mounts,
                executor,
                images[index].as_ref().map(|(_, ready)| ready.as_ref()),
                &secrets,
                report.redactor.as_ref(),
                &sandbox_extras,
                &confinement,
                &live,
            );
            tokio::pin!(running);
            // While it runs, its output so far goes to the server once a second (when it changed).
            let mut tick = tokio::time::interval(LIVE_OUTPUT_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = now();
            loop {
                tokio::select! {
                    run = &mut running => break run,
                    _ = tick.tick() => {
                        if let Some([stdout, stderr]) = live.snapshot() {
                            let mut status = report.status.clone();
                            status.log.logs.push(TesExecutorLog {
                                start_time: Some(started.clone()),
                                stdout: Some(stdout),
                                stderr: Some(stderr),
                                ..TesExecutorLog::default()
                            });
                            report.progress(status);
                        }
                    }
                }
            }
        };
        let run = match run {
            Ok(run) => run,
            Err(SandboxFailure::System(message)) => {
                return Err(SystemError(format!("executor {index}: {message}")));
            }
        };
        let exit_code = run.log.exit_code;
        log_budget = log_budget.saturating_sub(run.kept_bytes);
        let limit = limit_exceeded(task, root, disk, cgroup.as_ref(), before, &run);
        report.status.log.logs.push(run.log);
        for note in run.notes {
            report.system_log(format!("executor {index}: {note}"));
        }
        report.publish().await.map_err(SystemError)?;
        // A limit ends the task whatever the exit code and ignore_error say.
        if let Some(limit) = limit {
            report.system_log(format!("executor {index} {limit}"));
            return Ok(WorkerPhase::ExecutorError);
        }
        if exit_code != 0 {
            let hint = rlimit_hint(&task.limits, cgroup.is_some());
            if executor.ignore_error.unwrap_or(false) {
                report.system_log(format!(
                    "executor {index} exited with code {exit_code}; ignored (ignore_error){hint}"
                ));
            } else {
                report.system_log(format!(
                    "executor {index} exited with code {exit_code}{hint}"
                ));
                return Ok(WorkerPhase::ExecutorError);
            }
        }
    }
    drop(cgroup);
    // The images may be evicted from here on.
    drop(images);

    drop(identity);
    let mut s3_files = Vec::new();
    let mut local_files = Vec::new();
    for output in &task.outputs {
        if output.url.starts_with("s3://") {
            s3_files.extend(output_files(root, output)?);
        } else {
            local_files.extend(file_deliveries(task, root, output)?);
        }
    }
    if !local_files.is_empty() {
        let delivered = deliver_files(task, local_files).await?;
        report.status.log.outputs.extend(delivered);
    }
    if !s3_files.is_empty() {
        let delivered = deliver_s3_outputs(session.as_ref(), s3_files).await?;
        report.status.log.outputs.extend(delivered);
    }
    Ok(WorkerPhase::Complete)
}

/// Creates the task's tree: the root (private to the sandbox user) and every directory the task uses.
fn prepare_tree(root: &Path, dirs: &[String]) -> Result<(), SystemError> {
    std::fs::create_dir_all(root).map_err(sys("creating the task root"))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(sys("restricting the task root"))?;
    for dir in dirs {
        let host = paths::resolve_in_root(root, dir)?;
        std::fs::create_dir_all(&host).map_err(sys(format!("creating {dir}")))?;
    }
    Ok(())
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) -> Result<(), SystemError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(sys(format!("chown {}", path.display())))?;
    let meta = std::fs::symlink_metadata(path).map_err(sys("stat"))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(sys("listing the task tree"))? {
            let entry = entry.map_err(sys("listing the task tree"))?;
            chown_tree(&entry.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// The host path of a `file://` URL, if it lies inside an allowed directory (after resolving
/// symbolic links, so a link cannot point out of it).
fn allowed_source(task: &WorkerTask, url: &str) -> Result<PathBuf, SystemError> {
    let path = file_url_path(url)?;
    let real = std::fs::canonicalize(&path).map_err(sys(format!("input {url}")))?;
    if !paths::is_within(&real, &task.allowed_dirs) {
        return Err(SystemError(format!(
            "input {url} is outside the directories this server allows"
        )));
    }
    Ok(real)
}

fn file_url_path(url: &str) -> Result<PathBuf, SystemError> {
    url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        // Decoded `..` or `.` segments could step out of the allowed directories.
        .filter(|p| {
            p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
        })
        .ok_or_else(|| SystemError(format!("{url} is not a valid file:// URL")))
}

async fn stage_input(task: &WorkerTask, root: &Path, input: &Input) -> Result<(), SystemError> {
    let dest = paths::resolve_in_root(root, &input.path)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(sys(format!("creating the parent of {}", input.path)))?;
    }
    if let Some(content) = input.content.as_deref().filter(|c| !c.is_empty()) {
        return std::fs::write(&dest, content)
            .map_err(sys(format!("writing input {}", input.path)));
    }
    let url = input.url.as_deref().unwrap_or_default();
    if url.starts_with("s3://") {
        // Staged with presigned URLs by `stage_s3_inputs`.
        return Ok(());
    }
    if url.starts_with("file://") {
        // Copied by `stage_file_inputs`, with the task user's rights.
        return Ok(());
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return download(url, &dest, task.allow_private_http_inputs).await;
    }
    Err(SystemError(format!("input {url}: unsupported URL scheme")))
}

/// Runs file work with the rights of the task's user and its workspace's group (see
/// `users::run_as`) when the worker is root, so the kernel refuses what that user may not do;
/// a worker that is not root cannot switch, and its own rights are the task's.
async fn with_task_rights<T: Send + 'static>(
    task: &WorkerTask,
    work: impl FnOnce() -> Result<T, SystemError> + Send + 'static,
) -> Result<T, SystemError> {
    let user = task
        .sandbox
        .run_as
        .filter(|_| rustix::process::geteuid().is_root())
        .map(|(uid, gid)| users::FileUser {
            uid,
            gid,
            group: task.file_group,
        });
    match user {
        Some(user) => match users::run_as(user, work).await {
            Ok(result) => result,
            Err(why) => Err(SystemError(why)),
        },
        None => work(),
    }
}

/// Copies every `file://` input into the task's tree with the task user's rights: an input that
/// user may not read is refused, whatever the worker itself could read. The source is checked
/// against the allowed directories first, after resolving links.
async fn stage_file_inputs(task: &WorkerTask, root: &Path) -> Result<(), SystemError> {
    let mut copies = Vec::new();
    for input in &task.inputs {
        let url = input.url.as_deref().unwrap_or_default();
        if !url.starts_with("file://") || input.content.as_deref().is_some_and(|c| !c.is_empty()) {
            continue;
        }
        let source = allowed_source(task, url)?;
        let dest = paths::resolve_in_root(root, &input.path)?;
        copies.push((
            url.to_owned(),
            source,
            dest,
            input.file_type.unwrap_or_default(),
        ));
    }
    if copies.is_empty() {
        return Ok(());
    }
    with_task_rights(task, move || {
        for (url, source, dest, kind) in copies {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(input_error(&url))?;
            }
            match kind {
                FileType::File => {
                    std::fs::copy(&source, &dest).map_err(input_error(&url))?;
                }
                FileType::Directory => copy_dir(&source, &dest)?,
            }
        }
        Ok(())
    })
    .await
}

/// A failed copy of the input `url`, saying so when the task's user may not read it.
fn input_error(url: &str) -> impl FnOnce(std::io::Error) -> SystemError {
    let url = url.to_owned();
    move |e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            SystemError(format!(
                "input {url} is not readable by the task's user: {e}"
            ))
        } else {
            SystemError(format!("copying input {url}: {e}"))
        }
    }
}

/// Copies a directory tree; symbolic links and special files inside it are skipped.
fn copy_dir(source: &Path, dest: &Path) -> Result<(), SystemError> {
    std::fs::create_dir_all(dest).map_err(sys(format!("creating {}", dest.display())))?;
    for entry in std::fs::read_dir(source).map_err(sys(format!("listing {}", source.display())))? {
        let entry = entry.map_err(sys("listing a directory input"))?;
        let kind = entry.file_type().map_err(sys("stat"))?;
        let target = dest.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .map_err(sys(format!("copying {}", entry.path().display())))?;
        }
    }
    Ok(())
}

async fn download(url: &str, dest: &Path, allow_private: bool) -> Result<(), SystemError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| SystemError(format!("input {url}: {e}")))?;
    if !allow_private {
        public_http::check_literal(&parsed)
            .map_err(|why| SystemError(format!("input {url}: {why}")))?;
    }
    let client = public_http::client(allow_private, std::time::Duration::from_secs(30))
        .map_err(|e| SystemError(format!("input {url}: {}", public_http::error_text(e))))?;
    let mut response = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| SystemError(format!("input {url}: {}", public_http::error_text(e))))?;
    if !response.status().is_success() {
        return Err(SystemError(format!(
            "input {url}: the server answered {}",
            response.status()
        )));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(sys(format!("creating {}", dest.display())))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SystemError(format!("input {url}: {}", e.without_url())))?
    {
        file.write_all(&chunk)
            .await
            .map_err(sys("writing a download"))?;
    }
    file.flush().await.map_err(sys("writing a download"))?;
    Ok(())
}

enum SandboxFailure {
    /// The sandbox itself could not start: the task ends as SYSTEM_ERROR.
    System(String),
}

/// Opens a file the executor reads or writes (stdin/stdout/stderr) inside the task tree.
fn open_stdio(
    root: &Path,
    path: &str,
    write: bool,
    owner: Option<(u32, u32)>,
) -> Result<std::fs::File, String> {
    let host = paths::resolve_in_root(root, path).map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    if write {
        options.write(true).create(true).truncate(true).mode(0o644);
    } else {
        options.read(true);
    }
    // The path was checked component by component; O_NOFOLLOW also refuses a final symlink.
    options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    let file = options.open(&host).map_err(|e| format!("{path}: {e}"))?;
    if let (true, Some((uid, gid))) = (write, owner) {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(file)
}

/// Fetches the declared secrets from the server, once, with the task's credential.
/// The task's secrets and its registry logins, fetched once.
async fn fetch_secrets(
    session: &Session,
) -> Result<
    (
        Vec<(String, SecretValue)>,
        Vec<tresor_images::RegistryLogin>,
    ),
    SystemError,
> {
    let failed = |why: String| SystemError(format!("could not fetch the task's secrets: {why}"));
    // One id for this worker's delivery: asked again after a lost answer (the server killed
    // while it replied), the server hands out the same secrets instead of refusing.
    let request = tresor_api_types::internal::SecretsRequest {
        delivery: crate::session::random_hex().map_err(failed)?,
    };
    let body: DeliveredSecrets = session
        .call_repeatable("secrets", Some(&request))
        .await
        .map_err(|e| failed(e.message))?;
    let decode = |value: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(value.as_bytes())
            .map(zeroize::Zeroizing::new)
    };
    let secrets = body
        .secrets
        .iter()
        .map(|s| {
            decode(&s.value_base64)
                .map(|bytes| (s.name.clone(), SecretValue::new(bytes.to_vec())))
                .map_err(|_| failed(format!("the value of {} is not base64", s.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut logins = Vec::new();
    for login in &body.registry_logins {
        let value = decode(&login.value_base64)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .map(zeroize::Zeroizing::new);
        let Some((username, password)) = value.as_deref().and_then(|v| v.split_once(':')) else {
            return Err(failed(format!(
                "the registry login for {} is not username:password",
                login.registry
            )));
        };
        logins.push(tresor_images::RegistryLogin {
            registry: login.registry.clone(),
            username: username.to_owned(),
            password: zeroize::Zeroizing::new(password.to_owned()),
        });
    }
    Ok((secrets, logins))
}

/// The longest a task waits for its images (a registry that trickles its answer cannot hold a
/// task in INITIALIZING for ever).
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One ready image per executor (`None` on a host that runs no images); each distinct image is
/// made ready once, on the host's network, outside any sandbox.
async fn ready_images(
    task: &WorkerTask,
    logins: Vec<tresor_images::RegistryLogin>,
) -> Result<
    Vec<
        Option<(
            tresor_images::PullPlan,
            std::sync::Arc<tresor_images::ReadyImage>,
        )>,
    >,
    SystemError,
> {
    let Some(delivery) = &task.images else {
        return Ok(vec![None; task.executors.len()]);
    };
    if delivery.pulls.len() != task.executors.len() {
        return Err(SystemError(
            "the task file names an image for each executor, and does not".to_owned(),
        ));
    }
    let cache = tresor_images::ImageCache::open(delivery.cache.clone())
        .map_err(|e| SystemError(format!("the image cache: {e}")))?;
    let mut ready: BTreeMap<String, std::sync::Arc<tresor_images::ReadyImage>> = BTreeMap::new();
    let mut out = Vec::with_capacity(delivery.pulls.len());
    for (index, plan) in delivery.pulls.iter().enumerate() {
        let image = match ready.get(&plan.source) {
            Some(image) => image.clone(),
            None => {
                let login = logins.iter().find(|l| l.registry == plan.registry);
                let pulled = tokio::time::timeout(
                    PULL_TIMEOUT,
                    cache.ensure(plan, &delivery.workspace, login),
                )
                .await
                .map_err(|_| {
                    SystemError(format!(
                        "executor {index}: image {} was not ready within {} minutes",
                        plan.name,
                        PULL_TIMEOUT.as_secs() / 60
                    ))
                })?;
                let image = pulled.map_err(|e| SystemError(format!("executor {index}: {e}")))?;
                let image = std::sync::Arc::new(image);
                ready.insert(plan.source.clone(), image.clone());
                image
            }
        };
        out.push(Some((plan.clone(), image)));
    }
    Ok(out)
}

fn is_s3_input(input: &Input) -> bool {
    input.content.as_deref().is_none_or(str::is_empty)
        && input.url.as_deref().is_some_and(|u| u.starts_with("s3://"))
}

/// Downloads every `s3://` input through the presigned URLs the server hands out now, at start.
async fn stage_s3_inputs(
    session: Option<&Session>,
    root: &Path,
    inputs: &[Input],
) -> Result<(), SystemError> {
    let session = session.ok_or_else(|| {
        SystemError("the task has s3:// inputs but no session to fetch them".to_owned())
    })?;
    let presigned: PresignedInputs = session
        .call("inputs", None::<&()>)
        .await
        .map_err(|e| SystemError(format!("could not get the task's input URLs: {e}")))?;
    for object in presigned.inputs {
        let dest = paths::resolve_in_root(root, &object.path)?;
        let http = session.storage_http().map_err(SystemError)?;
        // Named by its s3:// URL (the presigned one is a credential, never shown).
        let source = inputs
            .iter()
            .filter(|i| is_s3_input(i))
            .find_map(|i| {
                let rest = object.path.strip_prefix(i.path.as_str())?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| format!("{}{rest}", i.url.as_deref().unwrap_or_default()))
            })
            .unwrap_or_else(|| object.path.clone());
        let label = format!("{source} (to {})", object.path);
        session::download_presigned(http, &object.url, &dest, &label)
            .await
            .map_err(SystemError)?;
    }
    Ok(())
}

/// One file an output delivers: its path in the task, on the host, and its URL.
struct OutputFile {
    container_path: String,
    host: PathBuf,
    url: String,
}

/// The files an output names: the file, every regular file under a directory, or every wildcard
/// match, each with its URL. Symbolic links and special files are refused: a link could point
/// anywhere.
fn output_files(root: &Path, output: &Output) -> Result<Vec<OutputFile>, SystemError> {
    let mut files = Vec::new();
    if paths::has_wildcard(&output.path) {
        let prefix = output.path_prefix.as_deref().unwrap_or_default();
        for matched in paths::expand_wildcard(root, &output.path)? {
            let relative = matched
                .strip_prefix(prefix)
                .unwrap_or(&matched)
                .trim_start_matches('/');
            let url = format!("{}/{relative}", output.url.trim_end_matches('/'));
            collect_output(root, &matched, &url, &mut files)?;
        }
        return Ok(files);
    }
    let host = paths::resolve_in_root(root, &output.path)?;
    let meta = std::fs::symlink_metadata(&host)
        .map_err(|e| SystemError(format!("output {}: {e}", output.path)))?;
    match output.file_type.unwrap_or_default() {
        FileType::File if !meta.is_file() => Err(SystemError(format!(
            "output {} is not a regular file",
            output.path
        ))),
        FileType::Directory if !meta.is_dir() => Err(SystemError(format!(
            "output {} is not a directory",
            output.path
        ))),
        _ => {
            collect_output(root, &output.path, &output.url, &mut files)?;
            Ok(files)
        }
    }
}

fn collect_output(
    root: &Path,
    container_path: &str,
    url: &str,
    files: &mut Vec<OutputFile>,
) -> Result<(), SystemError> {
    let host = paths::resolve_in_root(root, container_path)?;
    let meta = std::fs::symlink_metadata(&host)
        .map_err(|e| SystemError(format!("output {container_path}: {e}")))?;
    if meta.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&host)
            .map_err(sys(format!("listing output {container_path}")))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        for name in names {
            collect_output(
                root,
                &format!("{container_path}/{name}"),
                &format!("{}/{name}", url.trim_end_matches('/')),
                files,
            )?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        return Err(SystemError(format!(
            "output {container_path} is not a regular file or directory"
        )));
    }
    files.push(OutputFile {
        container_path: container_path.to_owned(),
        host,
        url: url.to_owned(),
    });
    Ok(())
}

/// Asks the server for one presigned PUT per file, now that the names are known, and uploads.
async fn deliver_s3_outputs(
    session: Option<&Session>,
    files: Vec<OutputFile>,
) -> Result<Vec<TesOutputFileLog>, SystemError> {
    let session = session.ok_or_else(|| {
        SystemError("the task has s3:// outputs but no session to deliver them".to_owned())
    })?;
    let request = UploadRequest {
        urls: files.iter().map(|f| f.url.clone()).collect(),
    };
    let presigned: PresignedUploads = session
        .call("uploads", Some(&request))
        .await
        .map_err(|e| SystemError(format!("could not get the task's output URLs: {e}")))?;
    if presigned.urls.len() != files.len() {
        return Err(SystemError(
            "the server answered a different number of output URLs".to_owned(),
        ));
    }
    let mut delivered = Vec::with_capacity(files.len());
    for (file, url) in files.into_iter().zip(presigned.urls) {
        let http = session.storage_http().map_err(SystemError)?;
        let size = session::upload_presigned(http, &url, &file.host, &file.url)
            .await
            .map_err(SystemError)?;
        delivered.push(TesOutputFileLog {
            url: file.url,
            path: file.container_path,
            size_bytes: size.to_string(),
        });
    }
    Ok(delivered)
}

/// What an executor's sandbox gets beyond its own spec: the identity directory and variables.
struct SandboxExtras<'a> {
    ro_binds: &'a [(PathBuf, String)],
    env: &'a [(String, String)],
    /// A workflow run's directory, bound read-write at its own path.
    shared_dirs: &'a [PathBuf],
    /// The workspace's group, for a run's tasks (see `RunDelivery`).
    group: Option<u32>,
    /// The workspace's egress allowlist, parsed; empty: no proxy.
    egress: &'a [tresor_domain::EgressRule],
}

/// The executor's environment: the image's `Env`, then the executor's `env` over it, then a
/// default `PATH` and a writable `HOME` where neither set them.
fn executor_env(
    image: Option<&tresor_images::ReadyImage>,
    executor: &Executor,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = image
        .and_then(|i| i.config.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|pair| pair.split_once('='))
        // The cache keeps only well-formed variables; checked again, since a NUL would split
        // the `--setenv` arguments bubblewrap reads into options of the image author's.
        .filter(|(name, value)| tresor_images::cache::env_var_ok(name, value))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    if let Some(own) = &executor.env {
        env.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.entry("HOME".to_owned())
        .or_insert_with(|| DEFAULT_HOME.to_owned());
    env
}

/// What holds one executor to its task's limits.
struct Confinement<'a> {
    /// The task's cgroup; without one, rlimits on bubblewrap.
    cgroup: Option<&'a TaskCgroup>,
    limits: &'a TaskLimits,
    /// When the task's run time is up.
    deadline: Option<tokio::time::Instant>,
    /// Bytes of stdout and stderr the task's log may still keep.
    log_budget: usize,
}

/// An executor that ran: its log, and what it ran into.
struct ExecutorRun {
    log: TesExecutorLog,
    /// It was killed at the task's time limit.
    timed_out: bool,
    /// Bytes of its stdout and stderr the log keeps.
    kept_bytes: usize,
    /// What was cut from its stdout and stderr, for `system_logs`.
    notes: Vec<String>,
}

/// The limit an executor ran into, if any, as the rest of a sentence for `system_logs`.
/// `before` holds the cgroup's OOM kills and process-limit hits from before it started.
fn limit_exceeded(
    task: &WorkerTask,
    root: &Path,
    disk: Option<&TaskDisk>,
    cgroup: Option<&TaskCgroup>,
    before: (u64, u64),
    run: &ExecutorRun,
) -> Option<String> {
    let limits = &task.limits;
    if run.timed_out {
        return Some(format!(
            "exceeded the task's time limit of {} s (resources.backend_parameters.time_limit, or local.max_run_seconds when it gives none) and was killed",
            limits.run_seconds.unwrap_or_default()
        ));
    }
    if let Some(cgroup) = cgroup {
        if cgroup.oom_kills() > before.0 {
            return Some(format!(
                "exceeded the task's memory limit of {} (resources.ram_gb): the kernel killed a process that needed more",
                limits::gb(limits.memory_bytes.unwrap_or_default())
            ));
        }
        if cgroup.process_limit_hits() > before.1 {
            return Some(format!(
                "reached the task's limit of {} processes and threads (local.max_processes): a process could not be started",
                limits.processes.unwrap_or_default()
            ));
        }
    }
    if disk_exceeded(task, root, disk) {
        return Some(disk_limit(limits));
    }
    // Without a cgroup, the rlimits' signals: SIGXCPU (24) and SIGXFSZ (25).
    match (cgroup, run.log.exit_code) {
        (None, 152) if limits.run_seconds.is_some() => Some(format!(
            "exceeded the CPU time a process of the task may use ({} s per core: the time limit times resources.cpu_cores) and was killed",
            limits.run_seconds.unwrap_or_default()
        )),
        (None, 153) if limits.disk_bytes.is_some() => Some(format!(
            "wrote a file larger than the task's disk limit of {} (resources.disk_gb) and was killed",
            limits::gb(limits.disk_bytes.unwrap_or_default())
        )),
        _ => None,
    }
}

/// Where no cgroup holds the task, memory is an address-space limit per process, which fails
/// allocations instead of killing: a failed executor's message says so.
fn rlimit_hint(limits: &TaskLimits, has_cgroup: bool) -> String {
    match limits.memory_bytes {
        Some(bytes) if !has_cgroup => format!(
            "; on this host each of its processes may use at most {} of memory (resources.ram_gb, enforced without cgroups as an address-space limit)",
            limits::gb(bytes)
        ),
        _ => String::new(),
    }
}

/// How many bytes of stdout and stderr fit in `budget`: both whole if they fit, else the
/// smaller keeps up to half and the larger the rest.
fn share_log_budget(out: usize, err: usize, budget: usize) -> (usize, usize) {
    if out.saturating_add(err) <= budget {
        return (out, err);
    }
    let half = budget / 2;
    if out <= half {
        (out, budget - out)
    } else if err <= half {
        (budget - err, err)
    } else {
        (budget - half, half)
    }
}

/// Keeps the last `keep` bytes; says whether anything went.
fn keep_tail(bytes: &mut Vec<u8>, keep: usize) -> bool {
    if bytes.len() <= keep {
        return false;
    }
    bytes.drain(..bytes.len() - keep);
    true
}

/// `keep_tail` for a log still being read, before credentials are masked: the cut moves on to
/// the next line break, so no credential is kept without what its shape is recognised by (a
/// token's start, or the `Authorization: Basic ` before an encoded password). A tail with no
/// line break at all is dropped.
fn keep_tail_from_a_break(bytes: &mut Vec<u8>, keep: usize) -> bool {
    if !keep_tail(bytes, keep) {
        return false;
    }
    match bytes.iter().position(|b| matches!(b, b'\n' | b'\r')) {
        Some(at) => {
            bytes.drain(..=at);
        }
        None => bytes.clear(),
    }
    true
}

/// An executor's output while it runs, redacted by value as it is read (the same stream the
/// task log's tail comes from), for the progress reports `task logs --follow` shows.
#[derive(Default)]
struct LiveOutput {
    /// stdout and stderr, each at most the log's tail.
    streams: std::sync::Mutex<[Vec<u8>; 2]>,
    changed: std::sync::atomic::AtomicBool,
}

impl LiveOutput {
    fn push(&self, stream: usize, safe: &[u8], tail: usize) {
        if safe.is_empty() {
            return;
        }
        if let Ok(mut streams) = self.streams.lock()
            && let Some(buf) = streams.get_mut(stream)
        {
            buf.extend_from_slice(safe);
            if buf.len() > tail {
                keep_tail_from_a_break(buf, tail);
            }
            self.changed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// stdout and stderr up to their last complete line, credentials masked by shape; `None`
    /// when nothing changed since the last snapshot. Only whole lines: a token still being
    /// written would not have its whole shape yet, and no token spans lines.
    fn snapshot(&self) -> Option<[String; 2]> {
        if !self
            .changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let streams = self.streams.lock().ok()?;
        Some(streams.clone().map(|buf| {
            let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
            String::from_utf8_lossy(&tresor_crypto::redact::mask_credentials(&buf[..whole]))
                .into_owned()
        }))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_executor(
    task: &WorkerTask,
    root: &Path,
    mounts: &[String],
    executor: &Executor,
    image: Option<&tresor_images::ReadyImage>,
    secrets: &[(String, SecretValue)],
    redactor: Option<&Redactor>,
    extras: &SandboxExtras<'_>,
    confinement: &Confinement<'_>,
    live: &LiveOutput,
) -> Result<ExecutorRun, SandboxFailure> {
    let owner = task.sandbox.run_as;
    let stdin = executor
        .stdin
        .as_deref()
        .map(|p| open_stdio(root, p, false, owner))
        .transpose()
        .map_err(SandboxFailure::System)?;
    let stdout_file = executor
        .stdout
        .as_deref()
        .map(|p| open_stdio(root, p, true, owner))
        .transpose()
        .map_err(SandboxFailure::System)?;
    let stderr_file = executor
        .stderr
        .as_deref()
        .map(|p| open_stdio(root, p, true, owner))
        .transpose()
        .map_err(SandboxFailure::System)?;

    // Secret files reach bubblewrap through pipes mapped to descriptors 10, 11, …; the values are
    // written after the spawn, so they never sit in a file, an argument or an environment block
    // other than the one the task asked for.
    let (file_names, env_names) = match &task.secrets {
        Some(d) => (d.files.clone(), d.env.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let mut mappings = Vec::new();
    let mut writers = Vec::new();
    let mut secret_fds = Vec::new();
    for (i, name) in file_names.iter().enumerate() {
        let Some((_, value)) = secrets.iter().find(|(n, _)| n == name) else {
            return Err(SandboxFailure::System(format!(
                "secret {name} was not delivered"
            )));
        };
        let (reader, writer) =
            std::io::pipe().map_err(|e| SandboxFailure::System(format!("creating a pipe: {e}")))?;
        let child_fd = 10 + i32::try_from(i).unwrap_or(0);
        mappings.push(command_fds::FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(reader),
            child_fd,
        });
        writers.push((writer, value.clone()));
        secret_fds.push((name.clone(), child_fd));
    }
    let mut secret_env: Vec<(String, zeroize::Zeroizing<Vec<u8>>)> = Vec::new();
    if !file_names.is_empty() {
        secret_env.push((
            "TRESOR_SECRETS_DIR".to_owned(),
            zeroize::Zeroizing::new(sandbox::SECRETS_DIR.as_bytes().to_vec()),
        ));
    }
    for name in &env_names {
        let Some((_, value)) = secrets.iter().find(|(n, _)| n == name) else {
            return Err(SandboxFailure::System(format!(
                "secret {name} was not delivered"
            )));
        };
        if value.expose_secret().contains(&0) {
            return Err(SandboxFailure::System(format!(
                "secret {name} contains a NUL byte and cannot be an environment variable; use it as a file"
            )));
        }
        secret_env.push((
            name.clone(),
            zeroize::Zeroizing::new(value.expose_secret().to_vec()),
        ));
    }

    let env = executor_env(image, executor);
    let workdir = match (executor.workdir.as_deref(), image) {
        (Some(dir), _) => dir,
        (None, Some(image)) => image
            .config
            .working_dir
            .as_deref()
            .filter(|d| d.starts_with('/'))
            .unwrap_or("/"),
        (None, None) => "/tmp",
    };
    let spec = SandboxSpec {
        settings: &task.sandbox,
        root,
        mounts,
        network: task.network,
        workdir,
        env: &env,
        command: &executor.command,
        secret_fds: &secret_fds,
        ro_binds: extras.ro_binds,
        image_root: image.map(|i| i.rootfs.as_path()),
        shared_dirs: extras.shared_dirs,
        group: extras.group,
        hold: (!extras.egress.is_empty()).then_some((sandbox::INFO_FD, sandbox::BLOCK_FD)),
    };
    // The environment travels as bubblewrap arguments through a pipe (see `sandbox::env_args`).
    let env_bytes = zeroize::Zeroizing::new(sandbox::env_args(
        spec.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(extras.env.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
            .chain(secret_env.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
    ));
    // Always a pipe, even for no variables: bubblewrap reads it to its end before it creates any
    // namespace or process, so the task's limits are in place before anything of it runs.
    let (env_reader, env_writer) =
        std::io::pipe().map_err(|e| SandboxFailure::System(format!("creating a pipe: {e}")))?;
    mappings.push(command_fds::FdMapping {
        parent_fd: std::os::fd::OwnedFd::from(env_reader),
        child_fd: sandbox::ENV_ARGS_FD,
    });
    // With egress, bubblewrap tells its sandbox's pid through one pipe and waits on another
    // until the proxy's socket is in place.
    let hold = match spec.hold {
        Some((info_fd, block_fd)) => {
            let pipe = || {
                std::io::pipe().map_err(|e| SandboxFailure::System(format!("creating a pipe: {e}")))
            };
            let (info_reader, info_writer) = pipe()?;
            let (block_reader, block_writer) = pipe()?;
            mappings.push(command_fds::FdMapping {
                parent_fd: std::os::fd::OwnedFd::from(info_writer),
                child_fd: info_fd,
            });
            mappings.push(command_fds::FdMapping {
                parent_fd: std::os::fd::OwnedFd::from(block_reader),
                child_fd: block_fd,
            });
            Some((info_reader, block_writer))
        }
        None => None,
    };
    let mut cmd = sandbox::command(&spec, true);
    {
        use command_fds::CommandFdExt;
        cmd.fd_mappings(mappings)
            .map_err(|_| SandboxFailure::System("secret descriptors collide".to_owned()))?;
    }
    if let Some(file) = stdin {
        cmd.stdin(Stdio::from(file));
    }
    let start_time = now();
    let mut child = cmd.spawn().map_err(|e| {
        SandboxFailure::System(format!(
            "cannot start the sandbox ({}): {e}",
            task.sandbox.bwrap.display()
        ))
    })?;
    drop(cmd);
    // bubblewrap now waits for its arguments: the moment to put it into the task's cgroup (or
    // under its rlimits), before it can start the executor. Everything it starts inherits them.
    let pid = child
        .id()
        .ok_or_else(|| SandboxFailure::System("the sandbox ended before it started".to_owned()))?;
    let confined = match confinement.cgroup {
        Some(cgroup) => cgroup.add(pid),
        None => limits::apply_rlimits(pid, confinement.limits),
    };
    if let Err(e) = confined {
        // Killed before its arguments (and so its start) arrive.
        let _ = child.start_kill();
        return Err(SandboxFailure::System(e));
    }
    {
        let mut writer = env_writer;
        let bytes = env_bytes.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let _ = writer.write_all(&bytes);
        });
    }
    for (mut writer, value) in writers {
        // A pipe holds 64 KiB, the largest secret; still, never block the runtime on it.
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let _ = writer.write_all(value.expose_secret());
        });
    }
    // Kept until the executor ends: dropping it stops the proxy and its connections.
    let mut proxy = None;
    // Held until the executor ends too: on a failure below, bubblewrap is killed before it
    // could read an end of file here and start the command without its proxy.
    let mut _release = None;
    if let Some((info, mut release)) = hold {
        match start_proxy(info, extras.egress, task.egress_private, redactor).await {
            Ok(started) => {
                proxy = Some(started);
                release
                    .write_all(b"1")
                    .map_err(|e| SandboxFailure::System(format!("starting the sandbox: {e}")))?;
            }
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(SandboxFailure::System(e));
            }
        }
        _release = Some(release);
    }
    let budget = confinement.log_budget;
    let tail = task.log_tail_bytes.min(budget);
    let out = child.stdout.take();
    let err = child.stderr.take();
    let wait = async {
        let Some(deadline) = confinement.deadline else {
            return (child.wait().await, false);
        };
        let waited = tokio::time::timeout_at(deadline, child.wait()).await;
        match waited {
            Ok(status) => (status, false),
            Err(_) => {
                // The time is up. bubblewrap's end takes its pid namespace, and with it every
                // process of the executor; the cgroup is emptied too, to be sure.
                let _ = child.start_kill();
                if let Some(cgroup) = confinement.cgroup {
                    cgroup.kill_all();
                }
                (child.wait().await, true)
            }
        }
    };
    let (stdout, stderr, (status, timed_out)) = tokio::join!(
        capture(out, stdout_file, tail, redactor, (live, 0)),
        capture(err, stderr_file, tail, redactor, (live, 1)),
        wait
    );
    let status =
        status.map_err(|e| SandboxFailure::System(format!("waiting for the sandbox: {e}")))?;
    let exit_code = exit_code(status);
    // The task's log keeps at most `budget` bytes of stdout and stderr in all.
    let (mut stdout, out_cut, out_total) = stdout;
    let (mut stderr, err_cut, err_total) = stderr;
    let (keep_out, keep_err) = share_log_budget(stdout.len(), stderr.len(), budget);
    let out_cut = keep_tail(&mut stdout, keep_out) || out_cut;
    let err_cut = keep_tail(&mut stderr, keep_err) || err_cut;
    let mut notes = Vec::new();
    for (name, cut, kept, total) in [
        ("stdout", out_cut, stdout.len(), out_total),
        ("stderr", err_cut, stderr.len(), err_total),
    ] {
        if cut {
            notes.push(format!(
                "its {name} was truncated to its last {kept} of {total} bytes (the log keeps {} bytes of each stream, local.log_tail_bytes, and {} bytes per task, local.max_log_bytes)",
                task.log_tail_bytes,
                task.limits
                    .log_bytes
                    .map_or_else(|| "unlimited".to_owned(), |b| b.to_string()),
            ));
        }
    }
    if let Some(proxy) = proxy {
        let refused = proxy.refused();
        if !refused.is_empty() {
            notes.push(format!(
                "its egress proxy refused {} (not on the workspace's allowlist, or resolving to this host's own addresses)",
                refused.join(", ")
            ));
        }
    }
    let stderr_text = String::from_utf8_lossy(&stderr).into_owned();
    // bubblewrap reports its own setup failures on stderr with exit code 1. A command that
    // cannot be executed is the task's fault (like exit 127 in a shell); anything else is ours.
    if exit_code == 1
        && stderr_text.starts_with("bwrap: ")
        && !stderr_text.starts_with("bwrap: execvp")
    {
        return Err(SandboxFailure::System(format!(
            "the sandbox could not be set up: {}",
            stderr_text.trim()
        )));
    }
    let exit_code = if exit_code == 1 && stderr_text.starts_with("bwrap: execvp") {
        127
    } else {
        exit_code
    };
    Ok(ExecutorRun {
        log: TesExecutorLog {
            start_time: Some(start_time),
            end_time: Some(now()),
            stdout: Some(String::from_utf8_lossy(&stdout).into_owned()),
            stderr: Some(stderr_text),
            exit_code,
        },
        timed_out,
        kept_bytes: stdout.len() + stderr.len(),
        notes,
    })
}

/// Reads the sandbox's first process from bubblewrap's `--info-fd` and serves the egress proxy
/// on a socket bound in that process's network namespace.
async fn start_proxy(
    info: std::io::PipeReader,
    rules: &[tresor_domain::EgressRule],
    allow_private: bool,
    redactor: Option<&Redactor>,
) -> Result<crate::egress::EgressProxy, String> {
    let listener = tokio::task::spawn_blocking(move || {
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(rename = "child-pid")]
            child_pid: u32,
            #[serde(rename = "net-namespace")]
            net_namespace: u64,
        }
        // bubblewrap writes one JSON object once its namespaces exist; an end of file first
        // means it failed, and its stderr says why.
        let info: Info = serde_json::Deserializer::from_reader(info)
            .into_iter::<Info>()
            .next()
            .ok_or_else(|| "the sandbox ended before it started".to_owned())?
            .map_err(|e| format!("reading the sandbox's process: {e}"))?;
        crate::egress::listen_in(info.child_pid, info.net_namespace)
    })
    .await
    .map_err(|e| format!("binding the egress proxy: {e}"))??;
    crate::egress::EgressProxy::start(
        listener,
        rules.to_vec(),
        allow_private,
        redactor.cloned().unwrap_or_default(),
    )
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Reads a pipe to its end, copying everything to `file` (if any) and keeping the last `tail`
/// bytes, redacted as a stream (before the cut, so a value split by the cut is still masked).
/// Returns the kept bytes, whether anything was cut, and how many bytes were read.
async fn capture(
    pipe: Option<impl AsyncRead + Unpin>,
    file: Option<std::fs::File>,
    tail: usize,
    redactor: Option<&Redactor>,
    live: (&LiveOutput, usize),
) -> (Vec<u8>, bool, u64) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false, 0);
    };
    let mut total: u64 = 0;
    let mut cut = false;
    let mut file = file.map(tokio::fs::File::from_std);
    let mut stream = redactor.map(Redactor::stream);
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total = total.saturating_add(n as u64);
        if let Some(f) = file.as_mut()
            && f.write_all(&buf[..n]).await.is_err()
        {
            file = None;
        }
        let safe = match stream.as_mut() {
            Some(s) => s.push(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        live.0.push(live.1, &safe, tail);
        kept.extend(safe);
        if kept.len() > tail.saturating_mul(2).max(64 * 1024) {
            cut |= keep_tail_from_a_break(&mut kept, tail);
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
    if let Some(s) = stream {
        kept.extend(s.finish());
    }
    // Tokens and presigned URLs a task prints are masked by shape, like its secrets by value,
    // before the tail is cut: a cut through a token would leave a piece no shape matches.
    let mut masked = tresor_crypto::redact::mask_credentials(&kept).into_owned();
    cut |= keep_tail(&mut masked, tail);
    (masked, cut, total)
}

/// The files one `file://` output declaration delivers, each with its host destination, checked
/// to lie in an allowed directory.
fn file_deliveries(
    task: &WorkerTask,
    root: &Path,
    output: &Output,
) -> Result<Vec<(OutputFile, PathBuf)>, SystemError> {
    let mut deliveries = Vec::new();
    for file in output_files(root, output)? {
        let dest = file_url_path(&file.url)?;
        if !paths::is_within(&dest, &task.allowed_dirs) {
            return Err(SystemError(format!(
                "output {} is outside the directories this server allows",
                file.url
            )));
        }
        deliveries.push((file, dest));
    }
    Ok(deliveries)
}

/// Delivers `file://` outputs with the task user's rights: each file is created by, and owned
/// by, the task's user, in its workspace's group. Returns a log entry per delivered file.
async fn deliver_files(
    task: &WorkerTask,
    deliveries: Vec<(OutputFile, PathBuf)>,
) -> Result<Vec<TesOutputFileLog>, SystemError> {
    let allowed = task.allowed_dirs.clone();
    let shared = task.file_group.is_some();
    with_task_rights(task, move || {
        let mut delivered = Vec::with_capacity(deliveries.len());
        for (file, dest) in deliveries {
            let size = copy_out(&file.host, &dest, &allowed, shared).map_err(sys(format!(
                "delivering {} to {}",
                file.container_path, file.url
            )))?;
            delivered.push(TesOutputFileLog {
                url: file.url,
                path: file.container_path,
                size_bytes: size.to_string(),
            });
        }
        Ok(delivered)
    })
    .await
}

/// Creates `dir` and its missing parents. With `shared` (the workspace's directory has a group
/// of its own), each new directory is 2770: the next task of the workspace, another user in the
/// same group (which the setgid bit passes on), may add files to it, and nobody else may look.
fn create_parents(dir: &Path, shared: bool) -> std::io::Result<()> {
    if !shared {
        return std::fs::create_dir_all(dir);
    }
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_parents(parent, shared)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies to a temporary name beside `dest`, then renames, so readers never see half a file.
/// The destination's real parent must still be inside an allowed directory once symbolic links
/// on the host are resolved. With `shared`, the file is 0640: its workspace's group may read it.
fn copy_out(source: &Path, dest: &Path, allowed: &[PathBuf], shared: bool) -> std::io::Result<u64> {
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    create_parents(parent, shared)?;
    let real_parent = std::fs::canonicalize(parent)?;
    if !paths::is_within(&real_parent, allowed) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the destination resolves outside the allowed directories",
        ));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut nonce = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut nonce)
    })?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = real_parent.join(format!(
        ".{}.{nonce}.tresor-partial",
        name.to_string_lossy()
    ));
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(source)?;
    // A fresh, unguessable name, created exclusively and never through a symlink.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if shared { 0o640 } else { 0o666 })
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)?;
    if shared {
        // The mode given at creation passes through the umask (a service with `UMask=0077`
        // would make it 0600, which the workspace's group cannot read): set it on the open file.
        writer.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    }
    let size = std::io::copy(&mut reader, &mut writer)?;
    writer.sync_all()?;
    std::fs::rename(&tmp, real_parent.join(name))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_output_shows_whole_lines_only_with_tokens_masked() {
        let live = LiveOutput::default();
        assert!(live.snapshot().is_none());
        live.push(0, b"one\ntw", 1024);
        let [out, err] = live.snapshot().unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("one\n", ""));
        assert!(live.snapshot().is_none(), "nothing new since");
        live.push(
            0,
            b"o\ntoken eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3Jrc3BhY2UifQ.c2lnbmF0dXJlLWJ5dGVz\n",
            1024,
        );
        live.push(1, b"a token begins eyJhbGciOiJSUzI1NiJ9.eyJzdW", 1024);
        let [out, err] = live.snapshot().unwrap();
        assert!(out.starts_with("one\ntwo\ntoken "), "{out}");
        assert!(!out.contains("eyJzdWIi"), "{out}");
        assert_eq!(err, "", "a line still being written waits for its end");
        // A tail cut at its front moves on to a break, so no token loses its start.
        live.push(1, b"\n", 8);
        let [_, err] = live.snapshot().unwrap();
        assert!(!err.contains("eyJ") && !err.contains("zdW"), "{err:?}");
    }

    #[test]
    fn stdout_and_stderr_share_the_task_log_budget() {
        let cases = [
            ((10, 20, 100), (10, 20)),
            ((10, 200, 100), (10, 90)),
            ((200, 10, 100), (90, 10)),
            ((200, 300, 100), (50, 50)),
            ((200, 300, 0), (0, 0)),
        ];
        for ((out, err, budget), expected) in cases {
            assert_eq!(
                share_log_budget(out, err, budget),
                expected,
                "{out} {err} {budget}"
            );
        }
        let mut bytes = b"0123456789".to_vec();
        assert!(!keep_tail(&mut bytes, 10));
        assert!(keep_tail(&mut bytes, 3));
        assert_eq!(bytes, b"789");
    }

    #[test]
    fn a_cut_through_a_token_keeps_none_of_it() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3Jrc3BhY2UifQ.c2lnbmF0dXJlLWJ5dGVz";
        let mut log = format!("token {jwt}\nnext line\n").into_bytes();
        // A tail that starts inside the token: the token's rest is dropped with it.
        assert!(keep_tail_from_a_break(&mut log, 30));
        assert_eq!(log, b"next line\n");
        let mut blob = vec![b'x'; 100];
        assert!(keep_tail_from_a_break(&mut blob, 10));
        assert!(blob.is_empty());
    }

    /// Set in the copy of the test binary that `shared_outputs_get_their_modes_under_any_umask`
    /// runs under umask 0077.
    const UMASK_CHILD: &str = "TRESOR_TEST_UMASK_0077";

    #[test]
    fn shared_outputs_get_their_modes_under_any_umask() {
        if std::env::var_os(UMASK_CHILD).is_none() {
            // The umask belongs to the whole process, where other tests run at the same time:
            // run this test alone in a copy of the test binary that a shell gave umask 0077.
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("umask 0077 && exec \"$0\" \"$@\"")
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "worker::tests::shared_outputs_get_their_modes_under_any_umask",
                    "--test-threads=1",
                ])
                .env(UMASK_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let area = std::fs::canonicalize(dir.path()).unwrap();
        let source = area.join("source");
        std::fs::write(&source, b"result").unwrap();
        let dest = area.join("out").join("deep").join("result.txt");
        let size = copy_out(&source, &dest, std::slice::from_ref(&area), true).unwrap();
        assert_eq!(size, 6);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dest), 0o640);
        assert_eq!(mode(&area.join("out")), 0o2770);
        assert_eq!(mode(&area.join("out").join("deep")), 0o2770);
    }
}

//! The local executor as the server sees it: one `tresor worker` process per task, started in its
//! own process group, watched until it exits, re-attached after a server restart, killed on cancel.

use std::fs::{File, OpenOptions, TryLockError};
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tresor_domain::{ComputeEnv, ComputeEnvKind, TaskId, TaskSpec};

use crate::backend::{
    BackendEvent, Capabilities, CapacityUnit, ComputeBackend, Events, HandOff, JobView, Launch,
    Observation, Start, Submitted,
};
use crate::limits::{self, Enforcement, LimitSettings, TaskLimits};
use crate::users::TaskIds;
use crate::worker::{LOCK_FILE, LOG_FILE, PID_FILE, ROOT_DIR, STATUS_FILE, TASK_FILE};
use crate::{Error, SandboxSettings, WorkerStatus, WorkerTask};

/// The local executor's slice of the settings.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Where task directories live; must be traversable by the sandbox user.
    pub work_root: PathBuf,
    /// The `tresor` binary whose `worker` subcommand runs a task.
    pub worker_program: PathBuf,
    pub sandbox: SandboxSettings,
    /// Canonical host directories for `file://` inputs and outputs.
    pub allowed_dirs: Vec<PathBuf>,
    /// Bytes of each executor's stdout/stderr kept in the task log.
    pub log_tail_bytes: usize,
    /// CPU cores that running tasks may request in total.
    pub slots: u32,
    /// Whether a task may ask for network access (`backend_parameters.network`).
    pub allow_network: bool,
    /// Whether http(s) inputs may come from loopback, private or link-local addresses.
    pub allow_private_http_inputs: bool,
    /// Whether workspaces may have egress allowlists (any user can create a workspace and so
    /// set one: the operator decides whether tasks get a way out at all).
    pub allow_egress: bool,
    /// Whether those allowlists may reach loopback, private and link-local addresses (an
    /// internal package mirror, say); without it such destinations are refused.
    pub allow_private_egress: bool,
    /// A tmpfs on the host where workers keep each task's identity token (default /dev/shm).
    pub runtime_dir: PathBuf,
    /// What a task gets when it asks for nothing, and the most it may ask for.
    pub limits: LimitSettings,
    /// Host ids from which each running task gets a uid, and the gid of the same number, of its
    /// own (`local.task_uid_range`); `None` when the server is not root and runs executors as
    /// itself.
    pub task_ids: Option<RangeInclusive<u32>>,
    /// Host gids from which each workspace's `file://` directory gets a group of its own
    /// (`local.workspace_gid_range`); `None` when the server is not root.
    pub workspace_gids: Option<RangeInclusive<u32>>,
}

/// Resolves once the worker process is gone; carries how it ended, for system logs.
#[derive(Debug)]
pub struct WorkerExit(oneshot::Receiver<String>);

impl WorkerExit {
    /// Waits for the worker to end and says how it did.
    pub async fn wait(self) -> String {
        self.0
            .await
            .unwrap_or_else(|_| "the worker watcher stopped".to_owned())
    }
}

/// What a restarted server finds for a task it believed active.
#[derive(Debug)]
pub enum Attach {
    /// The worker still runs; the future resolves when it ends.
    Alive(WorkerExit),
    /// No worker runs for the task (none was started, or it ended).
    Gone,
}

/// The id of the local compute environment, which every workspace uses until it chooses another.
pub const LOCAL_ENV: &str = "local";
/// The image cache inside a work root (the local one, or a SLURM environment's shared one).
pub const IMAGE_CACHE_DIR: &str = ".images";

#[derive(Debug)]
pub struct LocalExecutor {
    settings: LocalSettings,
    /// How this host enforces task limits, found when the executor is made.
    enforcement: Enforcement,
    /// The host user each task holds, when tasks get their own.
    ids: Option<TaskIds>,
    env: ComputeEnv,
    capabilities: Capabilities,
    /// Workers this process is starting or started, by task.
    launching: Arc<Mutex<HashMap<TaskId, Launching>>>,
}

/// The part of a task file that says which host user the task runs as.
#[derive(serde::Deserialize)]
struct RecordedUser {
    sandbox: SandboxSettings,
}

impl LocalExecutor {
    /// Creates the work root (mode 0711: the sandbox users may traverse it, nobody may list it),
    /// finds out how this host enforces task limits, and learns from the task directories left
    /// by a previous server which host ids their tasks hold (the reconciler then removes the
    /// directories of tasks that ended, which frees their ids).
    pub fn new(settings: LocalSettings) -> Result<LocalExecutor, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&settings.work_root)
            .map_err(Error::io(format!(
                "creating the work root {}",
                settings.work_root.display()
            )))?;
        let ids = settings
            .task_ids
            .clone()
            .map(|range| TaskIds::new(range, &settings.work_root));
        if let Some(ids) = &ids {
            let entries = std::fs::read_dir(&settings.work_root).map_err(Error::io(format!(
                "listing the work root {}",
                settings.work_root.display()
            )))?;
            for entry in entries.flatten() {
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| TaskId::parse(n).ok())
                else {
                    continue;
                };
                if let Some(uid) = recorded_uid(&entry.path()) {
                    ids.hold(uid, id);
                }
            }
        }
        let enforcement = limits::detect(&settings.work_root);
        tracing::info!(
            cgroups = ?enforcement.cgroups,
            disk_images = enforcement.disk_image.is_some(),
            "task limits: memory, CPU and processes by {}; disk by {}",
            if enforcement.cgroups.is_some() { "a cgroup per task" } else { "rlimits on the sandbox" },
            if enforcement.disk_image.is_some() { "an ext4 image per task" } else { "a size check after each executor" },
        );
        let capabilities = Capabilities {
            backend_parameters: BACKEND_PARAMETERS,
            max_cpu_cores: Some(settings.slots),
            max_ram_gb: Some(settings.limits.max_ram_gb),
            max_disk_gb: Some(settings.limits.max_disk_gb),
            max_run_seconds: Some(settings.limits.max_run_seconds),
            capacity: settings.slots,
            capacity_unit: CapacityUnit::Cores,
            hand_off: HandOff::Direct,
            poll_interval: None,
            server_url: None,
            runtime_dir: settings.runtime_dir.clone(),
            handle_key: None,
            bootstrap_ttl: None,
            image_cache: settings.work_root.join(IMAGE_CACHE_DIR),
        };
        Ok(LocalExecutor {
            settings,
            enforcement,
            ids,
            env: ComputeEnv {
                id: LOCAL_ENV.to_owned(),
                kind: ComputeEnvKind::Local,
            },
            capabilities,
            launching: Arc::default(),
        })
    }

    pub fn settings(&self) -> &LocalSettings {
        &self.settings
    }

    /// How this host enforces task limits.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// The host directory of a task.
    pub fn task_dir(&self, id: &TaskId) -> PathBuf {
        self.settings.work_root.join(id.as_str())
    }

    /// Writes the task's directory and starts its worker. When tasks get host users of their
    /// own, the task gets the lowest free id of the range as its uid and gid, recorded in its
    /// task file and held until `remove`. Returns the worker's pid (also its process group id)
    /// and a future that resolves when it exits.
    pub async fn start(&self, id: &TaskId, task: &WorkerTask) -> Result<(i32, WorkerExit), Error> {
        let mut task = task.clone();
        let dir = self.task_dir(id);
        // A leftover directory belongs to an earlier attempt that provably never ran (the
        // reconciler only requeues when the lock was free and no executor had started).
        self.release(id);
        remove_dir(&dir)?;
        // The directory exists before the task claims a host id, so a claim without a directory
        // is known to be stale (see `TaskIds`).
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        if let Some(ids) = &self.ids {
            let uid = ids
                .acquire(id)
                .ok_or_else(|| Error::NoFreeId { size: ids.size() })?;
            task.sandbox.run_as = Some((uid, uid));
        }
        let spec = serde_json::to_vec(&task).map_err(Error::Encode)?;
        write_private(&dir.join(TASK_FILE), &spec)?;

        // The lock is taken here and handed to the worker as its stdin, so it is held without a
        // gap from before the spawn until the worker's last breath.
        let lock = private_file(&dir.join(LOCK_FILE))?;
        lock.try_lock()
            .map_err(|e| Error::io("locking the new task directory")(std::io::Error::other(e)))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(LOG_FILE))
            .map_err(Error::io("opening the worker log"))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("opening the worker log"))?;

        let mut child = tokio::process::Command::new(&self.settings.worker_program)
            .arg("worker")
            .arg("--task-dir")
            .arg(&dir)
            .env_clear()
            .stdin(Stdio::from(lock))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own process group: a signal to the server's group does not reach it, and a
            // cancel can kill the worker and its sandboxes with one killpg.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(Error::io(format!(
                "starting the worker {}",
                self.settings.worker_program.display()
            )))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                Error::io("reading the worker's pid")(std::io::Error::other("no pid"))
            })?;
        // For cancels after a server restart; the lock, not this file, says whether it is alive.
        if let Err(e) = std::fs::write(dir.join(PID_FILE), pid.to_string()) {
            tracing::warn!(task = %id, error = %e, "recording the worker pid");
        }
        let (done, exit) = oneshot::channel();
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("the worker could not be waited for: {e}"),
            };
            let _ = done.send(how);
        });
        Ok((pid, WorkerExit(exit)))
    }

    /// Finds out whether a worker still runs for a task, after a server restart.
    pub fn attach(&self, id: &TaskId) -> Result<Attach, Error> {
        let path = self.task_dir(id).join(LOCK_FILE);
        let lock = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Attach::Gone),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()))(e)),
        };
        match lock.try_lock_shared() {
            Ok(()) => Ok(Attach::Gone),
            Err(TryLockError::WouldBlock) => {
                let (done, exit) = oneshot::channel();
                // A blocking shared lock returns exactly when the worker's exclusive lock is released.
                tokio::task::spawn_blocking(move || {
                    let how = match lock.lock_shared() {
                        Ok(()) => "the re-attached worker exited".to_owned(),
                        Err(e) => format!("waiting for the re-attached worker failed: {e}"),
                    };
                    let _ = done.send(how);
                });
                Ok(Attach::Alive(WorkerExit(exit)))
            }
            Err(TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()))(e)),
        }
    }

    /// Whether a worker holds the task's lock right now.
    pub fn is_running(&self, id: &TaskId) -> bool {
        worker_holds_lock(&self.task_dir(id))
    }

    /// The pid (and process group id) of the task's worker, as recorded when it was started.
    pub fn worker_pid(&self, id: &TaskId) -> Option<i32> {
        std::fs::read_to_string(self.task_dir(id).join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The worker's latest report, if it wrote one.
    pub fn read_status(&self, id: &TaskId) -> Option<WorkerStatus> {
        let raw = std::fs::read(self.task_dir(id).join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Kills the worker and everything it started (its process group), if it still runs.
    /// The lock check guards against signalling a reused pid.
    pub fn kill(&self, id: &TaskId, pid: i32) {
        if let Err(e) = kill_worker_in(&self.task_dir(id), pid) {
            tracing::warn!(task = %id, error = %e, "killing the worker's process group");
        }
    }

    /// Removes the task's directory and what a worker killed before its own cleanup leaves
    /// behind (its identity token directory, its disk image's mount and its cgroup), then frees
    /// the task's host id, unless its worker still holds the lock: with the worker gone, every
    /// sandboxed process of the task is gone (bubblewrap dies with its parent), and nothing runs
    /// as that id any more.
    pub fn remove(&self, id: &TaskId) -> Result<(), Error> {
        let worker_alive = self.is_running(id);
        self.release(id);
        let prefix = crate::session::identity_dir_prefix(id.as_str());
        if let Ok(entries) = std::fs::read_dir(&self.settings.runtime_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_dir(&entry.path())?;
                }
            }
        }
        let recorded = recorded_uid(&self.task_dir(id));
        remove_dir(&self.task_dir(id))?;
        if let Some(ids) = &self.ids
            && !worker_alive
        {
            ids.release(id, recorded);
        }
        Ok(())
    }

    /// Unmounts the task's disk image and removes its cgroup, if a worker left them.
    fn release(&self, id: &TaskId) {
        limits::release_task(
            &self.enforcement,
            &self.task_dir(id).join(ROOT_DIR),
            id.as_str(),
        );
    }
}

/// The host uid the task file in `task_dir` says its task runs as.
fn recorded_uid(task_dir: &Path) -> Option<u32> {
    let raw = std::fs::read(task_dir.join(TASK_FILE)).ok()?;
    let recorded: RecordedUser = serde_json::from_slice(&raw).ok()?;
    recorded.sandbox.run_as.map(|(uid, _)| uid)
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()))(e)),
    }
}

fn private_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .map_err(Error::io(format!("writing {}", path.display())))
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("the worker exited with code {code}"),
        (None, Some(signal)) => format!("the worker was killed by signal {signal}"),
        _ => "the worker ended".to_owned(),
    }
}

/// The backend parameters the local executor honours.
pub const BACKEND_PARAMETERS: &[&str] = &["network", "time_limit"];
/// How long cancel waits for a killed worker to be gone.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A worker this process is starting or has started.
#[derive(Debug, Default)]
struct Launching {
    /// Known once the worker is spawned.
    pid: Option<i32>,
    /// A cancel came before the pid was known: the starter kills the worker once spawned.
    cancel_requested: bool,
}

impl LocalExecutor {
    /// Kills a worker's process group and waits (bounded) until its lock is free.
    async fn kill_and_wait(&self, id: &TaskId, pid: i32) {
        self.kill(id, pid);
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while self.is_running(id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Sends `Ended` for the task once its worker exits.
    fn report_exit(&self, id: &TaskId, exit: WorkerExit, events: &Events) {
        let events = events.clone();
        let id = id.clone();
        let launching = self.launching.clone();
        tokio::spawn(async move {
            let how = exit.wait().await;
            if let Ok(mut launching) = launching.lock() {
                launching.remove(&id);
            }
            let _ = events.send(BackendEvent::Ended { id, how });
        });
    }

    async fn submit_task(&self, launch: Launch<'_>, events: &Events) -> Result<Submitted, Error> {
        let Start::Direct(task) = launch.start else {
            return Err(Error::Unsupported(
                "the local executor starts workers with their task in hand, not a bootstrap token",
            ));
        };
        let id = launch.id;
        if let Ok(mut launching) = self.launching.lock() {
            launching.insert(id.clone(), Launching::default());
        }
        let (pid, exit) = match self.start(id, task).await {
            Ok(started) => started,
            Err(e) => {
                if let Ok(mut launching) = self.launching.lock() {
                    launching.remove(id);
                }
                return Err(e);
            }
        };
        let canceled_meanwhile = self.launching.lock().is_ok_and(|mut launching| {
            launching.get_mut(id).is_some_and(|l| {
                l.pid = Some(pid);
                l.cancel_requested
            })
        });
        if canceled_meanwhile {
            self.kill(id, pid);
        }
        self.report_exit(id, exit, events);
        Ok(Submitted { handle: None })
    }

    async fn cancel_task(&self, id: &TaskId) {
        // The pid is known unless this process is still starting the worker; then the starter
        // kills it as soon as it has one. A worker another process started is found by its
        // recorded pid.
        let pid = match self.launching.lock() {
            Ok(mut launching) => match launching.get_mut(id) {
                Some(l) if l.pid.is_none() => {
                    l.cancel_requested = true;
                    return;
                }
                Some(l) => l.pid,
                None => None,
            },
            Err(_) => None,
        };
        if let Some(pid) = pid.or_else(|| self.worker_pid(id)) {
            self.kill_and_wait(id, pid).await;
        }
    }

    /// A task's limits here: what it asked for (validation kept it within the maxima), else
    /// the defaults.
    fn limits_for(&self, spec: &TaskSpec) -> TaskLimits {
        let settings = &self.settings.limits;
        let resources = &spec.resources;
        let bytes = |gb: f64, least: u64| ((gb * limits::GB) as u64).max(least);
        TaskLimits {
            memory_bytes: Some(bytes(
                resources.ram_gb.unwrap_or(settings.default_ram_gb),
                limits::MIN_MEMORY_BYTES,
            )),
            cpu_cores: Some(resources.cpu_cores.max(1)),
            disk_bytes: Some(bytes(
                resources.disk_gb.unwrap_or(settings.default_disk_gb),
                limits::MIN_DISK_BYTES,
            )),
            run_seconds: Some(
                resources
                    .time_limit_seconds
                    .filter(|s| *s > 0)
                    .unwrap_or(settings.max_run_seconds)
                    .min(settings.max_run_seconds),
            ),
            processes: Some(settings.max_processes),
            log_bytes: Some(settings.max_log_bytes),
            enforcement: self.enforcement.clone(),
        }
    }
}

impl ComputeBackend for LocalExecutor {
    fn env(&self) -> &ComputeEnv {
        &self.env
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn worker_limits(&self, spec: &TaskSpec) -> TaskLimits {
        self.limits_for(spec)
    }

    fn submit<'a>(
        &'a self,
        launch: Launch<'a>,
        events: &'a Events,
    ) -> BoxFuture<'a, Result<Submitted, Error>> {
        Box::pin(self.submit_task(launch, events))
    }

    fn cancel<'a>(
        &'a self,
        id: &'a TaskId,
        _handle: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.cancel_task(id).await;
            Ok(())
        })
    }

    fn observe<'a>(
        &'a self,
        tasks: &'a [(TaskId, Option<String>)],
    ) -> BoxFuture<'a, Result<HashMap<TaskId, Observation>, Error>> {
        Box::pin(async move {
            Ok(tasks
                .iter()
                .map(|(id, _)| {
                    let seen = if self.is_running(id) {
                        Observation::Active { handle: None }
                    } else {
                        Observation::Ended {
                            how: "the worker is gone".to_owned(),
                            hit_limit: false,
                            messages: Vec::new(),
                        }
                    };
                    (id.clone(), seen)
                })
                .collect())
        })
    }

    fn adopt<'a>(
        &'a self,
        id: &'a TaskId,
        _handle: Option<&'a str>,
        events: &'a Events,
    ) -> BoxFuture<'a, Result<Observation, Error>> {
        Box::pin(async move {
            match self.attach(id)? {
                Attach::Alive(exit) => {
                    self.report_exit(id, exit, events);
                    Ok(Observation::Active { handle: None })
                }
                Attach::Gone if self.task_dir(id).exists() => Ok(Observation::Ended {
                    how: "the worker was gone when its task was adopted".to_owned(),
                    hit_limit: false,
                    messages: Vec::new(),
                }),
                Attach::Gone => Ok(Observation::Unknown),
            }
        })
    }

    fn last_status(&self, id: &TaskId) -> Option<WorkerStatus> {
        self.read_status(id)
    }

    fn worker_log(&self, id: &TaskId) -> Option<String> {
        crate::worker::read_log_tail(&self.task_dir(id))
    }

    fn clean_up(&self, id: &TaskId) -> Result<(), Error> {
        self.remove(id)
    }

    fn leftovers(&self) -> Vec<TaskId> {
        crate::paths::task_dirs_in(&self.settings.work_root)
    }

    fn job<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Result<Option<JobView>, Error>> {
        Box::pin(async { Ok(None) })
    }
}
/// Whether a worker holds the lock of the task directory `dir` right now.
fn worker_holds_lock(dir: &Path) -> bool {
    let Ok(lock) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(lock.try_lock_shared(), Err(TryLockError::WouldBlock))
}

/// Kills the worker of the task directory `dir` and everything it started (its process group),
/// if it still runs: the lock check guards against signalling a reused pid.
fn kill_worker_in(dir: &Path, pid: i32) -> Result<(), rustix::io::Errno> {
    if !worker_holds_lock(dir) {
        return Ok(());
    }
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => rustix::process::kill_process_group(pid, rustix::process::Signal::KILL),
        None => Ok(()),
    }
}

/// Kills every worker with a task directory under `work_root`, for a program that owns a work
/// root and ends with it (a test, a benchmark). The server never calls it: its workers outlive
/// it by design, and the next server adopts them.
pub fn kill_workers_under(work_root: &Path) {
    let Ok(dirs) = std::fs::read_dir(work_root) else {
        return;
    };
    for dir in dirs.flatten().map(|d| d.path()) {
        let pid = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid {
            let _ = kill_worker_in(&dir, pid);
        }
    }
}

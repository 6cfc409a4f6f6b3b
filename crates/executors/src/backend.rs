//! The compute-backend interface: the one place where a kind of compute environment plugs in.
//!
//! The service's supervisor owns every task's state machine and the store; a backend only moves
//! work: it submits a task's worker, cancels it, says what became of it, adopts it again after a
//! restart, and cleans up after it. A backend never writes a task's state: it reports, and the
//! supervisor decides.
//!
//! How the supervisor learns that work ended depends on the backend, and the interface allows
//! both: a backend that can watch its work (the local one waits on each worker) sends
//! [`BackendEvent::Ended`] on the channel the supervisor gave it; a backend that cannot (a batch
//! scheduler) is asked with [`ComputeBackend::observe`] every `poll_interval`, once for all its
//! tasks. Either way, the worker's own report over HTTP is the primary signal of a task's result;
//! the status file a worker leaves is read only to recover when that report never arrived.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tresor_domain::{ComputeEnv, TaskId, TaskSpec};

use crate::{Error, TaskLimits, WorkerStatus, WorkerTask};

/// What a task costs of a backend's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityUnit {
    /// Capacity counts CPU cores: a task holds as many as it asked for (the local host).
    Cores,
    /// Capacity counts tasks in flight: the scheduler behind the backend places them.
    Tasks,
}

/// How a task's worker gets its assignment (the `WorkerTask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOff {
    /// The backend starts the worker with the assignment in hand, written where only the worker
    /// reads it (the local host).
    Direct,
    /// The backend starts a job that carries only a one-time bootstrap token, which the worker
    /// exchanges over HTTP for its assignment once the job runs (batch schedulers, Kubernetes,
    /// cloud batch): nothing long-lived is in the job's definition.
    Bootstrap,
}

/// What a backend can do: validation, service-info and the supervisor read it.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The `backend_parameters` keys it honours (lowercase).
    pub backend_parameters: &'static [&'static str],
    /// The most cores, memory, disk and run time one task may ask for; `None` where the backend
    /// decides when the work is submitted (SLURM refuses a job that fits no node).
    pub max_cpu_cores: Option<u32>,
    pub max_ram_gb: Option<f64>,
    pub max_disk_gb: Option<f64>,
    pub max_run_seconds: Option<u64>,
    /// How much work runs at once, in `capacity_unit`s.
    pub capacity: u32,
    pub capacity_unit: CapacityUnit,
    pub hand_off: HandOff,
    /// How often the supervisor asks about this backend's work; `None` when the backend sends
    /// [`BackendEvent::Ended`] itself.
    pub poll_interval: Option<Duration>,
    /// Where this backend's workers reach the server; `None`: the server's own callback URL.
    pub server_url: Option<String>,
    /// A tmpfs, on the machines where workers run, for each task's identity token directory.
    pub runtime_dir: PathBuf,
    /// The task log metadata key under which a task's handle is shown (`slurm_job_id`).
    pub handle_key: Option<&'static str>,
    /// How long after its work starts a bootstrap token may be exchanged.
    pub bootstrap_ttl: Option<Duration>,
    /// The image cache of the machines where workers run (the shared work dir, or a directory
    /// on each node's own disk).
    pub image_cache: PathBuf,
}

/// How a task's worker starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// With its assignment in hand ([`HandOff::Direct`]).
    Direct(&'a WorkerTask),
    /// With a one-time token for its assignment ([`HandOff::Bootstrap`]).
    Bootstrap { server_url: &'a str, token: &'a str },
}

/// One task to submit.
#[derive(Debug)]
pub struct Launch<'a> {
    pub id: &'a TaskId,
    pub spec: &'a TaskSpec,
    pub start: Start<'a>,
}

/// A submitted task: the backend's handle for its work, if it has one (a SLURM job id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submitted {
    pub handle: Option<String>,
}

/// What a backend knows of a task's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// It still runs, or waits in the backend's own queue; `handle` once the backend knows it
    /// (a job found by its name after a restart).
    Active { handle: Option<String> },
    /// It is over. `how` says how, for the task's system logs; `hit_limit` whether it ran into a
    /// limit the task asked for (time, memory), which makes it the task's error, not the system's.
    Ended {
        how: String,
        hit_limit: bool,
        messages: Vec<String>,
    },
    /// The backend does not know it: never submitted, or long forgotten.
    Unknown,
}

/// What a backend tells the supervisor without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// The task's work is over (its worker exited).
    Ended { id: TaskId, how: String },
}

/// Where a backend sends its [`BackendEvent`]s.
pub type Events = mpsc::UnboundedSender<BackendEvent>;

/// A kind of compute environment. Local and SLURM implement it; ARCHITECTURE.md says how a
/// remote TES server, Kubernetes and a cloud batch service map onto it.
pub trait ComputeBackend: Send + Sync + std::fmt::Debug {
    /// The environment this backend serves.
    fn env(&self) -> &ComputeEnv;

    fn capabilities(&self) -> &Capabilities;

    /// What the worker itself enforces of the task's resources; a backend whose scheduler
    /// enforces them (SLURM's `--mem`, `--time`) leaves only the log budget.
    fn worker_limits(&self, spec: &TaskSpec) -> TaskLimits;

    /// Starts a task's work. The task is already claimed and, for a bootstrap hand-off, its
    /// token armed. Ended events for it go to `events`.
    fn submit<'a>(
        &'a self,
        launch: Launch<'a>,
        events: &'a Events,
    ) -> BoxFuture<'a, Result<Submitted, Error>>;

    /// Stops a task's work, if it still runs. Called after the cancel is committed; a backend
    /// still submitting the task stops it as soon as it can.
    fn cancel<'a>(
        &'a self,
        id: &'a TaskId,
        handle: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// What became of these tasks' work, asked once for all of them.
    fn observe<'a>(
        &'a self,
        tasks: &'a [(TaskId, Option<String>)],
    ) -> BoxFuture<'a, Result<HashMap<TaskId, Observation>, Error>>;

    /// Follows a task's work again after a restart or a takeover. `Active` work sends its end on
    /// `events` if this backend sends events.
    fn adopt<'a>(
        &'a self,
        id: &'a TaskId,
        handle: Option<&'a str>,
        events: &'a Events,
    ) -> BoxFuture<'a, Result<Observation, Error>>;

    /// The last status the task's worker left where the server can read it; read only to
    /// recover a result whose report never arrived.
    fn last_status(&self, id: &TaskId) -> Option<WorkerStatus>;

    /// Removes what the task's work left behind (directories, mounts, cgroups, host ids).
    fn clean_up(&self, id: &TaskId) -> Result<(), Error>;

    /// The end of the task's worker log (its last 64 KiB), read before `clean_up` so the
    /// server can relay it into its own log.
    fn worker_log(&self, _id: &TaskId) -> Option<String> {
        None
    }

    /// Tasks this backend holds leftovers of, so that those of ended or unknown tasks are
    /// cleaned up after a restart.
    fn leftovers(&self) -> Vec<TaskId>;

    /// The work behind `handle` as the backend sees it now, to check a bootstrap exchange: whose
    /// it is, whether it runs, and for how long. `None` if the backend does not know it.
    fn job<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<Option<JobView>, Error>>;
}

/// A backend's view of one piece of work, for checking a bootstrap exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub task_id: Option<TaskId>,
    pub running: bool,
    /// The backend's own name of its state, for messages.
    pub state: String,
    pub elapsed: Duration,
}

//! The SLURM executor as the server sees it: a task becomes one batch job whose script runs
//! `tresor worker --bootstrap`. The script and the job's environment carry the task id, the
//! server URL and a one-time bootstrap token, nothing else; the worker exchanges the token for
//! its task session and then works as on the local executor, reporting over HTTP.
//!
//! Every call to SLURM is one short command (`sbatch`, `squeue`, `scancel`) with a deadline, so a
//! hung controller delays the poll, never the server.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tresor_domain::{ComputeEnv, ComputeEnvKind, TaskId, TaskSpec};

use crate::backend::{
    Capabilities, CapacityUnit, ComputeBackend, Events, HandOff, JobView, Launch, Observation,
    Start, Submitted,
};
use crate::worker::{LOG_FILE, STATUS_FILE};
use crate::{Error, TaskLimits};

/// The longest any one SLURM command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// Prefix of every job name: `tresor-{task id}` binds a job to its task even before its id is
/// recorded (a server killed between `sbatch` and the record finds it by name).
pub const JOB_NAME_PREFIX: &str = "tresor-";

/// One compute environment of type `slurm`.
#[derive(Debug, Clone)]
pub struct SlurmSettings {
    /// The compute environment's id (what workspaces choose).
    pub name: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// More `sbatch` arguments, passed as given (for example `--constraint=ssd`).
    pub extra_args: Vec<String>,
    /// The `tresor` binary on the nodes.
    pub worker_program: PathBuf,
    /// A directory the server and the nodes share: one subdirectory per task.
    pub work_dir: PathBuf,
    /// A tmpfs on the nodes for each task's identity token directory.
    pub runtime_dir: PathBuf,
    /// The URL at which jobs reach the server (None: the server's own listen address).
    pub server_url: Option<String>,
    /// How often one `squeue` call checks all of this environment's jobs.
    pub poll_interval: Duration,
    /// How long after its job starts a bootstrap token may be exchanged.
    pub bootstrap_ttl: Duration,
    /// Jobs submitted and not yet ended, at most (tasks beyond wait QUEUED in tresor).
    pub max_jobs: u32,
    /// Where the SLURM commands are (empty: found through `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// The nodes' image cache (None: `<work_dir>/.images`, shared by all nodes).
    pub image_cache: Option<PathBuf>,
}

/// What a job asks SLURM for, from the task's resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobResources {
    pub cpu_cores: u32,
    pub ram_gb: Option<f64>,
    pub disk_gb: Option<f64>,
    /// `--time`, in SLURM's syntax (already validated).
    pub time_limit: Option<String>,
}

/// What the job script carries: nothing else is in it.
pub struct JobBootstrap<'a> {
    pub task_id: &'a TaskId,
    pub server_url: &'a str,
    pub token: &'a str,
}

/// A job as `squeue` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub job_id: String,
    /// The task, from the job's name.
    pub task_id: Option<TaskId>,
    /// SLURM's long state name: PENDING, RUNNING, COMPLETED, TIMEOUT, …
    pub state: String,
    /// SLURM's reason for the state (`None` when it gives none).
    pub reason: String,
    /// Seconds the job has run.
    pub elapsed_secs: u64,
}

impl JobInfo {
    /// Whether SLURM is done with the job.
    pub fn has_ended(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "CANCELLED"
                | "FAILED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "OUT_OF_MEMORY"
                | "SPECIAL_EXIT"
                | "REVOKED"
        )
    }

    /// Whether the end is a limit the task itself ran into (so it is the task's error, not ours).
    pub fn hit_a_limit(&self) -> bool {
        matches!(
            self.state.as_str(),
            "TIMEOUT" | "OUT_OF_MEMORY" | "DEADLINE"
        )
    }
}

/// The backend parameters SLURM environments honour.
pub const BACKEND_PARAMETERS: &[&str] = &["network", "time_limit"];

#[derive(Debug)]
pub struct SlurmExecutor {
    settings: SlurmSettings,
    env: ComputeEnv,
    capabilities: Capabilities,
}

impl SlurmExecutor {
    /// Creates the shared work dir (0711: the sandbox user may traverse it, nobody may list it).
    pub fn new(settings: SlurmSettings) -> Result<SlurmExecutor, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&settings.work_dir)
            .map_err(Error::io(format!(
                "creating the SLURM work dir {}",
                settings.work_dir.display()
            )))?;
        Ok(SlurmExecutor::from_settings(settings))
    }

    /// The executor of these settings, its work dir not yet made.
    fn from_settings(settings: SlurmSettings) -> SlurmExecutor {
        let capabilities = Capabilities {
            backend_parameters: BACKEND_PARAMETERS,
            // SLURM decides what fits its nodes, and says so when the job is submitted.
            max_cpu_cores: None,
            max_ram_gb: None,
            max_disk_gb: None,
            max_run_seconds: None,
            capacity: settings.max_jobs,
            capacity_unit: CapacityUnit::Tasks,
            hand_off: HandOff::Bootstrap,
            poll_interval: Some(settings.poll_interval),
            server_url: settings.server_url.clone(),
            runtime_dir: settings.runtime_dir.clone(),
            handle_key: Some("slurm_job_id"),
            bootstrap_ttl: Some(settings.bootstrap_ttl),
            image_cache: settings
                .image_cache
                .clone()
                .unwrap_or_else(|| settings.work_dir.join(crate::local::IMAGE_CACHE_DIR)),
        };
        SlurmExecutor {
            env: ComputeEnv {
                id: settings.name.clone(),
                kind: ComputeEnvKind::Slurm,
            },
            settings,
            capabilities,
        }
    }

    pub fn settings(&self) -> &SlurmSettings {
        &self.settings
    }

    /// The task's directory in the shared work dir.
    pub fn task_dir(&self, id: &TaskId) -> PathBuf {
        self.settings.work_dir.join(id.as_str())
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let path = match &self.settings.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut cmd = tokio::process::Command::new(path);
        // None of the server's environment reaches SLURM's commands, nor (through
        // `--export=ALL`) a job: only where the commands are and where SLURM's configuration is.
        cmd.env_clear();
        for name in ["PATH", "SLURM_CONF"] {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// The `sbatch` arguments for a task: all public facts (name, directories, resources).
    pub fn sbatch_args(&self, id: &TaskId, resources: &JobResources) -> Vec<String> {
        let dir = self.task_dir(id);
        let mut args = vec![
            "--parsable".to_owned(),
            format!("--job-name={JOB_NAME_PREFIX}{id}"),
            format!("--chdir={}", dir.display()),
            format!("--output={}", dir.join(LOG_FILE).display()),
            // The job gets exactly the environment of the `sbatch` process, which is cleared to
            // `PATH` (and `SLURM_CONF`) in `command`; the script sets what else it needs. Not
            // `--export=NONE`: that makes slurmd load the user's login environment first (an
            // implied `--get-user-env`, a login shell), which delayed every job's start by
            // 0.2 to 1.3 s on the test cluster.
            "--export=ALL".to_owned(),
            "--no-requeue".to_owned(),
            format!("--cpus-per-task={}", resources.cpu_cores.max(1)),
        ];
        if let Some(gb) = resources.ram_gb {
            args.push(format!("--mem={}M", mebibytes(gb)));
        }
        if let Some(gb) = resources.disk_gb {
            args.push(format!("--tmp={}M", mebibytes(gb)));
        }
        if let Some(time) = &resources.time_limit {
            args.push(format!("--time={time}"));
        }
        for (flag, value) in [
            ("partition", &self.settings.partition),
            ("account", &self.settings.account),
            ("qos", &self.settings.qos),
        ] {
            if let Some(value) = value {
                args.push(format!("--{flag}={value}"));
            }
        }
        args.extend(self.settings.extra_args.iter().cloned());
        args
    }

    /// The job script. It holds the task id, the server URL and the one-time token; it reaches
    /// `sbatch` on its standard input, never as an argument or a file of ours.
    pub fn job_script(&self, bootstrap: &JobBootstrap<'_>) -> String {
        format!(
            "#!/bin/sh\n\
             # tresor task {id}. The token below is spent by the worker within seconds of the\n\
             # job's start and is worthless afterwards.\n\
             TRESOR_TASK_ID={id}\n\
             TRESOR_SERVER_URL={url}\n\
             TRESOR_BOOTSTRAP_TOKEN={token}\n\
             export TRESOR_TASK_ID TRESOR_SERVER_URL TRESOR_BOOTSTRAP_TOKEN\n\
             exec {program} worker --bootstrap\n",
            id = shell_quote(bootstrap.task_id.as_str()),
            url = shell_quote(bootstrap.server_url),
            token = shell_quote(bootstrap.token),
            program = shell_quote(&self.settings.worker_program.to_string_lossy()),
        )
    }

    /// Prepares the task's directory and submits its job. Returns SLURM's job id.
    pub async fn submit(
        &self,
        bootstrap: &JobBootstrap<'_>,
        resources: &JobResources,
    ) -> Result<String, String> {
        let dir = self.task_dir(bootstrap.task_id);
        remove_dir(&dir).map_err(|e| e.to_string())?;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut cmd = self.command("sbatch");
        cmd.args(self.sbatch_args(bootstrap.task_id, resources))
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run sbatch: {e}"))?;
        let script = zeroize::Zeroizing::new(self.job_script(bootstrap));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("writing the job script to sbatch: {e}"))?;
        }
        let output = tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output())
            .await
            .map_err(|_| format!("sbatch did not answer within {COMMAND_DEADLINE:?}"))?
            .map_err(|e| format!("waiting for sbatch: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let job_id = stdout.trim().split(';').next().unwrap_or("").to_owned();
        if job_id.is_empty() || !job_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {:?}", stdout.trim()));
        }
        Ok(job_id)
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let output = tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
            .await
            .map_err(|_| format!("{program} did not answer within {COMMAND_DEADLINE:?}"))?
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Every job of this server's user that SLURM still remembers, in one `squeue` call; the
    /// cost of a poll does not grow with the number of tasks. Keyed by task id.
    pub async fn poll(&self) -> Result<HashMap<TaskId, JobInfo>, String> {
        let out = self
            .run("squeue", &["--me", "-h", "-t", "all", "-o", SQUEUE_FORMAT])
            .await?;
        let mut jobs = HashMap::new();
        for job in parse_squeue(&out) {
            if let Some(id) = job.task_id.clone() {
                // A resubmitted task has several jobs: the newest (highest id) is the live one.
                let newer = jobs.get(&id).is_none_or(|old: &JobInfo| {
                    old.job_id.parse::<u64>().unwrap_or(0) < job.job_id.parse().unwrap_or(0)
                });
                if newer {
                    jobs.insert(id, job);
                }
            }
        }
        Ok(jobs)
    }

    /// One job, as SLURM sees it now (`None` if SLURM no longer knows it).
    pub async fn job(&self, job_id: &str) -> Result<Option<JobInfo>, String> {
        let out = self
            .run(
                "squeue",
                &["-h", "-t", "all", "-j", job_id, "-o", SQUEUE_FORMAT],
            )
            .await?;
        Ok(parse_squeue(&out).into_iter().find(|j| j.job_id == job_id))
    }

    /// Cancels a task's job: by id when it is known, else by the job's name.
    pub async fn cancel(&self, id: &TaskId, job_id: Option<&str>) -> Result<(), String> {
        let name = format!("--name={JOB_NAME_PREFIX}{id}");
        let args: Vec<&str> = match job_id {
            Some(job) => vec![job],
            None => vec!["--me", &name],
        };
        self.run("scancel", &args).await.map(|_| ())
    }

    /// The worker's last status file in the shared work dir, if it wrote one.
    pub fn read_status(&self, id: &TaskId) -> Option<crate::WorkerStatus> {
        let raw = std::fs::read(self.task_dir(id).join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// SLURM's own messages about the job (`slurmstepd: error: …` lines in its output file),
    /// such as why it was killed, and the worker's own errors (its log is credential-masked,
    /// and masked again here).
    pub fn slurm_messages(&self, id: &TaskId) -> Vec<String> {
        let Ok(raw) = std::fs::read(self.task_dir(id).join(LOG_FILE)) else {
            return Vec::new();
        };
        let mut lines: Vec<String> = String::from_utf8_lossy(&raw)
            .lines()
            .filter(|l| l.starts_with("slurmstepd") || l.contains(" ERROR "))
            .map(|l| tresor_crypto::redact::mask_credentials_str(l.trim()))
            .collect();
        lines.dedup();
        lines.truncate(10);
        lines
    }

    /// Removes the task's directory from the shared work dir.
    pub fn remove(&self, id: &TaskId) -> Result<(), Error> {
        remove_dir(&self.task_dir(id))
    }

    /// Task directories present in the shared work dir.
    pub fn task_dirs(&self) -> Vec<TaskId> {
        crate::paths::task_dirs_in(&self.settings.work_dir)
    }
}

/// The job's resources from the task's: cores, memory, scratch disk and the time limit.
fn job_resources(spec: &TaskSpec) -> JobResources {
    JobResources {
        cpu_cores: spec.resources.cpu_cores,
        ram_gb: spec.resources.ram_gb,
        disk_gb: spec.resources.disk_gb,
        time_limit: spec.resources.time_limit.clone(),
    }
}

impl SlurmExecutor {
    /// How SLURM ended a job the worker left no result for, for the task's logs.
    fn ended(&self, id: &TaskId, job: &JobInfo) -> Observation {
        let messages = self.slurm_messages(id);
        let hit_limit = job.hit_a_limit()
            || messages
                .iter()
                .any(|m| m.contains("exceeded memory limit") || m.contains("DUE TO TIME LIMIT"));
        Observation::Ended {
            how: format!(
                "SLURM ended job {} as {} (reason: {}) without a result from the worker",
                job.job_id, job.state, job.reason
            ),
            hit_limit,
            messages,
        }
    }
}

impl ComputeBackend for SlurmExecutor {
    fn env(&self) -> &ComputeEnv {
        &self.env
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// SLURM holds the job to its memory, cores, disk and time (`--mem`, `--cpus-per-task`,
    /// `--tmp`, `--time`); the worker on the node only caps what the task's log keeps.
    fn worker_limits(&self, _spec: &TaskSpec) -> TaskLimits {
        TaskLimits::default()
    }

    fn submit<'a>(
        &'a self,
        launch: Launch<'a>,
        _events: &'a Events,
    ) -> BoxFuture<'a, Result<Submitted, Error>> {
        Box::pin(async move {
            let Start::Bootstrap { server_url, token } = launch.start else {
                return Err(Error::Unsupported(
                    "a SLURM job carries a bootstrap token, never its task",
                ));
            };
            let bootstrap = JobBootstrap {
                task_id: launch.id,
                server_url,
                token,
            };
            let job_id = SlurmExecutor::submit(self, &bootstrap, &job_resources(launch.spec))
                .await
                .map_err(Error::Scheduler)?;
            Ok(Submitted {
                handle: Some(job_id),
            })
        })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a TaskId,
        handle: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            SlurmExecutor::cancel(self, id, handle)
                .await
                .map_err(Error::Scheduler)
        })
    }

    fn observe<'a>(
        &'a self,
        tasks: &'a [(TaskId, Option<String>)],
    ) -> BoxFuture<'a, Result<HashMap<TaskId, Observation>, Error>> {
        Box::pin(async move {
            let jobs = self.poll().await.map_err(Error::Scheduler)?;
            Ok(tasks
                .iter()
                .map(|(id, _)| {
                    let seen = match jobs.get(id) {
                        Some(job) if job.has_ended() => self.ended(id, job),
                        Some(job) => Observation::Active {
                            handle: Some(job.job_id.clone()),
                        },
                        None => Observation::Unknown,
                    };
                    (id.clone(), seen)
                })
                .collect())
        })
    }

    /// The next poll decides: a job is found by its id or, if the server died right after
    /// `sbatch`, by its name.
    fn adopt<'a>(
        &'a self,
        _id: &'a TaskId,
        handle: Option<&'a str>,
        _events: &'a Events,
    ) -> BoxFuture<'a, Result<Observation, Error>> {
        Box::pin(async move {
            Ok(Observation::Active {
                handle: handle.map(str::to_owned),
            })
        })
    }

    fn last_status(&self, id: &TaskId) -> Option<crate::WorkerStatus> {
        self.read_status(id)
    }

    fn worker_log(&self, id: &TaskId) -> Option<String> {
        crate::worker::read_log_tail(&self.task_dir(id))
    }

    fn clean_up(&self, id: &TaskId) -> Result<(), Error> {
        self.remove(id)
    }

    fn leftovers(&self) -> Vec<TaskId> {
        self.task_dirs()
    }

    fn job<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<Option<JobView>, Error>> {
        Box::pin(async move {
            let job = SlurmExecutor::job(self, handle)
                .await
                .map_err(Error::Scheduler)?;
            Ok(job.map(|job| JobView {
                task_id: job.task_id,
                running: job.state == "RUNNING",
                state: job.state,
                elapsed: Duration::from_secs(job.elapsed_secs),
            }))
        })
    }
}

/// `squeue` columns: job id, name, long state, reason, elapsed time.
const SQUEUE_FORMAT: &str = "%i|%j|%T|%r|%M";

/// Parses `squeue -h -o '%i|%j|%T|%r|%M'` output; lines that do not parse are skipped.
pub fn parse_squeue(out: &str) -> Vec<JobInfo> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(5, '|');
            let job_id = fields.next()?.to_owned();
            let name = fields.next()?;
            let state = fields.next()?.to_owned();
            let reason = fields.next()?.to_owned();
            let elapsed_secs = parse_elapsed(fields.next()?)?;
            if job_id.is_empty() || state.is_empty() {
                return None;
            }
            let task_id = name
                .strip_prefix(JOB_NAME_PREFIX)
                .and_then(|id| TaskId::parse(id).ok());
            Some(JobInfo {
                job_id,
                task_id,
                state,
                reason,
                elapsed_secs,
            })
        })
        .collect()
}

/// Parses SLURM's elapsed time: `[days-][hours:]minutes:seconds`.
pub fn parse_elapsed(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let (days, rest) = match raw.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, raw),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = match parts.as_slice() {
        [m, s] => (0, *m, *s),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    Some(days * 86_400 + h * 3_600 + m * 60 + s)
}

/// Checks a `time_limit` backend parameter against SLURM's `--time` syntax: `minutes`,
/// `minutes:seconds`, `hours:minutes:seconds`, `days-hours`, `days-hours:minutes` or
/// `days-hours:minutes:seconds`.
pub fn valid_time_limit(raw: &str) -> bool {
    time_limit_seconds(raw).is_some()
}

/// A `time_limit` in SLURM's `--time` syntax (see `valid_time_limit`) in seconds, as the local
/// executor enforces it. `0` is SLURM's "no limit"; callers decide what it means to them.
pub fn time_limit_seconds(raw: &str) -> Option<u64> {
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (days, rest) = match raw.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, raw),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Option<_>>()?;
    let (h, m, s) = match (days, parts.as_slice()) {
        (None, [m]) => (0, *m, 0),
        (None, [m, s]) => (0, *m, *s),
        (None, [h, m, s]) => (*h, *m, *s),
        (Some(_), [h]) => (*h, 0, 0),
        (Some(_), [h, m]) => (*h, *m, 0),
        (Some(_), [h, m, s]) => (*h, *m, *s),
        _ => return None,
    };
    Some(days.unwrap_or(0) * 86_400 + h * 3_600 + m * 60 + s)
}

fn mebibytes(gb: f64) -> u64 {
    // Validation guarantees a finite, non-negative number; at least 1 MiB.
    ((gb * 1024.0).ceil() as u64).max(1)
}

/// Single-quotes a value for `sh`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_parse_and_bind_jobs_to_tasks() {
        let out = "17|tresor-0190f2a8-0000-7000-8000-000000000001|RUNNING|None|1:02\n\
                   18|wrap|PENDING|Priority|0:00\n\
                   19|tresor-x|TIMEOUT|TimeLimit|1-02:03:04\n\
                   garbage\n";
        let jobs = parse_squeue(out);
        assert_eq!(jobs.len(), 3);
        assert_eq!(
            jobs[0].task_id.as_ref().map(TaskId::as_str),
            Some("0190f2a8-0000-7000-8000-000000000001")
        );
        assert_eq!(jobs[0].elapsed_secs, 62);
        assert!(!jobs[0].has_ended());
        assert_eq!(jobs[1].task_id, None);
        assert_eq!(jobs[2].elapsed_secs, 86_400 + 2 * 3_600 + 3 * 60 + 4);
        assert!(jobs[2].has_ended() && jobs[2].hit_a_limit());
    }

    #[test]
    fn time_limits_follow_slurms_syntax() {
        for ok in ["5", "10:00", "1:00:00", "2-0", "2-12:30", "2-12:30:00"] {
            assert!(valid_time_limit(ok), "{ok}");
        }
        for bad in ["", "x", "1:2:3:4", "-5", "5m", "1-", "1 0", "--time=5"] {
            assert!(!valid_time_limit(bad), "{bad}");
        }
        let seconds: Vec<Option<u64>> = ["5", "0:03", "1:00:00", "2-0", "2-12:30", "1-0:0:7"]
            .into_iter()
            .map(time_limit_seconds)
            .collect();
        assert_eq!(
            seconds,
            [
                Some(300),
                Some(3),
                Some(3_600),
                Some(172_800),
                Some(2 * 86_400 + 12 * 3_600 + 30 * 60),
                Some(86_400 + 7)
            ]
        );
    }

    #[test]
    fn the_job_script_quotes_everything_and_holds_only_the_bootstrap() {
        let executor = SlurmExecutor::from_settings(SlurmSettings {
            name: "hpc".into(),
            partition: Some("debug".into()),
            account: None,
            qos: None,
            extra_args: vec!["--constraint=ssd".into()],
            worker_program: "/opt/tresor it's/tresor".into(),
            work_dir: "/shared/tresor".into(),
            runtime_dir: "/dev/shm".into(),
            server_url: None,
            poll_interval: Duration::from_secs(1),
            bootstrap_ttl: Duration::from_secs(300),
            max_jobs: 10,
            image_cache: None,
            bin_dir: None,
        });
        let id = TaskId::parse("t1").unwrap();
        let script = executor.job_script(&JobBootstrap {
            task_id: &id,
            server_url: "http://127.0.0.1:8000",
            token: "tok",
        });
        assert!(script.contains("TRESOR_BOOTSTRAP_TOKEN='tok'\n"));
        assert!(script.contains("exec '/opt/tresor it'\\''s/tresor' worker --bootstrap\n"));
        let args = executor.sbatch_args(
            &id,
            &JobResources {
                cpu_cores: 2,
                ram_gb: Some(0.5),
                disk_gb: Some(1.0),
                time_limit: Some("10:00".into()),
            },
        );
        for expected in [
            "--job-name=tresor-t1",
            "--chdir=/shared/tresor/t1",
            "--cpus-per-task=2",
            "--mem=512M",
            "--tmp=1024M",
            "--time=10:00",
            "--partition=debug",
            "--constraint=ssd",
            "--export=ALL",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.contains("tok")));
    }
}

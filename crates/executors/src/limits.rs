//! What one task may use, and how the host holds it to that: a cgroup per task (cgroup v2, or
//! v1's memory, cpu and pids controllers) when the worker runs as root and cgroupfs is writable,
//! else rlimits on bubblewrap; the task's tree on its own loop-mounted ext4 image of the task's
//! disk size when the worker runs as root, else a size check after each executor.
//! `detect` finds out once, when the server starts, which of these this host allows.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes in a GB as TES counts `ram_gb` and `disk_gb` (GiB, as SLURM's `--mem` does).
pub const GB: f64 = 1_073_741_824.0;
/// The least memory a task gets, whatever it asks for: bubblewrap and a shell need some.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// The least disk a task gets: the smallest ext4 image worth making.
pub const MIN_DISK_BYTES: u64 = 8 << 20;
/// A task's disk counts as full when less than this is left (ext4 keeps a few blocks back).
const FULL_MARGIN: u64 = 64 << 10;
/// The CFS period for `cpu_cores`: the task may run `cores` periods' worth in every period.
const CPU_PERIOD_US: u64 = 100_000;

/// What tasks may use on the local executor: what a task that asks for nothing gets, and the
/// most a task may ask for. Resolved once from the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Memory of a task that gives no `resources.ram_gb`, in GB.
    pub default_ram_gb: f64,
    /// The most memory a task may ask for, in GB.
    pub max_ram_gb: f64,
    /// Scratch disk of a task that gives no `resources.disk_gb`, in GB.
    pub default_disk_gb: f64,
    /// The most scratch disk a task may ask for, in GB.
    pub max_disk_gb: f64,
    /// How long a task's executors may run in all: the time limit of a task that gives no
    /// `backend_parameters.time_limit`, and the longest one it may give.
    pub max_run_seconds: u64,
    /// Executors one task may have.
    pub max_executors: usize,
    /// Bytes of stdout and stderr that one task's log keeps, all executors together.
    pub max_log_bytes: usize,
    /// Processes and threads one task may run at once (enforced where cgroups are).
    pub max_processes: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            default_ram_gb: 2.0,
            max_ram_gb: 64.0,
            default_disk_gb: 10.0,
            max_disk_gb: 100.0,
            max_run_seconds: 86_400,
            max_executors: 64,
            max_log_bytes: 1 << 20,
            max_processes: 4096,
        }
    }
}

/// One task's limits as its worker enforces them. `None` leaves a resource to someone else:
/// on SLURM the job's own limits (`--mem`, `--cpus-per-task`, `--tmp`, `--time`) apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLimits {
    /// Memory of all the task's processes together (`ram_gb`).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU cores' worth of time per period (`cpu_cores`).
    #[serde(default)]
    pub cpu_cores: Option<u32>,
    /// Bytes the task's tree may hold: inputs, working files, outputs (`disk_gb`).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Wall-clock seconds for all executors together (`backend_parameters.time_limit`).
    #[serde(default)]
    pub run_seconds: Option<u64>,
    /// Processes and threads at once (`local.max_processes`).
    #[serde(default)]
    pub processes: Option<u64>,
    /// Bytes of stdout and stderr the task log keeps, all executors together
    /// (`local.max_log_bytes`).
    #[serde(default)]
    pub log_bytes: Option<usize>,
    /// How this host enforces them.
    #[serde(default)]
    pub enforcement: Enforcement,
}

/// How this host enforces limits: found by `detect` when the server starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enforcement {
    /// Where task cgroups are made; `None`: rlimits on bubblewrap instead.
    #[serde(default)]
    pub cgroups: Option<Cgroups>,
    /// The programs that make and mount a task's disk image; `None`: the task's tree is on the
    /// work root's file system and its size is checked after each executor.
    #[serde(default)]
    pub disk_image: Option<DiskTools>,
}

/// The cgroup directories under which each task gets its own (`tresor-{task id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cgroups {
    /// One hierarchy; `parent`'s subtree has the memory (and, when available, cpu and pids)
    /// controllers enabled.
    V2 { parent: PathBuf },
    /// One hierarchy per controller; cpu and pids when mounted and writable.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// Absolute paths of `mkfs.ext4` and `mount` (the worker has no `PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTools {
    pub mkfs: PathBuf,
    pub mount: PathBuf,
}

/// A size in the units tasks ask in: `0.1 GB`.
pub fn gb(bytes: u64) -> String {
    let text = format!("{:.3}", bytes as f64 / GB);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} GB")
}

/// Finds out what this host allows: cgroups and disk images need root (and, for images, loop
/// devices, `mkfs.ext4` and `mount`). Each is tried for real, in `work_root` for the image.
pub fn detect(work_root: &Path) -> Enforcement {
    if !rustix::process::geteuid().is_root() {
        return Enforcement::default();
    }
    Enforcement {
        cgroups: detect_cgroups(),
        disk_image: detect_disk_tools(work_root),
    }
}

/// Where a task's cgroup is, per controller hierarchy.
fn task_cgroup_dirs(cgroups: &Cgroups, task_id: &str) -> Vec<PathBuf> {
    let name = format!("tresor-{task_id}");
    match cgroups {
        Cgroups::V2 { parent } => vec![parent.join(name)],
        Cgroups::V1 { memory, cpu, pids } => std::iter::once(memory)
            .chain(cpu)
            .chain(pids)
            .map(|parent| parent.join(&name))
            .collect(),
    }
}

/// A cgroup line of `/proc/self/mountinfo`.
struct CgroupMount {
    /// The hierarchy's directory that is mounted (not `/` with some bind mounts).
    root: String,
    mount_point: PathBuf,
    v2: bool,
    /// v1: the controllers of the hierarchy.
    options: Vec<String>,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or_default();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: (*left.get(3)?).to_owned(),
                mount_point: PathBuf::from(*left.get(4)?),
                v2: fstype == "cgroup2",
                options: options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` names it) under a mount, if visible.
fn cgroup_dir(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    let relative = relative.trim_start_matches('/');
    Some(if relative.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(relative)
    })
}

/// This process's cgroup directory for a v1 controller, or for v2 (`controller == None`).
fn own_cgroup(own: &str, mounts: &[CgroupMount], controller: Option<&str>) -> Option<PathBuf> {
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_owned())
    })?;
    mounts
        .iter()
        .filter(|m| match controller {
            None => m.v2,
            Some(c) => !m.v2 && m.options.iter().any(|o| o == c),
        })
        .find_map(|m| cgroup_dir(m, &path).filter(|dir| dir.is_dir()))
}

/// Makes and removes a cgroup under `parent`, writing `file` on the way: proof that tasks can
/// have one there.
fn probe_cgroup(parent: &Path, file: &str, value: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let dir = parent.join(format!(
        "tresor-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir(&dir).is_err() {
        return false;
    }
    let written = std::fs::write(dir.join(file), value).is_ok();
    let removed = std::fs::remove_dir(&dir).is_ok();
    written && removed
}

fn detect_cgroups() -> Option<Cgroups> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = cgroup_mounts(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
    // The v1 memory controller first: on hybrid hosts the v2 hierarchy has no controllers.
    if let Some(memory) = own_cgroup(&own, &mounts, Some("memory"))
        .filter(|dir| probe_cgroup(dir, "memory.limit_in_bytes", "1073741824"))
    {
        let cpu = own_cgroup(&own, &mounts, Some("cpu"))
            .filter(|dir| probe_cgroup(dir, "cpu.cfs_quota_us", "100000"));
        let pids = own_cgroup(&own, &mounts, Some("pids"))
            .filter(|dir| probe_cgroup(dir, "pids.max", "max"));
        return Some(Cgroups::V1 { memory, cpu, pids });
    }
    let parent = own_cgroup(&own, &mounts, None)?;
    delegate_v2(&parent);
    let enabled = std::fs::read_to_string(parent.join("cgroup.subtree_control")).ok()?;
    (enabled.split_whitespace().any(|c| c == "memory")
        && probe_cgroup(&parent, "memory.max", "max"))
    .then_some(Cgroups::V2 { parent })
}

/// Enables the memory, cpu and pids controllers for the children of `parent` (this server's own
/// cgroup). cgroup v2 allows that only in a cgroup without processes of its own, so the
/// processes in it (this server) first move into a leaf `tresor-server`; under systemd, run
/// tresor with `Delegate=yes` so that the service's cgroup is ours to arrange.
fn delegate_v2(parent: &Path) {
    let control = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        return;
    }
    if std::fs::write(&control, "+memory").is_err() {
        let leaf = parent.join("tresor-server");
        let _ = std::fs::create_dir(&leaf);
        let procs = std::fs::read_to_string(parent.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
        if std::fs::write(&control, "+memory").is_err() {
            return;
        }
    }
    for controller in ["+cpu", "+pids"] {
        let _ = std::fs::write(&control, controller);
    }
}

/// Finds `mkfs.ext4` and `mount` in the system directories and makes, mounts and removes a
/// small image in `work_root` with them.
fn detect_disk_tools(work_root: &Path) -> Option<DiskTools> {
    if !Path::new("/dev/loop-control").exists() {
        return None;
    }
    let find = |name: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.is_file())
    };
    let tools = DiskTools {
        mkfs: find("mkfs.ext4")?,
        mount: find("mount")?,
    };
    let probe = work_root.join(format!(".disk-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe).ok()?;
    let usable = match TaskDisk::mount(&probe.join("root"), MIN_DISK_BYTES, &tools) {
        Ok(disk) => {
            drop(disk);
            true
        }
        Err(e) => {
            tracing::info!(error = %e, "task trees stay on the work root's file system");
            false
        }
    };
    let _ = std::fs::remove_dir_all(&probe);
    usable.then_some(tools)
}

/// A task's cgroup, made before its first executor and removed when it is dropped.
#[derive(Debug)]
pub struct TaskCgroup {
    v2: bool,
    /// One directory per hierarchy (v1), or the one (v2).
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: Option<PathBuf>,
}

impl TaskCgroup {
    /// Makes the task's cgroup and writes its limits.
    pub fn create(cgroups: &Cgroups, task_id: &str, limits: &TaskLimits) -> Result<Self, String> {
        let dirs = task_cgroup_dirs(cgroups, task_id);
        for dir in &dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                // A worker restarted for the same task (requeued) finds its old, empty one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let error = format!("creating the task's cgroup {}: {e}", dir.display());
                    remove_cgroup_dirs(dirs.clone());
                    return Err(error);
                }
            }
        }
        let (v2, memory, cpu, pids) = match cgroups {
            Cgroups::V2 { .. } => {
                let dir = dirs.first().cloned().unwrap_or_default();
                let available =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let has = |c: &str| available.split_whitespace().any(|x| x == c);
                let cpu = has("cpu").then(|| dir.clone());
                let pids = has("pids").then(|| dir.clone());
                (true, dir, cpu, pids)
            }
            Cgroups::V1 { cpu, pids, .. } => {
                let mut rest = dirs.iter().skip(1);
                let memory = dirs.first().cloned().unwrap_or_default();
                let cpu = cpu.as_ref().and_then(|_| rest.next().cloned());
                let pids = pids.as_ref().and_then(|_| rest.next().cloned());
                (false, memory, cpu, pids)
            }
        };
        // Dropping it removes what was made, should a limit below fail.
        let cgroup = TaskCgroup {
            v2,
            dirs,
            memory,
            pids,
        };
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("setting {file} of the task's cgroup to {value}: {e}"))
        };
        let memory_dir = cgroup.memory.as_path();
        if let Some(bytes) = limits.memory_bytes {
            if v2 {
                write(memory_dir, "memory.max", bytes.to_string())?;
                // No swap beyond the memory limit (absent when the kernel accounts no swap).
                let _ = write(memory_dir, "memory.swap.max", "0".to_owned());
            } else {
                write(memory_dir, "memory.limit_in_bytes", bytes.to_string())?;
                let _ = write(memory_dir, "memory.memsw.limit_in_bytes", bytes.to_string());
            }
        }
        if let (Some(cores), Some(dir)) = (limits.cpu_cores, cpu.as_deref()) {
            let quota = u64::from(cores.max(1)) * CPU_PERIOD_US;
            if v2 {
                write(dir, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write(dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                write(dir, "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        if let (Some(max), Some(dir)) = (limits.processes, cgroup.pids.as_deref()) {
            write(dir, "pids.max", max.to_string())?;
        }
        Ok(cgroup)
    }

    /// Moves a process into the cgroup, in every hierarchy. bubblewrap is moved while it still
    /// waits for its arguments, before it has started anything (see `worker::run_executor`), so
    /// every process of the task is born inside.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
                format!(
                    "moving the sandbox into the task's cgroup {}: {e}",
                    dir.display()
                )
            })?;
        }
        Ok(())
    }

    /// How many of the task's processes the kernel has killed for lack of memory.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        counter(&self.memory.join(file), "oom_kill")
    }

    /// How many times a fork failed at the process limit.
    pub fn process_limit_hits(&self) -> u64 {
        self.pids
            .as_ref()
            .map_or(0, |dir| counter(&dir.join("pids.events"), "max"))
    }

    /// Kills whatever still runs in the cgroup.
    pub fn kill_all(&self) {
        kill_cgroup(&self.dirs);
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        remove_cgroup_dirs(std::mem::take(&mut self.dirs));
    }
}

/// A `name value` line of a cgroup file such as `memory.events`.
fn counter(file: &Path, name: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn kill_cgroup(dirs: &[PathBuf]) {
    for dir in dirs {
        // cgroup v2 (5.14 and later) kills the whole subtree in one write.
        if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            continue;
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Removes a task's cgroup directories. Killed processes take a moment to leave, so a busy
/// directory is killed again and retried from a thread for a few seconds.
fn remove_cgroup_dirs(dirs: Vec<PathBuf>) {
    let busy: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|dir| match std::fs::remove_dir(dir) {
            Ok(()) => false,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        })
        .collect();
    if busy.is_empty() {
        return;
    }
    kill_cgroup(&busy);
    std::thread::spawn(move || {
        for _ in 0..200 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if busy
                .iter()
                .all(|dir| std::fs::remove_dir(dir).is_ok() || !dir.exists())
            {
                return;
            }
        }
        tracing::warn!(dirs = ?busy, "could not remove a task's cgroup");
    });
}

/// Undoes what a worker killed before its own cleanup left behind: unmounts the task's disk
/// image from `root` and removes the task's cgroup. For the server, after the worker is gone.
pub fn release_task(enforcement: &Enforcement, root: &Path, task_id: &str) {
    if enforcement.disk_image.is_some() {
        unmount(root);
    }
    if let Some(cgroups) = &enforcement.cgroups {
        remove_cgroup_dirs(task_cgroup_dirs(cgroups, task_id));
    }
}

/// Detaches whatever is mounted at `root`; nothing happens when nothing is.
fn unmount(root: &Path) {
    use rustix::mount::UnmountFlags;
    // Detached at once even if something still holds it open; the loop device is freed (mount
    // set it to clear itself) when the last reference goes.
    let _ = rustix::mount::unmount(root, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
}

/// The task's tree on its own ext4 image (sparse: it takes host disk only as the task writes),
/// mounted `nosuid,nodev` at `root` while the task runs; a write beyond it fails with "no space
/// left on device". Dropping it unmounts the image and removes the image file.
#[derive(Debug)]
pub struct TaskDisk {
    root: PathBuf,
    image: PathBuf,
}

impl TaskDisk {
    /// Makes an image of `bytes` beside `root` (`disk.img`) and mounts it at `root`.
    ///
    /// The image is a copy of a freshly formatted template of the same size, kept in
    /// `<work root>/.disk-templates/` and made once per size: writing the few hundred KiB that
    /// an empty ext4 holds takes about a millisecond, while `mkfs` takes about ten, most of it in
    /// fsyncs that a task's scratch disk does not need. A template is never mounted, so every
    /// task starts from the same pristine file system.
    pub fn mount(root: &Path, bytes: u64, tools: &DiskTools) -> Result<TaskDisk, String> {
        let image = root.with_file_name("disk.img");
        let bytes = bytes.max(MIN_DISK_BYTES);
        std::fs::create_dir_all(root).map_err(|e| format!("creating the task root: {e}"))?;
        let templates = root
            .parent()
            .and_then(Path::parent)
            .ok_or("the task root has no work root")?
            .join(TEMPLATES_DIR);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&image)
            .map_err(|e| format!("creating the task's disk image: {e}"))?;
        // From here on, dropping it removes the image (and unmounts, if it got that far).
        let disk = TaskDisk {
            root: root.to_owned(),
            image: image.clone(),
        };
        let (template, source) = disk_template(&templates, bytes, tools)?;
        if let Err(e) = copy_template(source, &file, bytes) {
            // A damaged template (a crash while it was written, say) is made anew, once.
            tracing::warn!(template = %template.display(), error = %e, "remaking a disk template");
            let _ = std::fs::remove_file(&template);
            let (_, source) = disk_template(&templates, bytes, tools)?;
            copy_template(source, &file, bytes)
                .map_err(|e| format!("copying the disk template into the task's image: {e}"))?;
        }
        drop(file);
        run_tool(
            std::process::Command::new(&tools.mount)
                // noinit_itable: the kernel need not zero inode tables that a sparse file
                // already reads as zeros.
                .args([
                    "-t",
                    "ext4",
                    "-o",
                    "loop,nosuid,nodev,noatime,noinit_itable",
                ])
                .arg(&image)
                .arg(root),
        )?;
        // mkfs makes it; no task path may collide with it.
        let _ = std::fs::remove_dir(root.join("lost+found"));
        Ok(disk)
    }

    /// Whether the task's files fill its disk (its space or its inodes).
    pub fn is_full(&self) -> bool {
        rustix::fs::statvfs(self.root.as_path())
            .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) < FULL_MARGIN || s.f_favail == 0)
    }
}

impl Drop for TaskDisk {
    fn drop(&mut self) {
        unmount(&self.root);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Where the formatted, never-mounted ext4 file systems that task images are copied from wait,
/// one per size, in the work root.
const TEMPLATES_DIR: &str = ".disk-templates";
/// Templates kept at most: a task may ask for any size, and each size gets its own; the least
/// recently used beyond this are removed.
const MAX_TEMPLATES: usize = 16;

/// The template of a file system of `bytes`, formatted on first use: the data of a freshly
/// formatted sparse image, kept compactly as `(offset, length, bytes)` records (an empty ext4
/// holds a few hundred KiB), so that the work root holds no large sparse file between tasks.
/// Made under a name of its own, synced and renamed into place, so concurrent workers never
/// read a half-made template. Returned open, so an eviction cannot take it away before it is
/// copied.
fn disk_template(
    dir: &Path,
    bytes: u64,
    tools: &DiskTools,
) -> Result<(PathBuf, std::fs::File), String> {
    use std::os::unix::fs::DirBuilderExt;
    let template = dir.join(format!("{bytes}.extents"));
    if let Ok(file) = std::fs::File::options()
        .read(true)
        .append(true)
        .open(&template)
    {
        // Marks it recently used, for eviction.
        let _ = file.set_modified(std::time::SystemTime::now());
        return Ok((template, file));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let image = dir.join(format!(".{bytes}.img.{}", std::process::id()));
    let making = dir.join(format!(".{bytes}.extents.{}", std::process::id()));
    let made = format_template(&image, &making, bytes, tools).and_then(|()| {
        std::fs::rename(&making, &template).map_err(|e| format!("placing a disk template: {e}"))
    });
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&making);
    made?;
    let file =
        std::fs::File::open(&template).map_err(|e| format!("opening a disk template: {e}"))?;
    evict_templates(dir);
    Ok((template, file))
}

/// The first bytes of a template, and the record that ends one: a template without both is
/// damaged.
const TEMPLATE_MAGIC: &[u8; 8] = b"tresorfs";
const TEMPLATE_END: u64 = u64::MAX;

/// Formats a sparse image of `bytes` at `image` and writes its data extents to `extents`.
fn format_template(
    image: &Path,
    extents: &Path,
    bytes: u64,
    tools: &DiskTools,
) -> Result<(), String> {
    use rustix::fs::{SeekFrom, seek};
    use std::io::{Read, Write};
    let _ = std::fs::remove_file(image);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(|e| format!("creating a disk template: {e}"))?;
    file.set_len(bytes)
        .map_err(|e| format!("sizing a disk template: {e}"))?;
    drop(file);
    run_tool(
        std::process::Command::new(&tools.mkfs)
            // No journal and lazy initialisation: each copy lives as long as its task.
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(image),
    )?;
    let failed = |e: std::io::Error| format!("reading a formatted disk template: {e}");
    let mut source = std::fs::File::open(image).map_err(failed)?;
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(extents)
            .map_err(|e| format!("creating a disk template: {e}"))?,
    );
    out.write_all(TEMPLATE_MAGIC)
        .and_then(|()| out.write_all(&bytes.to_le_bytes()))
        .map_err(|e| format!("writing a disk template: {e}"))?;
    let mut offset = 0u64;
    while offset < bytes {
        let start = match seek(&source, SeekFrom::Data(offset)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(failed(e.into())),
        };
        let end = seek(&source, SeekFrom::Hole(start))
            .map_err(|e| failed(e.into()))?
            .min(bytes);
        seek(&source, SeekFrom::Start(start)).map_err(|e| failed(e.into()))?;
        let mut data = vec![0u8; usize::try_from(end - start).map_err(|e| e.to_string())?];
        source.read_exact(&mut data).map_err(failed)?;
        out.write_all(&start.to_le_bytes())
            .and_then(|()| out.write_all(&(end - start).to_le_bytes()))
            .and_then(|()| out.write_all(&data))
            .map_err(|e| format!("writing a disk template: {e}"))?;
        offset = end;
    }
    out.write_all(&TEMPLATE_END.to_le_bytes())
        .and_then(|()| out.write_all(&0u64.to_le_bytes()))
        .and_then(|()| out.into_inner().map_err(|e| e.into_error()))
        .and_then(|file| file.sync_all())
        .map_err(|e| format!("writing a disk template: {e}"))
}

/// Removes the least recently used templates beyond `MAX_TEMPLATES`. A worker still copying a
/// removed one keeps reading it through its open file.
fn evict_templates(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut templates: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".extents"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    templates.sort();
    let excess = templates.len().saturating_sub(MAX_TEMPLATES);
    for (_, path) in templates.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes a template's records into the empty image `to` and sizes it to `len`. A template
/// of another size, or without its magic or its end record, is refused as damaged.
fn copy_template(template: std::fs::File, to: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let damaged = |what: &str| std::io::Error::other(format!("the disk template {what}"));
    to.set_len(len)?;
    let mut records = std::io::BufReader::new(template);
    let mut header = [0u8; 16];
    records
        .read_exact(&mut header)
        .map_err(|_| damaged("is truncated"))?;
    let (magic, size) = header.split_at(8);
    if magic != TEMPLATE_MAGIC || size != len.to_le_bytes() {
        return Err(damaged("is not one of this size"));
    }
    let mut data = Vec::new();
    loop {
        records
            .read_exact(&mut header)
            .map_err(|_| damaged("ends without its end record"))?;
        let (offset, length) = header.split_at(8);
        let offset = u64::from_le_bytes(offset.try_into().map_err(std::io::Error::other)?);
        let length = u64::from_le_bytes(length.try_into().map_err(std::io::Error::other)?);
        if offset == TEMPLATE_END {
            return Ok(());
        }
        if offset.checked_add(length).is_none_or(|end| end > len) {
            return Err(std::io::Error::other("a record lies beyond the image"));
        }
        data.resize(usize::try_from(length).map_err(std::io::Error::other)?, 0);
        records.read_exact(&mut data)?;
        to.write_all_at(&data, offset)?;
    }
}

fn run_tool(command: &mut std::process::Command) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Bytes the files under `root` take on disk, never following a link: where no disk image
/// holds a task, its size is checked after each executor (while nothing of it runs).
pub fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// Where no cgroup holds a task: limits on bubblewrap's own process, inherited by everything it
/// starts. Memory is then an address-space limit per process, CPU a bound on each process's CPU
/// seconds (the time limit times the cores), and disk a bound on each file where no image
/// holds the tree. Applied while bubblewrap waits for its arguments, like `TaskCgroup::add`.
pub fn apply_rlimits(pid: u32, limits: &TaskLimits) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit};
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} is out of range"))?;
    let pid =
        rustix::process::Pid::from_raw(raw).ok_or_else(|| format!("pid {raw} is not a pid"))?;
    let cpu_seconds = limits
        .run_seconds
        .map(|s| s.saturating_mul(u64::from(limits.cpu_cores.unwrap_or(1).max(1))));
    let file_bytes = limits
        .disk_bytes
        .filter(|_| limits.enforcement.disk_image.is_none());
    for (resource, value, what) in [
        (Resource::As, limits.memory_bytes, "memory"),
        (Resource::Cpu, cpu_seconds, "CPU time"),
        (Resource::Fsize, file_bytes, "file size"),
    ] {
        let Some(value) = value else {
            continue;
        };
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        rustix::process::prlimit(Some(pid), resource, limit).map_err(|e| {
            format!(
                "cannot limit the sandbox's {what} (prlimit: {e}); give tresor a writable cgroup (it must run as root) or run it as the sandbox's user"
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> DiskTools {
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap();
        DiskTools {
            mkfs,
            mount: PathBuf::from("/usr/bin/mount"),
        }
    }

    #[test]
    fn a_template_is_compact_and_its_copy_is_a_clean_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join(TEMPLATES_DIR);
        let bytes = 64 << 20;
        let (template, source) = disk_template(&templates, bytes, &tools()).unwrap();
        let kept = std::fs::metadata(&template).unwrap().len();
        assert!(
            kept < bytes / 16,
            "the template keeps only data: {kept} bytes"
        );
        assert_eq!(
            disk_template(&templates, bytes, &tools()).unwrap().0,
            template,
            "made once per size"
        );
        let image = dir.path().join("disk.img");
        let file = std::fs::File::create(&image).unwrap();
        copy_template(source, &file, bytes).unwrap();
        drop(file);
        assert_eq!(std::fs::metadata(&image).unwrap().len(), bytes);
        let check = std::process::Command::new("/usr/sbin/e2fsck")
            .args(["-n", "-f"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }

    #[test]
    fn templates_beyond_the_limit_are_evicted_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join(TEMPLATES_DIR);
        let (first, _) = disk_template(&templates, MIN_DISK_BYTES, &tools()).unwrap();
        for i in 1..=MAX_TEMPLATES as u64 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            disk_template(&templates, MIN_DISK_BYTES + i * 4096, &tools()).unwrap();
        }
        let kept = std::fs::read_dir(&templates).unwrap().count();
        assert_eq!(kept, MAX_TEMPLATES);
        assert!(!first.exists(), "the least recently used went first");
    }

    #[test]
    fn a_damaged_template_is_refused_and_a_record_beyond_the_image_too() {
        let dir = tempfile::tempdir().unwrap();
        let image = std::fs::File::create(dir.path().join("disk.img")).unwrap();
        let copy = |bytes: &[u8]| {
            let template = dir.path().join("t.extents");
            std::fs::write(&template, bytes).unwrap();
            copy_template(std::fs::File::open(&template).unwrap(), &image, 1 << 20)
        };
        let record = |offset: u64, data: &[u8]| {
            let mut r = offset.to_le_bytes().to_vec();
            r.extend_from_slice(&(data.len() as u64).to_le_bytes());
            r.extend_from_slice(data);
            r
        };
        let mut whole = TEMPLATE_MAGIC.to_vec();
        whole.extend_from_slice(&(1u64 << 20).to_le_bytes());
        whole.extend(record(1024, b"data"));
        let mut ended = whole.clone();
        ended.extend(record(TEMPLATE_END, b""));
        assert!(copy(&ended).is_ok());
        assert!(copy(&whole).is_err(), "no end record: truncated");
        assert!(copy(b"").is_err(), "empty");
        assert!(copy(&ended[..12]).is_err(), "cut in its header");
        let mut other_size = ended.clone();
        other_size[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        assert!(copy(&other_size).is_err(), "another size's template");
        let mut beyond = TEMPLATE_MAGIC.to_vec();
        beyond.extend_from_slice(&(1u64 << 20).to_le_bytes());
        beyond.extend(record(1 << 30, b"evil"));
        beyond.extend(record(TEMPLATE_END, b""));
        assert!(copy(&beyond).is_err(), "a record beyond the image");
    }

    #[test]
    fn sizes_read_as_tasks_ask_for_them() {
        assert_eq!(gb((0.1 * GB) as u64), "0.1 GB");
        assert_eq!(gb(10 << 30), "10 GB");
        assert_eq!(gb(8 << 20), "0.008 GB");
    }

    #[test]
    fn own_cgroups_are_found_under_their_mounts() {
        let mountinfo = "\
35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
38 25 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
39 25 0:34 / /tmp rw - tmpfs tmpfs rw";
        let mounts = cgroup_mounts(mountinfo);
        assert_eq!(mounts.len(), 4);
        let dir = |controller: Option<&str>, path: &str| {
            mounts
                .iter()
                .find(|m| match controller {
                    None => m.v2,
                    Some(c) => !m.v2 && m.options.iter().any(|o| o == c),
                })
                .and_then(|m| cgroup_dir(m, path))
        };
        assert_eq!(
            dir(Some("memory"), "/process_api/x"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/x"))
        );
        assert_eq!(
            dir(Some("cpu"), "/"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            dir(Some("pids"), "/docker/abc/sub"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/sub"))
        );
        assert_eq!(dir(Some("pids"), "/docker/abcdef"), None);
        assert_eq!(
            dir(None, "/system.slice/tresor.service"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/tresor.service"
            ))
        );
    }

    #[test]
    fn cgroup_counters_are_read_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), 2);
        assert_eq!(counter(&file, "oom"), 0);
        assert_eq!(counter(&dir.path().join("missing"), "oom_kill"), 0);
    }
}

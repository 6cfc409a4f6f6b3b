//! What one task may use: what a task that asks for nothing gets, and the most it may ask for.

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

//! Configuration: built-in defaults, then `tresor.toml`, then `TRESOR_*` environment, then flags,
//! resolved once into typed settings. Every problem is reported at once, with its source.
//! This is the one module that reads the process environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use tresor_executors::{LocalSettings, SandboxSettings};
use tresor_server::AppSettings;
use tresor_service::ServiceSettings;
use tresor_store::{Durability, StoreSettings};

/// Flags of `tresor serve`; each overrides the file and the environment.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML configuration file (also `TRESOR_CONFIG`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the database and task directories live (default ./tresor-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8000; port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// CPU cores that running tasks may request in total (default: this machine's cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// A host directory that file:// inputs and outputs may use; repeatable.
    #[arg(long = "allowed-dir")]
    pub allowed_dirs: Vec<PathBuf>,
}

/// The file's shape; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Where the database and task directories live.
    data_dir: Option<PathBuf>,
    /// Address to listen on; loopback only, since tresor speaks plain HTTP (put a TLS proxy in front).
    listen: Option<String>,
    /// `full` (fsync every commit, the default) or `normal` (survives a crash of tresor, not of the machine).
    durability: Option<String>,
    /// Largest request body in bytes.
    max_body_bytes: Option<usize>,
    /// The key-encryption key file (default `<data_dir>/kek`, created 0600 at first start).
    kek_file: Option<PathBuf>,
    /// The audit trail's HMAC key file (default `<data_dir>/audit-key`, 32 bytes, created 0600 at
    /// first start). Keep it out of the database's backups.
    audit_key_file: Option<PathBuf>,
    /// Days a deleted secret is kept before it is purged (default 30).
    secret_retention_days: Option<u32>,
    #[serde(default)]
    secrets: SecretsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    local: LocalSection,
    #[serde(default)]
    tes: TesSection,
    #[serde(default)]
    oidc: OidcSection,
    #[serde(default)]
    identity: IdentitySection,
    #[serde(default)]
    images: ImagesSection,
    #[serde(default)]
    workflows: WorkflowsSection,
    s3: Option<S3Section>,
    outbound: Option<OutboundSection>,
    /// More compute environments, by id (workspaces choose one; `local` is always there).
    #[serde(default)]
    compute_envs: std::collections::BTreeMap<String, ComputeEnvSection>,
}

/// A compute environment of type `slurm`: tasks become batch jobs on a SLURM cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputeEnvSection {
    /// Only `slurm` for now.
    #[serde(rename = "type")]
    kind: String,
    partition: Option<String>,
    account: Option<String>,
    qos: Option<String>,
    /// More `sbatch` arguments, as given.
    #[serde(default)]
    sbatch_args: Vec<String>,
    /// The `tresor` binary on the nodes (default: this one).
    worker_program: Option<PathBuf>,
    /// A directory shared by the server and the nodes.
    work_dir: PathBuf,
    /// A tmpfs on the nodes for identity tokens (default /dev/shm).
    runtime_dir: Option<PathBuf>,
    /// The URL at which jobs reach this server (default: the listen address).
    server_url: Option<String>,
    /// Seconds between polls of SLURM (default 5).
    poll_interval_seconds: Option<f64>,
    /// How long after a job starts its bootstrap token may be spent (default 300 s).
    bootstrap_ttl_seconds: Option<u64>,
    /// Jobs in SLURM at once, at most (default 1000).
    max_jobs: Option<u32>,
    /// Where sbatch, squeue and scancel are (default: found through PATH).
    bin_dir: Option<PathBuf>,
    /// The nodes' image cache (default `<work_dir>/.images`, shared by every node; a
    /// directory on each node's own disk pulls each image once per node instead).
    image_cache_dir: Option<PathBuf>,
}

/// How much secret material a workspace, a user and the server may keep (every live value is
/// held in memory for redaction, so these bound the server's memory).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSection {
    /// Live secrets per workspace, both scopes (default 200).
    max_per_workspace: Option<usize>,
    /// Their bytes (default 4 MiB).
    max_bytes_per_workspace: Option<usize>,
    /// One user's own secrets across workspaces (default 100).
    max_per_user: Option<usize>,
    /// Their bytes (default 1 MiB).
    max_bytes_per_user: Option<usize>,
    /// The bytes of every live secret on the server, all workspaces together (default 256 MiB).
    max_bytes_total: Option<usize>,
}

/// What one client may take of the server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    /// Open connections at once (default 1024, lowered to fit the open-files limit).
    max_connections: Option<usize>,
    /// Seconds to send a request's headers, and the most a connection may idle (default 10).
    header_timeout_seconds: Option<u64>,
    /// Seconds to send each part of a request's body (default 30).
    body_timeout_seconds: Option<u64>,
    /// Seconds to send a whole request and have it answered (default 60).
    request_timeout_seconds: Option<u64>,
    /// Sustained requests per second per credential or address (default 200).
    requests_per_second: Option<u32>,
    /// Requests above that rate a credential may send at once (default 400).
    request_burst: Option<u32>,
}

/// Container images: where executors run, each host's cache, and registry mirrors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesSection {
    /// `oci` (the default): each executor runs in its image, pulled by tresor. `host`: on the
    /// host's own /usr, the image recorded but not used.
    runtime: Option<String>,
    /// Each host's image cache (blobs and unpacked roots), at most, in GB (default 20).
    cache_max_gb: Option<f64>,
    /// The most one image may unpack to, in GB (default 10).
    max_image_gb: Option<f64>,
    /// Seconds a workspace's resolution of a tag to a digest is kept (default 300).
    tag_ttl_seconds: Option<u64>,
    /// Registries (`host:port`) reached over plain HTTP, such as a mirror on loopback.
    #[serde(default)]
    plain_http: Vec<String>,
    /// Registries on loopback, private or link-local addresses that tasks may name (those in
    /// `plain_http` and the mirrors' may be named anyway).
    #[serde(default)]
    private_registries: Vec<String>,
    /// Registry, or registry/path, → where it is pulled from instead: `"docker.io" =
    /// "mirror.example.org/hub"`, `"docker.io/library" = "registry.example.org/official"` (the
    /// longest match wins).
    #[serde(default)]
    mirrors: std::collections::BTreeMap<String, String>,
}

/// Workflow runs (WES): the engines and the limits of a run's files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowsSection {
    /// The most a run's attachments may hold together, in MB (default 16).
    max_attachment_mb: Option<u64>,
    /// The most files a run may attach (default 256).
    max_attachments: Option<usize>,
    /// Whether workflows may be registered from URLs on loopback, private or link-local
    /// addresses (default false: the server fetches on its own network).
    allow_private_urls: Option<bool>,
    /// The engines, by the name clients give as `workflow_engine`.
    #[serde(default)]
    engines: std::collections::BTreeMap<String, EngineSection>,
}

/// One workflow engine (`[workflows.engines.<name>]`); see docs/workflows.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    /// The WES workflow type it runs: `CWL`, `SMK`, `NFL`, …
    workflow_type: String,
    /// The versions of that type it runs.
    workflow_type_versions: Vec<String>,
    /// The engine's own version (service-info shows it).
    version: String,
    /// Its command line; `{workflow}`, `{params}`, `{run_dir}`, `{adapters}`, `{run_id}` and
    /// each parameter's `{name}` are replaced.
    command: Vec<String>,
    /// Its environment (`PATH` at least, where its programs are).
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// The engine task's image (used with `images.runtime = "oci"`).
    image: Option<String>,
    /// The image of jobs that name none (default: the engine's).
    job_image: Option<String>,
    /// Parameters a run may set, with their defaults.
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
    /// Cores of the engine task (default 1).
    cpu_cores: Option<u32>,
}

/// tresor as an OIDC issuer for its tasks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySection {
    /// The `iss` of task tokens: the https URL relying parties reach tresor at (default: the
    /// listening address, fine on one machine only).
    issuer: Option<String>,
    /// Lifetime of each token in seconds (default 600, at most 900).
    token_ttl_seconds: Option<u64>,
    /// Audiences tasks may ask for; the first is in the token file (default ["tresor"]).
    audiences: Option<Vec<String>>,
    /// Days before the signing key is replaced (default 30).
    rotation_days: Option<u32>,
    /// Variables pointed at the token file: "aws", "azure", or any variable name.
    sdk_env: Option<Vec<String>>,
}

/// Object storage the server presigns URLs for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Section {
    /// An S3-compatible server such as http://127.0.0.1:9000 (default: AWS).
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: String,
    /// A file (mode 0600) holding the secret access key.
    secret_access_key_file: PathBuf,
    /// The bucket of workspaces without a location of their own.
    default_bucket: Option<String>,
    /// Their prefix; `{workspace}` becomes the workspace id (default "workspaces/{workspace}/").
    prefix_template: Option<String>,
    /// Lifetime of each presigned URL in seconds (default 600).
    presign_ttl_seconds: Option<u64>,
}

/// OAuth2 client credentials for the server's own outbound calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundSection {
    token_url: String,
    client_id: String,
    /// `client_secret_post`: a file (mode 0600) holding the secret.
    client_secret_file: Option<PathBuf>,
    /// `private_key_jwt`: a PEM file (mode 0600) with an RSA or EC P-256 key.
    private_key_file: Option<PathBuf>,
    key_id: Option<String>,
    scope: Option<String>,
    /// RFC 8707 resource indicator.
    resource: Option<String>,
}

/// Reads a credential file, refusing one that group or others can read.
fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others; chmod 600 it",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn loopback_or_https(url: &str) -> bool {
    url.starts_with("https://")
        || url.starts_with("http://127.0.0.1")
        || url.starts_with("http://localhost")
        || url.starts_with("http://[::1]")
}

fn sdk_variable(name: &str) -> Option<String> {
    match name {
        "aws" => Some("AWS_WEB_IDENTITY_TOKEN_FILE".to_owned()),
        "azure" => Some("AZURE_FEDERATED_TOKEN_FILE".to_owned()),
        n if !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !n.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Some(n.to_owned())
        }
        _ => None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    /// Identity providers whose JWTs are accepted.
    #[serde(default)]
    issuers: Vec<IssuerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerSection {
    /// Exactly the `iss` of its tokens, such as `https://login.example.org/realms/spe`.
    issuer: String,
    /// The `aud` its tokens must carry for tresor.
    audience: String,
    /// A claim whose values map to workspace roles, such as `groups` or `eduperson_entitlement`.
    roles_claim: Option<String>,
    #[serde(default)]
    role_mappings: Vec<MappingSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingSection {
    value: String,
    workspace: String,
    role: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalSection {
    /// CPU cores that running tasks may request in total.
    slots: Option<u32>,
    /// Host directories that file:// inputs and outputs may use.
    allowed_dirs: Option<Vec<PathBuf>>,
    /// Whether a task may ask for network access.
    allow_network: Option<bool>,
    /// Whether http(s) inputs may come from loopback, private or link-local addresses (default false).
    allow_private_http_inputs: Option<bool>,
    /// Whether workspaces may have egress allowlists (default false).
    allow_egress: Option<bool>,
    /// Whether egress allowlists may reach loopback, private and link-local addresses (default false).
    allow_private_egress: Option<bool>,
    /// Bytes of each executor's stdout and stderr kept in the task log.
    log_tail_bytes: Option<usize>,
    /// The bubblewrap program (default: `bwrap` on PATH).
    bwrap: Option<PathBuf>,
    /// Host uids, and the gids of the same numbers, from which each running local task gets one
    /// of its own when the server runs as root: "first-last" (default 2000000000-2000065535),
    /// at least as many as slots. No host account or subordinate id range may use them.
    task_uid_range: Option<String>,
    /// Host gids from which each workspace's `file://` directory gets a group of its own when
    /// the server runs as root: "first-last" (default 2001000000-2001065535), apart from
    /// `task_uid_range`. No host account, group or subordinate id range may use them. A deleted
    /// workspace keeps its gid, so the range must outnumber every workspace ever created.
    workspace_gid_range: Option<String>,
    /// Host uid and gid that SLURM tasks' executors run as when their worker is root (default
    /// 65534, nobody); local tasks get their own from `task_uid_range`.
    sandbox_uid: Option<u32>,
    sandbox_gid: Option<u32>,
    /// The binary that runs `worker` (default: this executable).
    worker_program: Option<PathBuf>,
    /// A tmpfs where workers keep each task's identity token (default /dev/shm).
    runtime_dir: Option<PathBuf>,
    /// Memory of a task that gives no `resources.ram_gb`, in GB (default 2).
    default_ram_gb: Option<f64>,
    /// The most memory a task may ask for, in GB (default: this machine's memory).
    max_ram_gb: Option<f64>,
    /// Scratch disk of a task that gives no `resources.disk_gb`, in GB (default 10).
    default_disk_gb: Option<f64>,
    /// The most scratch disk a task may ask for, in GB (default 100).
    max_disk_gb: Option<f64>,
    /// The longest a task's executors may run in all, and the time limit of a task that gives
    /// no `backend_parameters.time_limit` (default 86400).
    max_run_seconds: Option<u64>,
    /// Executors one task may have (default 64).
    max_executors: Option<usize>,
    /// Bytes of stdout and stderr one task's log keeps, all executors together (default 1 MiB).
    max_log_bytes: Option<usize>,
    /// Processes and threads one task may run at once, where cgroups are available (default 4096).
    max_processes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TesSection {
    default_page_size: Option<u32>,
    max_page_size: Option<u32>,
    organization_name: Option<String>,
    organization_url: Option<String>,
    /// How long a server process's claim on a running task holds without renewal, in seconds
    /// (default 15). Another process on the same database takes over a task whose claim lapsed.
    task_lease_seconds: Option<u64>,
}

/// Resolved settings for `tresor serve`.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub app: AppSettings,
}

/// Environment variables `serve` reads; any other `TRESOR_*` is reported as a likely typo.
const ENV_KEYS: &[&str] = &[
    "TRESOR_CONFIG",
    "TRESOR_DATA_DIR",
    "TRESOR_LISTEN",
    "TRESOR_DURABILITY",
    "TRESOR_SLOTS",
    "TRESOR_ALLOWED_DIRS",
    "TRESOR_ALLOW_NETWORK",
    "TRESOR_MAX_BODY_BYTES",
    "TRESOR_KEK_FILE",
    "TRESOR_AUDIT_KEY_FILE",
    "TRESOR_REQUESTS_PER_SECOND",
    "TRESOR_IMAGE_RUNTIME",
    "TRESOR_LOG",
    "TRESOR_LOG_FORMAT",
    // read by the client commands, harmless here
    "TRESOR_URL",
    "TRESOR_TOKEN",
];

/// Collects problems instead of stopping at the first.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: &str, source: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{key} (from {source}): {problem}"));
    }
}

/// A value and where it came from.
struct Sourced<T> {
    value: T,
    source: String,
}

/// The sources below the flags, and the problems found so far.
struct Layers<'a> {
    env: &'a BTreeMap<String, String>,
    file_name: &'a str,
    problems: Problems,
}

impl Layers<'_> {
    /// Picks the highest-priority source that set a value: flag, environment, file, default.
    fn pick<T>(
        &mut self,
        key: &str,
        flag: Option<T>,
        env_key: &str,
        parse_env: impl Fn(&str) -> Result<T, String>,
        file: Option<T>,
        default: impl FnOnce() -> T,
    ) -> Sourced<T> {
        if let Some(value) = flag {
            return Sourced {
                value,
                source: format!("--{}", key.replace('_', "-")),
            };
        }
        if let Some(raw) = self.env.get(env_key) {
            match parse_env(raw) {
                Ok(value) => {
                    return Sourced {
                        value,
                        source: env_key.to_owned(),
                    };
                }
                Err(e) => self.problems.add(key, env_key, e),
            }
        }
        if let Some(value) = file {
            return Sourced {
                value,
                source: self.file_name.to_owned(),
            };
        }
        Sourced {
            value: default(),
            source: "default".to_owned(),
        }
    }
}

fn parse_num<T: std::str::FromStr>(raw: &str) -> Result<T, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a valid number"))
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{raw:?} is not true or false")),
    }
}

/// Reads every source and resolves them, or returns every problem found.
pub fn load(args: &ServeArgs) -> Result<Settings, Vec<String>> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TRESOR_"))
        .collect();
    resolve(args, &env)
}

fn resolve(args: &ServeArgs, env: &BTreeMap<String, String>) -> Result<Settings, Vec<String>> {
    let mut problems = Problems(Vec::new());
    for key in env.keys() {
        if !ENV_KEYS.contains(&key.as_str()) {
            problems.0.push(format!(
                "{key}: unknown environment variable; known: {}",
                ENV_KEYS.join(", ")
            ));
        }
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| env.get("TRESOR_CONFIG").map(PathBuf::from));
    let file_name = config_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config file".to_owned());
    let file: ConfigFile = match &config_path {
        None => ConfigFile::default(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => {
                problems
                    .0
                    .push(format!("{}: cannot read: {e}", path.display()));
                ConfigFile::default()
            }
            Ok(text) => match toml::from_str(&text) {
                Ok(file) => file,
                Err(e) => {
                    problems
                        .0
                        .push(format!("{}: {}", path.display(), e.to_string().trim()));
                    ConfigFile::default()
                }
            },
        },
    };
    let mut layers = Layers {
        env,
        file_name: &file_name,
        problems,
    };

    let data_dir = layers.pick(
        "data_dir",
        args.data_dir.clone(),
        "TRESOR_DATA_DIR",
        |s| Ok(PathBuf::from(s)),
        file.data_dir.clone(),
        || PathBuf::from("tresor-data"),
    );
    let listen_raw = layers.pick(
        "listen",
        args.listen.clone(),
        "TRESOR_LISTEN",
        |s| Ok(s.to_owned()),
        file.listen.clone(),
        || "127.0.0.1:8000".to_owned(),
    );
    let listen = match listen_raw.value.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Some(addr),
        Ok(addr) => {
            layers.problems.add("listen", &listen_raw.source, format!(
                "{addr} is not a loopback address; tresor speaks plain HTTP, so it listens on loopback only; put a TLS-terminating proxy in front of it"
            ));
            None
        }
        Err(_) => {
            layers.problems.add(
                "listen",
                &listen_raw.source,
                format!(
                    "{:?} is not an address such as 127.0.0.1:8000",
                    listen_raw.value
                ),
            );
            None
        }
    };
    let durability = layers.pick(
        "durability",
        None,
        "TRESOR_DURABILITY",
        |s| Ok(s.to_owned()),
        file.durability.clone(),
        || "full".to_owned(),
    );
    let durability = match durability.value.as_str() {
        "full" => Durability::Full,
        "normal" => Durability::Normal,
        other => {
            layers.problems.add(
                "durability",
                &durability.source,
                format!("{other:?} is not full or normal"),
            );
            Durability::Full
        }
    };
    let default_slots = || {
        std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
            .unwrap_or(1)
    };
    let slots = layers.pick(
        "slots",
        args.slots,
        "TRESOR_SLOTS",
        parse_num,
        file.local.slots,
        default_slots,
    );
    if slots.value == 0 {
        layers
            .problems
            .add("slots", &slots.source, "must be at least 1");
    }
    let allow_network = layers.pick(
        "allow_network",
        None,
        "TRESOR_ALLOW_NETWORK",
        parse_bool,
        file.local.allow_network,
        || false,
    );
    let max_body_bytes = layers.pick(
        "max_body_bytes",
        None,
        "TRESOR_MAX_BODY_BYTES",
        parse_num,
        file.max_body_bytes,
        || 4 * 1024 * 1024,
    );
    if max_body_bytes.value < 1024 {
        layers.problems.add(
            "max_body_bytes",
            &max_body_bytes.source,
            "must be at least 1024",
        );
    }
    let allowed = layers.pick(
        "allowed_dirs",
        (!args.allowed_dirs.is_empty()).then(|| args.allowed_dirs.clone()),
        "TRESOR_ALLOWED_DIRS",
        |s| {
            Ok(s.split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect())
        },
        file.local.allowed_dirs.clone(),
        || vec![data_dir.value.join("storage")],
    );
    let default_storage = allowed.source == "default";
    let mut allowed_dirs = Vec::new();
    for dir in &allowed.value {
        if default_storage {
            // Tasks' users walk through it to their workspace's directory; none may list it.
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir);
            let _ = std::fs::set_permissions(
                dir,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o711),
            );
        }
        match std::fs::canonicalize(dir) {
            Ok(real) if real.is_dir() => allowed_dirs.push(real),
            Ok(_) => layers.problems.add(
                "allowed_dirs",
                &allowed.source,
                format!("{} is not a directory", dir.display()),
            ),
            Err(e) => layers.problems.add(
                "allowed_dirs",
                &allowed.source,
                format!("{}: {e}", dir.display()),
            ),
        }
    }
    let log_tail_bytes = file.local.log_tail_bytes.unwrap_or(64 * 1024);
    let limits = resolve_limits(&file.local, &file_name, &mut layers.problems);
    let default_page_size = file.tes.default_page_size.unwrap_or(256);
    let max_page_size = file.tes.max_page_size.unwrap_or(2047);
    if !(1..=2047).contains(&max_page_size) {
        layers.problems.add(
            "tes.max_page_size",
            &file_name,
            "must be between 1 and 2047 (the spec requires less than 2048)",
        );
    }
    if default_page_size < 1 || default_page_size > max_page_size {
        layers.problems.add(
            "tes.default_page_size",
            &file_name,
            "must be between 1 and tes.max_page_size",
        );
    }
    let task_lease_seconds = file.tes.task_lease_seconds.unwrap_or(15);
    if !(3..=3600).contains(&task_lease_seconds) {
        layers.problems.add(
            "tes.task_lease_seconds",
            &file_name,
            "must be between 3 and 3600",
        );
    }
    let bwrap = match file
        .local
        .bwrap
        .clone()
        .or_else(|| find_on_path("bwrap", env))
    {
        Some(path) if path.is_file() => Some(path),
        Some(path) => {
            layers.problems.add(
                "local.bwrap",
                &file_name,
                format!("{} does not exist", path.display()),
            );
            None
        }
        None => {
            layers.problems.0.push(
                "local.bwrap: bubblewrap (bwrap) is not on PATH; install it (apt-get install bubblewrap)".to_owned(),
            );
            None
        }
    };
    let worker_program = match file.local.worker_program.clone() {
        Some(p) => Some(p),
        None => match std::env::current_exe() {
            Ok(p) => Some(p),
            Err(e) => {
                layers.problems.0.push(format!(
                    "local.worker_program: cannot find this executable: {e}"
                ));
                None
            }
        },
    };
    // Only root can switch users; an unprivileged server runs executors as itself.
    let run_as = is_root().then(|| {
        (
            file.local.sandbox_uid.unwrap_or(65534),
            file.local.sandbox_gid.unwrap_or(65534),
        )
    });
    let (task_ids, workspace_gids) = if is_root() {
        let mut ranges = Vec::new();
        for (key, configured, default, needed) in [
            (
                "local.task_uid_range",
                &file.local.task_uid_range,
                DEFAULT_TASK_UID_RANGE,
                // Every running task holds one.
                u64::from(slots.value),
            ),
            (
                "local.workspace_gid_range",
                &file.local.workspace_gid_range,
                DEFAULT_WORKSPACE_GID_RANGE,
                1,
            ),
        ] {
            let (raw, source) = match configured {
                Some(raw) => (raw.clone(), file_name.clone()),
                None => (default.to_owned(), "default".to_owned()),
            };
            let checked = parse_id_range(&raw).and_then(|range| {
                let size = u64::from(*range.end()) - u64::from(*range.start()) + 1;
                // (Only the task range can be short: a parsed range is never empty.)
                if size < needed {
                    return Err(format!(
                        "{raw} has {size} ids, fewer than the {needed} slots; every running task needs one"
                    ));
                }
                let used = ids_in_use(&range);
                if !used.is_empty() {
                    return Err(format!(
                        "{raw} holds ids the host already uses: {}; choose a range that no account and no subordinate id range uses",
                        used.join(", ")
                    ));
                }
                Ok(range)
            });
            match checked {
                Ok(range) => ranges.push(Some(range)),
                Err(e) => {
                    layers.problems.add(key, &source, e);
                    ranges.push(None);
                }
            }
        }
        match (ranges.pop().flatten(), ranges.pop().flatten()) {
            (Some(workspaces), Some(tasks))
                if workspaces.start() <= tasks.end() && tasks.start() <= workspaces.end() =>
            {
                layers.problems.add(
                    "local.workspace_gid_range",
                    &file_name,
                    "overlaps local.task_uid_range; a task's own group must never be a workspace's",
                );
                (None, None)
            }
            (workspaces, tasks) => (tasks, workspaces),
        }
    } else {
        (None, None)
    };

    let kek_file = layers.pick(
        "kek_file",
        None,
        "TRESOR_KEK_FILE",
        |s| Ok(PathBuf::from(s)),
        file.kek_file.clone(),
        || data_dir.value.join("kek"),
    );
    let connection_defaults = tresor_server::ConnectionLimits::default();
    let connection_limits = tresor_server::ConnectionLimits {
        max_connections: file
            .limits
            .max_connections
            .unwrap_or(connection_defaults.max_connections),
        header_timeout: file.limits.header_timeout_seconds.map_or(
            connection_defaults.header_timeout,
            std::time::Duration::from_secs,
        ),
        body_timeout: file.limits.body_timeout_seconds.map_or(
            connection_defaults.body_timeout,
            std::time::Duration::from_secs,
        ),
        request_timeout: file.limits.request_timeout_seconds.map_or(
            connection_defaults.request_timeout,
            std::time::Duration::from_secs,
        ),
        requests_per_second: layers
            .pick(
                "limits.requests_per_second",
                None,
                "TRESOR_REQUESTS_PER_SECOND",
                parse_num,
                file.limits.requests_per_second,
                || connection_defaults.requests_per_second,
            )
            .value,
        request_burst: file
            .limits
            .request_burst
            .unwrap_or(connection_defaults.request_burst),
    };
    for (key, zero) in [
        (
            "limits.max_connections",
            connection_limits.max_connections == 0,
        ),
        (
            "limits.header_timeout_seconds",
            connection_limits.header_timeout.is_zero(),
        ),
        (
            "limits.body_timeout_seconds",
            connection_limits.body_timeout.is_zero(),
        ),
        (
            "limits.request_timeout_seconds",
            connection_limits.request_timeout.is_zero(),
        ),
        (
            "limits.requests_per_second",
            connection_limits.requests_per_second == 0,
        ),
    ] {
        if zero {
            layers.problems.add(key, &file_name, "must be at least 1");
        }
    }
    let defaults = tresor_service::SecretLimits::default();
    let secret_limits = tresor_service::SecretLimits {
        workspace_count: file
            .secrets
            .max_per_workspace
            .unwrap_or(defaults.workspace_count),
        workspace_bytes: file
            .secrets
            .max_bytes_per_workspace
            .unwrap_or(defaults.workspace_bytes),
        user_count: file.secrets.max_per_user.unwrap_or(defaults.user_count),
        user_bytes: file
            .secrets
            .max_bytes_per_user
            .unwrap_or(defaults.user_bytes),
        total_bytes: file.secrets.max_bytes_total.unwrap_or(defaults.total_bytes),
    };
    let audit_key_file = layers.pick(
        "audit_key_file",
        None,
        "TRESOR_AUDIT_KEY_FILE",
        |s| Ok(PathBuf::from(s)),
        file.audit_key_file.clone(),
        || data_dir.value.join("audit-key"),
    );
    let secret_retention = std::time::Duration::from_secs(
        u64::from(file.secret_retention_days.unwrap_or(30)) * 24 * 3600,
    );
    let mut oidc_issuers = Vec::new();
    for (i, issuer) in file.oidc.issuers.iter().enumerate() {
        let key = format!("oidc.issuers[{i}]");
        let url_ok = issuer.issuer.starts_with("https://")
            || issuer.issuer.starts_with("http://127.0.0.1")
            || issuer.issuer.starts_with("http://localhost");
        if !url_ok {
            layers.problems.add(
                &format!("{key}.issuer"),
                &file_name,
                "must be an https:// URL (plain http only on loopback)",
            );
        }
        if issuer.audience.is_empty() {
            layers
                .problems
                .add(&format!("{key}.audience"), &file_name, "must not be empty");
        }
        for (j, m) in issuer.role_mappings.iter().enumerate() {
            if tresor_domain::Role::parse(&m.role).is_none() {
                layers.problems.add(
                    &format!("{key}.role_mappings[{j}].role"),
                    &file_name,
                    format!("{:?} is not owner, admin, maintain, launch or view", m.role),
                );
            }
        }
        oidc_issuers.push(tresor_auth::oidc::TrustedIssuer {
            issuer: issuer.issuer.trim_end_matches('/').to_owned(),
            audience: issuer.audience.clone(),
            roles_claim: issuer.roles_claim.clone(),
            role_mappings: issuer
                .role_mappings
                .iter()
                .map(|m| tresor_auth::oidc::RoleMapping {
                    value: m.value.clone(),
                    workspace: m.workspace.clone(),
                    role: m.role.clone(),
                })
                .collect(),
        });
    }

    let identity = resolve_identity(&file.identity, &file_name, &mut layers.problems);
    let workflows = resolve_workflows(&file.workflows, &file_name, &mut layers.problems);
    let mut images = resolve_images(&file.images, &file_name, &mut layers.problems);
    images.runtime = layers
        .pick(
            "image_runtime",
            None,
            "TRESOR_IMAGE_RUNTIME",
            parse_runtime,
            None,
            || images.runtime,
        )
        .value;
    let s3 = file
        .s3
        .as_ref()
        .and_then(|section| resolve_s3(section, &file_name, &mut layers.problems));
    let outbound = file
        .outbound
        .as_ref()
        .and_then(|section| resolve_outbound(section, &file_name, &mut layers.problems));
    let slurm = resolve_compute_envs(
        &file.compute_envs,
        &file_name,
        &mut layers.problems,
        worker_program.as_deref(),
    );
    let runtime_dir = file
        .local
        .runtime_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    if !runtime_dir.is_dir() {
        layers.problems.add(
            "local.runtime_dir",
            &file_name,
            format!(
                "{} is not a directory; point it at a tmpfs such as /dev/shm",
                runtime_dir.display()
            ),
        );
    }

    let data_dir_path = data_dir.value.clone();
    if let Err(e) = prepare_data_dir(&data_dir_path) {
        layers.problems.add("data_dir", &data_dir.source, e);
    }
    // A root server runs executors as other host users, strangers to every directory's owner
    // and group: they must be able to walk down to the task directories and to the identity
    // directories, or every task would end in a raw bubblewrap error.
    if run_as.is_some() {
        for (key, source, path) in [
            ("data_dir", &data_dir.source, &data_dir_path),
            ("local.runtime_dir", &file_name, &runtime_dir),
        ]
        .into_iter()
        // Tasks' file copies run as their users, who reach their workspace's directory below
        // each allowed directory.
        .chain(
            allowed_dirs
                .iter()
                .map(|d| ("allowed_dirs", &allowed.source, d)),
        ) {
            if let Some(problem) = closed_to_tasks(path) {
                layers.problems.add(key, source, problem);
            }
        }
    }
    for (key, source, path) in [
        ("data_dir", &data_dir.source, Some(&data_dir_path)),
        ("kek_file", &kek_file.source, Some(&kek_file.value)),
        // Whoever holds the audit key and the database can rewrite the trail, so tasks must
        // not read it either.
        (
            "audit_key_file",
            &audit_key_file.source,
            Some(&audit_key_file.value),
        ),
        ("config", &file_name, config_path.as_ref()),
    ] {
        let Some(real) = path.and_then(|p| canonical_even_if_missing(p)) else {
            continue;
        };
        if let Some(dir) = allowed_dirs.iter().find(|d| real.starts_with(d)) {
            layers.problems.add(
                key,
                source,
                format!(
                    "{} lies inside the storage directory {}, so tasks could read or overwrite it through file:// URLs; move it, or allow a directory that does not contain it",
                    real.display(),
                    dir.display()
                ),
            );
        }
        if key != "config"
            && let Some(dir) = tresor_executors::sandbox::visible_in_sandbox(&real)
        {
            layers.problems.add(
                key,
                source,
                format!(
                    "{} lies inside {dir}, which every task's sandbox shows read-only; put it elsewhere, such as /var/lib/tresor",
                    real.display()
                ),
            );
        }
    }

    match (layers.problems.0.is_empty(), listen, bwrap, worker_program) {
        (true, Some(listen), Some(bwrap), Some(worker_program)) => Ok(Settings {
            listen,
            data_dir: data_dir_path.clone(),
            app: AppSettings {
                services: tresor_service::app::Settings {
                    store: StoreSettings {
                        path: data_dir_path.join("tresor.db"),
                        durability,
                        audit_key_file: audit_key_file.value,
                    },
                    local: LocalSettings {
                        work_root: data_dir_path.join("work"),
                        worker_program,
                        sandbox: SandboxSettings { bwrap, run_as },
                        allowed_dirs,
                        log_tail_bytes,
                        slots: slots.value,
                        allow_network: allow_network.value,
                        allow_private_http_inputs: file
                            .local
                            .allow_private_http_inputs
                            .unwrap_or(false),
                        allow_egress: file.local.allow_egress.unwrap_or(false),
                        allow_private_egress: file.local.allow_private_egress.unwrap_or(false),
                        runtime_dir,
                        limits,
                        task_ids,
                        workspace_gids,
                    },
                    tasks: ServiceSettings {
                        default_page_size,
                        max_page_size,
                        organization_name: file
                            .tes
                            .organization_name
                            .clone()
                            .unwrap_or_else(|| "tresor".to_owned()),
                        organization_url: file
                            .tes
                            .organization_url
                            .clone()
                            .unwrap_or_else(|| "https://tresor.invalid".to_owned()),
                        // Set to the bound address once the listener exists.
                        callback_url: String::new(),
                        task_lease: std::time::Duration::from_secs(task_lease_seconds),
                    },
                    bootstrap_token_file: data_dir_path.join("bootstrap-admin-token"),
                    oidc_issuers,
                    kek_file: kek_file.value,
                    secret_retention,
                    log_redactor: Default::default(),
                    secret_limits,
                    identity,
                    s3: s3.map(std::sync::Arc::new),
                    outbound: outbound.map(std::sync::Arc::new),
                    slurm,
                    images,
                    workflows,
                },
                max_body_bytes: max_body_bytes.value,
                limits: connection_limits,
            },
        }),
        _ => Err(layers.problems.0),
    }
}

fn parse_runtime(raw: &str) -> Result<tresor_service::ImageRuntime, String> {
    match raw {
        "oci" => Ok(tresor_service::ImageRuntime::Oci),
        "host" => Ok(tresor_service::ImageRuntime::Host),
        other => Err(format!(
            "{other:?} is not a runtime; use \"oci\" or \"host\""
        )),
    }
}

fn resolve_workflows(
    section: &WorkflowsSection,
    file_name: &str,
    problems: &mut Problems,
) -> tresor_service::WorkflowSettings {
    let defaults = tresor_service::WorkflowSettings::default();
    let mut engines = Vec::new();
    for (name, engine) in &section.engines {
        let key = format!("workflows.engines.{name}");
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !plain(name) || !plain(&engine.workflow_type) {
            problems.add(
                &key,
                file_name,
                "the engine's name and workflow_type may hold only letters, digits and ._-",
            );
        }
        if engine.command.is_empty() {
            problems.add(&format!("{key}.command"), file_name, "must name a program");
        }
        if engine.workflow_type_versions.is_empty() {
            problems.add(
                &format!("{key}.workflow_type_versions"),
                file_name,
                "must list at least one version",
            );
        }
        let image = engine
            .image
            .clone()
            .unwrap_or_else(|| "docker.io/library/debian:12".to_owned());
        engines.push(tresor_service::EngineSettings {
            name: name.clone(),
            workflow_type: engine.workflow_type.clone(),
            type_versions: engine.workflow_type_versions.clone(),
            version: engine.version.clone(),
            command: engine.command.clone(),
            env: engine.env.clone(),
            job_image: engine.job_image.clone().unwrap_or_else(|| image.clone()),
            image,
            parameters: engine.parameters.clone(),
            cpu_cores: engine.cpu_cores.unwrap_or(1),
        });
    }
    tresor_service::WorkflowSettings {
        engines,
        max_attachment_bytes: section
            .max_attachment_mb
            .map_or(defaults.max_attachment_bytes, |mb| {
                mb.saturating_mul(1 << 20)
            }),
        max_attachments: section.max_attachments.unwrap_or(defaults.max_attachments),
        allow_private_urls: section.allow_private_urls.unwrap_or(false),
    }
}

fn resolve_images(
    section: &ImagesSection,
    file_name: &str,
    problems: &mut Problems,
) -> tresor_service::ImageSettings {
    let defaults = tresor_service::ImageSettings::default();
    let runtime = match section.runtime.as_deref().map(parse_runtime) {
        None => defaults.runtime,
        Some(Ok(runtime)) => runtime,
        Some(Err(e)) => {
            problems.add("images.runtime", file_name, e);
            defaults.runtime
        }
    };
    let mut bytes = |key: &str, gb: Option<f64>, default: u64| match gb {
        None => default,
        Some(gb) if gb.is_finite() && gb > 0.0 && gb < 1e6 => (gb * 1e9) as u64,
        Some(gb) => {
            problems.add(
                &format!("images.{key}"),
                file_name,
                format!("{gb} must be a positive number of GB"),
            );
            default
        }
    };
    let max_cache_bytes = bytes(
        "cache_max_gb",
        section.cache_max_gb,
        defaults.max_cache_bytes,
    );
    let max_image_bytes = bytes(
        "max_image_gb",
        section.max_image_gb,
        defaults.max_image_bytes,
    );
    for (registry, mirror) in &section.mirrors {
        let host = mirror.split('/').next().unwrap_or_default();
        let plain = |s: &str| {
            !s.is_empty()
                && !s.contains("://")
                && !s.starts_with('/')
                && !s.contains("//")
                && s.chars().all(|c| c.is_ascii_graphic() && !"*@".contains(c))
        };
        if !plain(registry) || !plain(mirror) || host.is_empty() {
            problems.add(
                "images.mirrors",
                file_name,
                format!(
                    "{registry:?} = {mirror:?} must map a registry (or registry/path) to host[:port][/path], such as \"docker.io\" = \"mirror.example.org/hub\""
                ),
            );
        }
    }
    tresor_service::ImageSettings {
        runtime,
        max_cache_bytes,
        max_image_bytes,
        tag_ttl_seconds: section.tag_ttl_seconds.unwrap_or(defaults.tag_ttl_seconds),
        plain_http: section.plain_http.clone(),
        private_registries: section.private_registries.clone(),
        mirrors: section.mirrors.clone(),
    }
}

/// What a task gets when it asks for nothing, and the most it may ask for.
fn resolve_limits(
    section: &LocalSection,
    file_name: &str,
    problems: &mut Problems,
) -> tresor_executors::LimitSettings {
    let defaults = tresor_executors::LimitSettings::default();
    let max_ram_gb = section
        .max_ram_gb
        .or_else(machine_memory_gb)
        .unwrap_or(defaults.max_ram_gb);
    let limits = tresor_executors::LimitSettings {
        default_ram_gb: section
            .default_ram_gb
            .unwrap_or(defaults.default_ram_gb.min(max_ram_gb)),
        max_ram_gb,
        default_disk_gb: section.default_disk_gb.unwrap_or(defaults.default_disk_gb),
        max_disk_gb: section.max_disk_gb.unwrap_or(defaults.max_disk_gb),
        max_run_seconds: section.max_run_seconds.unwrap_or(defaults.max_run_seconds),
        max_executors: section.max_executors.unwrap_or(defaults.max_executors),
        max_log_bytes: section.max_log_bytes.unwrap_or(defaults.max_log_bytes),
        max_processes: section.max_processes.unwrap_or(defaults.max_processes),
    };
    let positive = |gb: f64| gb.is_finite() && gb > 0.0;
    for (key, default, max) in [
        ("ram_gb", limits.default_ram_gb, limits.max_ram_gb),
        ("disk_gb", limits.default_disk_gb, limits.max_disk_gb),
    ] {
        if !positive(max) {
            problems.add(
                &format!("local.max_{key}"),
                file_name,
                "must be a positive number",
            );
        } else if !positive(default) || default > max {
            problems.add(
                &format!("local.default_{key}"),
                file_name,
                format!("must be a positive number no larger than local.max_{key} ({max})"),
            );
        }
    }
    for (key, value) in [
        ("local.max_run_seconds", limits.max_run_seconds),
        ("local.max_executors", limits.max_executors as u64),
        ("local.max_processes", limits.max_processes),
    ] {
        if value == 0 {
            problems.add(key, file_name, "must be at least 1");
        }
    }
    if limits.max_log_bytes < 1024 {
        problems.add("local.max_log_bytes", file_name, "must be at least 1024");
    }
    limits
}

/// This machine's memory in GB (GiB), from `/proc/meminfo`.
fn machine_memory_gb() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1_048_576.0)
}

fn resolve_identity(
    section: &IdentitySection,
    file_name: &str,
    problems: &mut Problems,
) -> tresor_service::IdentitySettings {
    let issuer = section
        .issuer
        .clone()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    if !issuer.is_empty() && (!loopback_or_https(&issuer) || issuer.contains('?')) {
        problems.add(
            "identity.issuer",
            file_name,
            "must be an https:// URL without a query (plain http only on loopback)",
        );
    }
    let ttl = section.token_ttl_seconds.unwrap_or(600);
    if !(5..=900).contains(&ttl) {
        problems.add(
            "identity.token_ttl_seconds",
            file_name,
            "must be between 5 and 900 (tokens live at most 15 minutes)",
        );
    }
    let audiences = section
        .audiences
        .clone()
        .unwrap_or_else(|| vec!["tresor".to_owned()]);
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        problems.add(
            "identity.audiences",
            file_name,
            "must list at least one non-empty audience",
        );
    }
    let mut sdk_env = Vec::new();
    for name in section.sdk_env.iter().flatten() {
        match sdk_variable(name) {
            Some(var) => sdk_env.push(var),
            None => problems.add(
                "identity.sdk_env",
                file_name,
                format!("{name:?} is not \"aws\", \"azure\" or an environment variable name"),
            ),
        }
    }
    let rotation_days = section.rotation_days.unwrap_or(30);
    if rotation_days == 0 {
        problems.add("identity.rotation_days", file_name, "must be at least 1");
    }
    tresor_service::IdentitySettings {
        issuer,
        token_ttl: std::time::Duration::from_secs(ttl.clamp(5, 900)),
        audiences,
        rotation_period: std::time::Duration::from_secs(u64::from(rotation_days.max(1)) * 86_400),
        sdk_env,
    }
}

fn resolve_compute_envs(
    sections: &std::collections::BTreeMap<String, ComputeEnvSection>,
    file_name: &str,
    problems: &mut Problems,
    default_worker: Option<&std::path::Path>,
) -> Vec<tresor_executors::SlurmSettings> {
    let mut envs = Vec::new();
    for (id, section) in sections {
        let key = format!("compute_envs.{id}");
        let valid_id = !id.is_empty()
            && id.len() <= 40
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_id || id == "local" {
            problems.add(
                &key,
                file_name,
                "the id must be 1 to 40 of a-z, 0-9 and '-', and not \"local\"",
            );
        }
        if section.kind != "slurm" {
            problems.add(
                &format!("{key}.type"),
                file_name,
                format!(
                    "{:?} is not a compute environment type; use \"slurm\"",
                    section.kind
                ),
            );
        }
        if !section.work_dir.is_absolute() {
            problems.add(
                &format!("{key}.work_dir"),
                file_name,
                "must be an absolute path to a directory shared with the nodes",
            );
        }
        let poll = section.poll_interval_seconds.unwrap_or(5.0);
        if !(0.1..=300.0).contains(&poll) {
            problems.add(
                &format!("{key}.poll_interval_seconds"),
                file_name,
                "must be between 0.1 and 300",
            );
        }
        let ttl = section.bootstrap_ttl_seconds.unwrap_or(300);
        if !(1..=3600).contains(&ttl) {
            problems.add(
                &format!("{key}.bootstrap_ttl_seconds"),
                file_name,
                "must be between 1 and 3600 (the token is spent within seconds of the job's start)",
            );
        }
        if let Some(url) = &section.server_url
            && !loopback_or_https(url)
        {
            problems.add(
                &format!("{key}.server_url"),
                file_name,
                "must be an https:// URL (plain http only on loopback)",
            );
        }
        let Some(worker_program) = section
            .worker_program
            .clone()
            .or_else(|| default_worker.map(std::path::Path::to_path_buf))
        else {
            continue;
        };
        envs.push(tresor_executors::SlurmSettings {
            name: id.clone(),
            partition: section.partition.clone(),
            account: section.account.clone(),
            qos: section.qos.clone(),
            extra_args: section.sbatch_args.clone(),
            worker_program,
            work_dir: section.work_dir.clone(),
            runtime_dir: section
                .runtime_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/shm")),
            server_url: section
                .server_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            poll_interval: std::time::Duration::from_secs_f64(poll.clamp(0.1, 300.0)),
            bootstrap_ttl: std::time::Duration::from_secs(ttl),
            max_jobs: section.max_jobs.unwrap_or(1000).max(1),
            bin_dir: section.bin_dir.clone(),
            image_cache: section.image_cache_dir.clone(),
        });
    }
    envs
}

fn resolve_s3(
    section: &S3Section,
    file_name: &str,
    problems: &mut Problems,
) -> Option<tresor_service::S3Settings> {
    let secret = match read_private_file(&section.secret_access_key_file) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).unwrap_or_default();
            tresor_crypto::SecretValue::new(text.trim().as_bytes().to_vec())
        }
        Err(e) => {
            problems.add("s3.secret_access_key_file", file_name, e);
            return None;
        }
    };
    if let Some(endpoint) = &section.endpoint
        && !loopback_or_https(endpoint)
    {
        problems.add(
            "s3.endpoint",
            file_name,
            "must be an https:// URL (plain http only on loopback)",
        );
    }
    let template = section
        .prefix_template
        .clone()
        .unwrap_or_else(|| "workspaces/{workspace}/".to_owned());
    if !template.contains("{workspace}") || !template.ends_with('/') {
        problems.add(
            "s3.prefix_template",
            file_name,
            "must contain {workspace} and end with '/', so each workspace gets its own prefix",
        );
    }
    let ttl = section.presign_ttl_seconds.unwrap_or(600);
    if !(1..=604_800).contains(&ttl) {
        problems.add(
            "s3.presign_ttl_seconds",
            file_name,
            "must be between 1 and 604800 (S3's limit of 7 days)",
        );
    }
    Some(tresor_service::S3Settings {
        allow_http: section
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://")),
        endpoint: section.endpoint.clone(),
        region: section
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_owned()),
        access_key_id: section.access_key_id.clone(),
        secret_access_key: secret,
        default_bucket: section.default_bucket.clone(),
        prefix_template: template,
        presign_ttl: std::time::Duration::from_secs(ttl),
    })
}

fn resolve_outbound(
    section: &OutboundSection,
    file_name: &str,
    problems: &mut Problems,
) -> Option<tresor_auth::client_credentials::ClientCredentials> {
    use tresor_auth::client_credentials::{ClientAuth, ClientCredentials};
    if !loopback_or_https(&section.token_url) {
        problems.add(
            "outbound.token_url",
            file_name,
            "must be an https:// URL (plain http only on loopback)",
        );
    }
    let auth = match (&section.client_secret_file, &section.private_key_file) {
        (Some(secret), None) => match read_private_file(secret) {
            Ok(bytes) => ClientAuth::Secret(String::from_utf8_lossy(&bytes).trim().to_owned()),
            Err(e) => {
                problems.add("outbound.client_secret_file", file_name, e);
                return None;
            }
        },
        (None, Some(key)) => match read_private_file(key).and_then(|pem| {
            ClientAuth::private_key_pem(&pem, section.key_id.clone()).map_err(|e| e.to_string())
        }) {
            Ok(auth) => auth,
            Err(e) => {
                problems.add("outbound.private_key_file", file_name, e);
                return None;
            }
        },
        _ => {
            problems.add(
                "outbound",
                file_name,
                "set exactly one of client_secret_file and private_key_file",
            );
            return None;
        }
    };
    match ClientCredentials::new(
        section.token_url.clone(),
        section.client_id.clone(),
        auth,
        section.scope.clone(),
        section.resource.clone(),
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.add("outbound", file_name, e);
            None
        }
    }
}

/// Creates the data directory: traversable (0711) so the sandbox user can reach task
/// directories inside, but not listable.
fn prepare_data_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))
}

/// The default `local.task_uid_range`: above every range `useradd` hands out as subordinate ids
/// (up to 600100000) and the ranges systemd-nspawn picks from (below 1879048192), and below
/// 2^31, which some tools misread as negative.
const DEFAULT_TASK_UID_RANGE: &str = "2000000000-2000065535";
/// The default `local.workspace_gid_range`, just above it.
const DEFAULT_WORKSPACE_GID_RANGE: &str = "2001000000-2001065535";

/// Parses "first-last", a range of host ids with both ends included; 0 (root) and -1 are refused.
fn parse_id_range(raw: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let bad = || format!("{raw:?} is not a range of host ids such as {DEFAULT_TASK_UID_RANGE}");
    let (first, last) = raw.trim().split_once('-').ok_or_else(bad)?;
    let first: u32 = first.trim().parse().map_err(|_| bad())?;
    let last: u32 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || last < first || last == u32::MAX {
        return Err(bad());
    }
    Ok(first..=last)
}

/// The host accounts and subordinate id ranges (of rootless containers) that use ids of
/// `range`, named; empty when none does.
fn ids_in_use(range: &std::ops::RangeInclusive<u32>) -> Vec<String> {
    let mut used = Vec::new();
    for (file, what) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(id)) = (fields.next(), fields.nth(1)) else {
                continue;
            };
            if id.parse::<u32>().is_ok_and(|id| range.contains(&id)) {
                used.push(format!("{what} {name} ({id})"));
            }
        }
    }
    let (start, end) = (u64::from(*range.start()), u64::from(*range.end()));
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let fields: Vec<&str> = line.trim().split(':').collect();
            let [name, first, count] = fields.as_slice() else {
                continue;
            };
            let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) else {
                continue;
            };
            let last = first.saturating_add(count.saturating_sub(1));
            if count > 0 && first <= end && last >= start {
                used.push(format!("{name}'s subordinate ids {first}-{last} in {file}"));
            }
        }
    }
    used
}

/// Says which directories on the way to `path` (itself included) a task's user cannot enter:
/// those without the search bit for others. `None` when every one can be entered (or `path`
/// does not exist, which is reported elsewhere).
fn closed_to_tasks(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let mut closed: Vec<(&Path, u32)> = real
        .ancestors()
        .filter_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.mode() & 0o7777;
            (mode & 0o001 == 0).then_some((dir, mode))
        })
        .collect();
    if closed.is_empty() {
        return None;
    }
    closed.reverse();
    let listed: Vec<String> = closed
        .iter()
        .map(|(dir, mode)| format!("{} (mode {mode:04o})", dir.display()))
        .collect();
    let names: Vec<String> = closed
        .iter()
        .map(|(dir, _)| dir.display().to_string())
        .collect();
    Some(format!(
        "tasks run as other host users than tresor, and they cannot enter {} on the way to {}; run `chmod o+x {}`, or choose a directory every user may traverse, such as /var/lib/tresor",
        listed.join(", "),
        real.display(),
        names.join(" ")
    ))
}

/// The canonical form of a path whose last component may not exist yet (a key file made at
/// first start).
fn canonical_even_if_missing(path: &Path) -> Option<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Some(real);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(path.file_name()?))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn find_on_path(program: &str, _env: &BTreeMap<String, String>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory the tasks' users may traverse, as a data dir's parent must be.
    fn traversable_tempdir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        dir
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "listen",
                "durability",
                "data_dir",
                "slots",
                "max_body_bytes",
                "kek_file",
                "secret_retention_days",
                "local.slots",
                "local.allow_network",
                "local.allowed_dirs",
                "local.max_ram_gb",
                "local.default_ram_gb",
                "local.max_executors",
                "local.log_tail_bytes",
                "local.runtime_dir",
                "limits.max_connections",
                "limits.requests_per_second",
                "limits.request_timeout_seconds",
                "secrets.max_per_workspace",
                "identity.token_ttl_seconds",
                "identity.audiences",
                "images.runtime",
                "images.cache_max_gb",
                "images.plain_http",
                "workflows.max_attachment_mb",
                "compute_envs.hpc.type",
                "compute_envs.hpc.work_dir",
                "compute_envs.hpc.poll_interval_seconds",
                "s3.endpoint",
                "outbound.token_url",
                "unknown_key",
                "local.unknown",
            ])
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}").replace("NaN", "nan")),
                any::<bool>().prop_map(|b| b.to_string()),
                "[ -~]{0,20}".prop_map(|s| format!("{s:?}")),
                Just("[]".to_owned()),
                Just("[\"/srv\", 3]".to_owned()),
                Just("{}".to_owned()),
                Just("\"slurm\"".to_owned()),
                Just("\"0.0.0.0:80\"".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_config_file_is_settings_or_problems_never_a_panic(
                lines in vec((key(), value()), 0..8),
                garbage in proptest::option::of("[ -~\n]{0,80}"),
            ) {
                let dir = traversable_tempdir();
                let file = dir.path().join("tresor.toml");
                // Dotted keys, each in its own table header so the file stays TOML-shaped.
                let mut text = String::new();
                for (key, value) in &lines {
                    match key.rsplit_once('.') {
                        Some((table, leaf)) => text.push_str(&format!("[{table}]\n{leaf} = {value}\n")),
                        None => text.insert_str(0, &format!("{key} = {value}\n")),
                    }
                }
                if let Some(garbage) = garbage {
                    text.push_str(&garbage);
                }
                std::fs::write(&file, &text).unwrap();
                let args = ServeArgs {
                    config: Some(file),
                    data_dir: Some(dir.path().join("data")),
                    ..ServeArgs::default()
                };
                if let Err(problems) = resolve(&args, &BTreeMap::new()) {
                    prop_assert!(!problems.is_empty());
                    prop_assert!(problems.iter().all(|p| !p.trim().is_empty()));
                }
            }
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tresor.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:80\"\n[local]\nslots = 0\n").unwrap();
        let env = BTreeMap::from([
            ("TRESOR_DURABILITY".to_owned(), "maybe".to_owned()),
            ("TRESOR_SLOTZ".to_owned(), "4".to_owned()),
        ]);
        let args = ServeArgs {
            config: Some(file.clone()),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        };
        let problems = resolve(&args, &env).unwrap_err();
        let text = problems.join("\n");
        assert!(
            text.contains("TRESOR_SLOTZ: unknown environment variable"),
            "{text}"
        );
        assert!(
            text.contains("durability (from TRESOR_DURABILITY): \"maybe\" is not full or normal"),
            "{text}"
        );
        assert!(
            text.contains("listen (from") && text.contains("not a loopback address"),
            "{text}"
        );
        assert!(
            text.contains("slots (from") && text.contains("must be at least 1"),
            "{text}"
        );
        assert!(problems.len() >= 4, "{problems:?}");
    }

    #[test]
    fn task_limits_are_checked_against_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tresor.toml");
        std::fs::write(
            &file,
            "[local]\ndefault_ram_gb = 8.0\nmax_ram_gb = 4.0\nmax_disk_gb = -1.0\nmax_executors = 0\nmax_log_bytes = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        };
        let text = resolve(&args, &BTreeMap::new()).unwrap_err().join("\n");
        for expected in [
            "local.default_ram_gb (from",
            "no larger than local.max_ram_gb (4)",
            "local.max_disk_gb (from",
            "local.max_executors (from",
            "local.max_log_bytes (from",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn image_settings_are_checked_and_the_runtime_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tresor.toml");
        let args = ServeArgs {
            config: Some(file.clone()),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        };
        std::fs::write(
            &file,
            "[images]\nruntime = \"docker\"\ncache_max_gb = -1\n[images.mirrors]\n\"docker.io\" = \"https://mirror\"\n",
        )
        .unwrap();
        let text = resolve(&args, &BTreeMap::new()).unwrap_err().join("\n");
        for expected in [
            "images.runtime (from",
            "\"docker\" is not a runtime",
            "images.cache_max_gb (from",
            "images.mirrors (from",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        std::fs::write(
            &file,
            "[images]\nplain_http = [\"127.0.0.1:5000\"]\n[images.mirrors]\n\"docker.io/library\" = \"127.0.0.1:5000/official\"\n",
        )
        .unwrap();
        let settings = resolve(&args, &BTreeMap::new()).unwrap();
        let images = &settings.app.services.images;
        assert_eq!(images.runtime, tresor_service::ImageRuntime::Oci);
        assert_eq!(images.plain_http, ["127.0.0.1:5000"]);
        let env = BTreeMap::from([("TRESOR_IMAGE_RUNTIME".to_owned(), "host".to_owned())]);
        let settings = resolve(&args, &env).unwrap();
        assert_eq!(
            settings.app.services.images.runtime,
            tresor_service::ImageRuntime::Host
        );
    }

    #[test]
    fn storage_that_exposes_the_data_dir_or_keys_and_a_data_dir_tasks_can_see_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tresor.toml");
        std::fs::write(
            &file,
            "kek_file = \"/etc/tresor-test-kek\"\naudit_key_file = \"/etc/tresor-test-audit-key\"\n",
        )
        .unwrap();
        // The allowed directory holds the data dir, the key file and this config file.
        let args = ServeArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            allowed_dirs: vec![dir.path().to_path_buf()],
            ..ServeArgs::default()
        };
        let text = resolve(&args, &BTreeMap::new()).unwrap_err().join("\n");
        assert!(
            text.contains("data_dir (from --data-dir)")
                && text.contains("lies inside the storage directory"),
            "{text}"
        );
        assert!(
            text.contains("config (from") && text.contains("tresor.toml lies inside the storage"),
            "{text}"
        );
        assert!(
            text.contains("kek_file (from")
                && text
                    .contains("tresor-test-kek lies inside /etc, which every task's sandbox shows"),
            "{text}"
        );
        assert!(
            text.contains("audit_key_file (from")
                && text.contains(
                    "tresor-test-audit-key lies inside /etc, which every task's sandbox shows"
                ),
            "{text}"
        );
        assert!(!Path::new("/etc/tresor-test-kek").exists());
        assert!(!Path::new("/etc/tresor-test-audit-key").exists());

        // An audit key in the storage directory, beside a data dir outside it.
        let data = tempfile::tempdir().unwrap();
        let storage = tempfile::tempdir().unwrap();
        let key = storage.path().join("audit-key");
        let file = data.path().join("tresor.toml");
        std::fs::write(
            &file,
            format!("audit_key_file = {:?}\n", key.display().to_string()),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            data_dir: Some(data.path().join("data")),
            allowed_dirs: vec![storage.path().to_path_buf()],
            ..ServeArgs::default()
        };
        let text = resolve(&args, &BTreeMap::new()).unwrap_err().join("\n");
        assert!(
            text.contains("audit_key_file (from")
                && text.contains("audit-key lies inside the storage directory"),
            "{text}"
        );
    }

    #[test]
    fn task_uid_ranges_are_parsed_and_ranges_the_host_uses_are_found() {
        assert_eq!(
            parse_id_range("2000000000-2000065535"),
            Ok(2000000000..=2000065535)
        );
        assert_eq!(parse_id_range(" 7 - 7 "), Ok(7..=7));
        for bad in ["", "7", "9-7", "0-10", "a-b", "1-4294967295"] {
            assert!(parse_id_range(bad).is_err(), "{bad:?}");
        }
        assert!(ids_in_use(&(2000000000..=2000065535)).is_empty());
        assert!(
            ids_in_use(&(0..=0)).contains(&"user root (0)".to_owned()),
            "{:?}",
            ids_in_use(&(0..=0))
        );
    }

    #[test]
    fn unknown_file_keys_are_refused_and_flags_win() {
        let dir = traversable_tempdir();
        let file = dir.path().join("tresor.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            ..ServeArgs::default()
        };
        let text = resolve(&args, &BTreeMap::new()).unwrap_err().join("\n");
        assert!(text.contains("unknown field `lisen`"), "{text}");

        let args = ServeArgs {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".to_owned()),
            slots: Some(3),
            ..ServeArgs::default()
        };
        let env = BTreeMap::from([("TRESOR_SLOTS".to_owned(), "7".to_owned())]);
        let settings = resolve(&args, &env).unwrap();
        assert_eq!(settings.app.services.local.slots, 3);
        assert_eq!(settings.listen.port(), 0);
    }

    #[test]
    fn the_audit_key_file_defaults_to_the_data_dir_and_the_environment_moves_it() {
        let dir = traversable_tempdir();
        let args = ServeArgs {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".to_owned()),
            ..ServeArgs::default()
        };
        let settings = resolve(&args, &BTreeMap::new()).unwrap();
        assert_eq!(
            settings.app.services.store.audit_key_file,
            dir.path().join("data").join("audit-key")
        );
        let env = BTreeMap::from([(
            "TRESOR_AUDIT_KEY_FILE".to_owned(),
            "/etc/tresor/audit-key".to_owned(),
        )]);
        let settings = resolve(&args, &env).unwrap();
        assert_eq!(
            settings.app.services.store.audit_key_file,
            PathBuf::from("/etc/tresor/audit-key")
        );
    }
}

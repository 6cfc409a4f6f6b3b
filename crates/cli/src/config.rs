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
    /// Days a deleted secret is kept before it is purged (default 30).
    secret_retention_days: Option<u32>,
    #[serde(default)]
    local: LocalSection,
    #[serde(default)]
    tes: TesSection,
    #[serde(default)]
    oidc: OidcSection,
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
    /// Bytes of each executor's stdout and stderr kept in the task log.
    log_tail_bytes: Option<usize>,
    /// The bubblewrap program (default: `bwrap` on PATH).
    bwrap: Option<PathBuf>,
    /// Host uid and gid executors run as when the server runs as root (default 65534, nobody).
    sandbox_uid: Option<u32>,
    sandbox_gid: Option<u32>,
    /// The binary that runs `worker` (default: this executable).
    worker_program: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TesSection {
    default_page_size: Option<u32>,
    max_page_size: Option<u32>,
    organization_name: Option<String>,
    organization_url: Option<String>,
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
    "TRESOR_LOG",
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
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
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

    let kek_file = layers.pick(
        "kek_file",
        None,
        "TRESOR_KEK_FILE",
        |s| Ok(PathBuf::from(s)),
        file.kek_file.clone(),
        || data_dir.value.join("kek"),
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

    let data_dir_path = data_dir.value.clone();
    if let Err(e) = prepare_data_dir(&data_dir_path) {
        layers.problems.add("data_dir", &data_dir.source, e);
    }

    match (layers.problems.0.is_empty(), listen, bwrap, worker_program) {
        (true, Some(listen), Some(bwrap), Some(worker_program)) => Ok(Settings {
            listen,
            data_dir: data_dir_path.clone(),
            app: AppSettings {
                store: StoreSettings {
                    path: data_dir_path.join("tresor.db"),
                    durability,
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
                },
                service: ServiceSettings {
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
                },
                max_body_bytes: max_body_bytes.value,
                bootstrap_token_file: data_dir_path.join("bootstrap-admin-token"),
                oidc_issuers,
                kek_file: kek_file.value,
                secret_retention,
                log_redactor: Default::default(),
            },
        }),
        _ => Err(layers.problems.0),
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
    fn unknown_file_keys_are_refused_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
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
        assert_eq!(settings.app.local.slots, 3);
        assert_eq!(settings.listen.port(), 0);
    }
}

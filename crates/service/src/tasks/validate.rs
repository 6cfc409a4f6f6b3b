//! CreateTask validation: turns a submitted `TesTask` into an accepted one, or names the field to fix.

use std::path::{Path, PathBuf};

use tresor_api_types::tes::{TesFileType, TesResources, TesTask};
use tresor_domain::{ComputeEnv, TaskSpec};
use tresor_executors::paths::{self, check_task_path, has_wildcard};

use crate::ServiceError;

/// Backend parameters the local executor honours (keys are case-insensitive); `time_limit` (in
/// SLURM's `--time` syntax) bounds the run time of the task's executors.
pub const LOCAL_BACKEND_PARAMETERS: &[&str] = tresor_executors::local::BACKEND_PARAMETERS;
/// The same on a SLURM compute environment: `time_limit` becomes the job's `--time`.
pub const SLURM_BACKEND_PARAMETERS: &[&str] = tresor_executors::slurm::BACKEND_PARAMETERS;

/// Largest inline input `content`; the spec asks servers to accept at least 128 KiB.
pub const MAX_INPUT_CONTENT: usize = 1024 * 1024;

/// What validation needs to know about the server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_cpu_cores: u32,
    /// Executors one task may have (`local.max_executors`, in every compute environment).
    pub max_executors: usize,
    /// The most `ram_gb`, `disk_gb` and `time_limit` (seconds) a task may ask for; `None` where
    /// the compute environment decides (SLURM refuses a job that fits no node).
    pub max_ram_gb: Option<f64>,
    pub max_disk_gb: Option<f64>,
    pub max_run_seconds: Option<u64>,
    pub allow_network: bool,
    pub allowed_dirs: Vec<PathBuf>,
    /// The compute environment the task will run in.
    pub compute_env: ComputeEnv,
    /// The backend parameters that environment honours (lowercase).
    pub backend_parameters: &'static [&'static str],
}

/// A task that passed validation.
#[derive(Debug, Clone)]
pub struct AcceptedTask {
    /// The task to store: the submission minus unsupported backend parameters, typed.
    pub spec: TaskSpec,
    /// Warnings for `system_logs`, such as ignored backend parameters.
    pub notes: Vec<String>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
    ServiceError::invalid(field, reason)
}

fn check_path(field: &str, path: &str, is_dir: bool) -> Result<(), ServiceError> {
    check_task_path(path, is_dir).map_err(|e| invalid(field, format!("{path:?} {e}")))
}

/// A `file://` URL's path, checked to lie inside an allowed directory.
fn allowed_file_url(field: &str, raw: &str, limits: &Limits) -> Result<(), ServiceError> {
    let url =
        url::Url::parse(raw).map_err(|e| invalid(field, format!("{raw:?} is not a URL: {e}")))?;
    let path = url.to_file_path().map_err(|()| {
        invalid(
            field,
            format!("{raw:?} is not a local file URL (file:///absolute/path)"),
        )
    })?;
    // Percent-decoding can turn %2F.. into a real `..`, which could step out of the allowed dir.
    let plain = path.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    if !plain {
        return Err(invalid(
            field,
            format!("{raw:?} must not contain . or .. segments"),
        ));
    }
    if !paths::is_within(Path::new(&path), &limits.allowed_dirs) {
        let allowed: Vec<String> = limits
            .allowed_dirs
            .iter()
            .map(|d| format!("file://{}", d.display()))
            .collect();
        return Err(invalid(
            field,
            format!(
                "{raw:?} is outside the storage this server allows; use a location under {}",
                if allowed.is_empty() {
                    "(none configured)".to_owned()
                } else {
                    allowed.join(", ")
                }
            ),
        ));
    }
    Ok(())
}

/// Validates a CreateTask body.
pub fn accept_task(mut task: TesTask, limits: &Limits) -> Result<AcceptedTask, ServiceError> {
    for (field, set) in [
        ("id", task.id.is_some()),
        ("state", task.state.is_some()),
        ("logs", task.logs.is_some()),
        ("creation_time", task.creation_time.is_some()),
    ] {
        if set {
            return Err(invalid(
                field,
                "is set by the server; remove it from the request",
            ));
        }
    }
    if task.executors.is_empty() {
        return Err(invalid("executors", "at least one executor is required"));
    }
    if task.executors.len() > limits.max_executors {
        return Err(invalid(
            "executors",
            format!(
                "{} executors are more than this server's {} per task (local.max_executors)",
                task.executors.len(),
                limits.max_executors
            ),
        ));
    }
    for (i, executor) in task.executors.iter().enumerate() {
        let field = |name: &str| format!("executors[{i}].{name}");
        if executor.image.trim().is_empty() {
            return Err(invalid(field("image"), "must not be empty"));
        }
        if executor.command.is_empty() || executor.command[0].is_empty() {
            return Err(invalid(field("command"), "must name a program to run"));
        }
        if executor.command.iter().any(|a| a.contains('\0')) {
            return Err(invalid(field("command"), "must not contain NUL bytes"));
        }
        if let Some(workdir) = &executor.workdir {
            check_path(&field("workdir"), workdir, true)?;
        }
        for (name, path) in [
            ("stdin", &executor.stdin),
            ("stdout", &executor.stdout),
            ("stderr", &executor.stderr),
        ] {
            if let Some(path) = path {
                check_path(&field(name), path, false)?;
            }
        }
        for (key, value) in executor.env.iter().flatten() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(invalid(
                    field("env"),
                    format!("{key:?} is not a valid variable name"),
                ));
            }
            if value.contains('\0') {
                return Err(invalid(
                    field("env"),
                    format!("the value of {key} contains a NUL byte"),
                ));
            }
        }
    }
    for (i, input) in task.inputs.iter_mut().flatten().enumerate() {
        let field = |name: &str| format!("inputs[{i}].{name}");
        let is_dir = input.file_type == Some(TesFileType::Directory);
        check_path(&field("path"), &input.path, is_dir)?;
        match (input.content.as_deref(), input.url.as_deref()) {
            (Some(content), _) if !content.is_empty() => {
                if is_dir {
                    return Err(invalid(
                        field("content"),
                        "a DIRECTORY input cannot have content",
                    ));
                }
                if content.len() > MAX_INPUT_CONTENT {
                    return Err(invalid(
                        field("content"),
                        format!("is larger than {MAX_INPUT_CONTENT} bytes; pass a url instead"),
                    ));
                }
                // TES: beside content, url "must be ignored". It is dropped rather than kept
                // unchecked, so nothing later (presigning, staging) can act on it.
                input.url = None;
            }
            (_, Some(url)) if url.starts_with("file://") => {
                allowed_file_url(&field("url"), url, limits)?;
            }
            (_, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                if is_dir {
                    return Err(invalid(
                        field("url"),
                        "a DIRECTORY input cannot come from http(s)",
                    ));
                }
                url::Url::parse(url).map_err(|e| invalid(field("url"), format!("{url:?}: {e}")))?;
            }
            (_, Some(url)) if url.starts_with("s3://") => {
                crate::storage::check_s3_url(&field("url"), url)?;
            }
            (_, Some(url)) => {
                return Err(invalid(
                    field("url"),
                    format!(
                        "{url:?} uses an unsupported scheme; use file://, s3://, http:// or https://"
                    ),
                ));
            }
            (_, None) => return Err(invalid(field("url"), "either url or content is required")),
        }
    }
    for (i, output) in task.outputs.iter().flatten().enumerate() {
        let field = |name: &str| format!("outputs[{i}].{name}");
        let is_dir = output.file_type == Some(TesFileType::Directory);
        if has_wildcard(&output.path) {
            check_path(&field("path"), &paths::wildcard_base(&output.path), true)?;
            let prefix = output.path_prefix.as_deref().unwrap_or_default();
            if prefix.is_empty() {
                return Err(invalid(
                    field("path_prefix"),
                    "is required when path contains wildcards",
                ));
            }
            if !output.path.starts_with(prefix) {
                return Err(invalid(
                    field("path_prefix"),
                    format!("{prefix:?} is not a prefix of the path"),
                ));
            }
        } else {
            check_path(&field("path"), &output.path, is_dir)?;
        }
        if output.url.starts_with("s3://") {
            crate::storage::check_s3_url(&field("url"), &output.url)?;
        } else if output.url.starts_with("file://") {
            allowed_file_url(&field("url"), &output.url, limits)?;
        } else {
            return Err(invalid(
                field("url"),
                format!(
                    "{:?} uses an unsupported scheme; outputs go to file:// or s3:// locations",
                    output.url
                ),
            ));
        }
    }
    for (i, volume) in task.volumes.iter().flatten().enumerate() {
        check_path(&format!("volumes[{i}]"), volume, true)?;
    }
    let notes = check_resources(task.resources.as_mut(), limits)?;
    // The spec asks the server to fill in `type` once known; FILE is its default.
    for input in task.inputs.iter_mut().flatten() {
        input.file_type.get_or_insert(TesFileType::File);
    }
    for output in task.outputs.iter_mut().flatten() {
        output.file_type.get_or_insert(TesFileType::File);
    }
    Ok(AcceptedTask {
        spec: super::spec::from_tes(task, limits.compute_env.clone())?,
        notes,
    })
}

/// Checks resources and backend parameters; unsupported parameters are dropped (and noted)
/// unless `backend_parameters_strict`, as TES 1.1 requires. Returns those notes; the resolved
/// values (cores, network, time limit) are read from the document once, in `spec::from_tes`.
fn check_resources(
    resources: Option<&mut TesResources>,
    limits: &Limits,
) -> Result<Vec<String>, ServiceError> {
    let Some(resources) = resources else {
        return Ok(Vec::new());
    };
    let cpu_cores = match resources.cpu_cores {
        None => 1,
        Some(n) if n < 1 => return Err(invalid("resources.cpu_cores", "must be at least 1")),
        Some(n) => n.unsigned_abs(),
    };
    if cpu_cores > limits.max_cpu_cores {
        return Err(invalid(
            "resources.cpu_cores",
            format!(
                "{cpu_cores} is more than this server's {} slots",
                limits.max_cpu_cores
            ),
        ));
    }
    for (name, value, max, key) in [
        (
            "ram_gb",
            resources.ram_gb,
            limits.max_ram_gb,
            "local.max_ram_gb",
        ),
        (
            "disk_gb",
            resources.disk_gb,
            limits.max_disk_gb,
            "local.max_disk_gb",
        ),
    ] {
        if let Some(v) = value
            && (!v.is_finite() || v < 0.0)
        {
            return Err(invalid(
                format!("resources.{name}"),
                "must be a non-negative number",
            ));
        }
        if let (Some(v), Some(max)) = (value, max)
            && v > max
        {
            return Err(invalid(
                format!("resources.{name}"),
                format!("{v} is more than this server's maximum of {max} ({key})"),
            ));
        }
    }
    let strict = resources.backend_parameters_strict.unwrap_or(false);
    let mut notes = Vec::new();
    let mut network = false;
    if let Some(params) = resources.backend_parameters.as_mut() {
        let unsupported: Vec<String> = params
            .keys()
            .filter(|k| {
                !limits
                    .backend_parameters
                    .contains(&k.to_ascii_lowercase().as_str())
            })
            .cloned()
            .collect();
        if !unsupported.is_empty() {
            if strict {
                return Err(invalid(
                    "resources.backend_parameters",
                    format!(
                        "unsupported keys {unsupported:?} with backend_parameters_strict; compute environment {} supports {:?}",
                        limits.compute_env.id, limits.backend_parameters
                    ),
                ));
            }
            for key in &unsupported {
                params.remove(key);
            }
            notes.push(format!(
                "warning: ignored unsupported backend_parameters {unsupported:?}; compute environment {} supports {:?}",
                limits.compute_env.id, limits.backend_parameters
            ));
        }
        for (key, value) in params.iter() {
            if key.eq_ignore_ascii_case(super::spec::TIME_LIMIT) {
                let Some(seconds) = tresor_executors::slurm::time_limit_seconds(value) else {
                    return Err(invalid(
                        format!("resources.backend_parameters.{key}"),
                        "must be a SLURM time limit: minutes, minutes:seconds, hours:minutes:seconds or days-hours[:minutes[:seconds]]",
                    ));
                };
                if let Some(max) = limits.max_run_seconds
                    && !(1..=max).contains(&seconds)
                {
                    return Err(invalid(
                        format!("resources.backend_parameters.{key}"),
                        format!(
                            "{value:?} is {seconds} s; this server's tasks may run from 1 s to {max} s (local.max_run_seconds)"
                        ),
                    ));
                }
            }
            if key.eq_ignore_ascii_case("network") {
                network = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(invalid(
                            format!("resources.backend_parameters.{key}"),
                            "must be \"true\" or \"false\"",
                        ));
                    }
                };
            }
        }
    }
    if network && !limits.allow_network {
        return Err(invalid(
            "resources.backend_parameters.network",
            "this server does not allow network access for tasks",
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_api_types::tes::{TesExecutor, TesInput, TesOutput};

    fn limits() -> Limits {
        Limits {
            max_cpu_cores: 2,
            max_executors: 3,
            max_ram_gb: Some(4.0),
            max_disk_gb: Some(10.0),
            max_run_seconds: Some(3_600),
            allow_network: false,
            allowed_dirs: vec![PathBuf::from("/srv/data")],
            compute_env: ComputeEnv {
                id: "local".to_owned(),
                kind: tresor_domain::ComputeEnvKind::Local,
            },
            backend_parameters: LOCAL_BACKEND_PARAMETERS,
        }
    }

    fn task() -> TesTask {
        TesTask {
            executors: vec![TesExecutor {
                image: "alpine".into(),
                command: vec!["true".into()],
                ..TesExecutor::default()
            }],
            ..TesTask::default()
        }
    }

    fn reason(task: TesTask) -> String {
        match accept_task(task, &limits()) {
            Err(ServiceError::Invalid { field, reason }) => format!("{field}: {reason}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn rejections_name_the_field() {
        let mut t = task();
        t.executors.clear();
        assert_eq!(reason(t), "executors: at least one executor is required");

        let mut t = task();
        t.id = Some("x".into());
        assert_eq!(
            reason(t),
            "id: is set by the server; remove it from the request"
        );

        let mut t = task();
        t.inputs = Some(vec![TesInput {
            path: "data/in".into(),
            content: Some("x".into()),
            ..TesInput::default()
        }]);
        assert_eq!(
            reason(t),
            "inputs[0].path: \"data/in\" must be an absolute path"
        );

        let mut t = task();
        t.inputs = Some(vec![TesInput {
            path: "/data/in".into(),
            url: Some("gs://bucket/x".into()),
            ..TesInput::default()
        }]);
        assert!(
            reason(t).starts_with("inputs[0].url: \"gs://bucket/x\" uses an unsupported scheme")
        );

        let mut t = task();
        t.outputs = Some(vec![TesOutput {
            path: "/data/out".into(),
            url: "file:///etc/passwd".into(),
            ..TesOutput::default()
        }]);
        assert!(reason(t).contains("outside the storage this server allows"));

        let mut t = task();
        t.outputs = Some(vec![TesOutput {
            path: "/data/out".into(),
            url: "file:///srv/data/x%2F..%2F..%2Fetc%2Fcron.d/job".into(),
            ..TesOutput::default()
        }]);
        assert!(reason(t).contains("must not contain . or .. segments"));

        let mut t = task();
        t.outputs = Some(vec![TesOutput {
            path: "/data/*.txt".into(),
            url: "file:///srv/data/out".into(),
            ..TesOutput::default()
        }]);
        assert_eq!(
            reason(t),
            "outputs[0].path_prefix: is required when path contains wildcards"
        );

        let mut t = task();
        t.resources = Some(TesResources {
            cpu_cores: Some(64),
            ..TesResources::default()
        });
        assert_eq!(
            reason(t),
            "resources.cpu_cores: 64 is more than this server's 2 slots"
        );

        let mut t = task();
        t.executors = vec![t.executors[0].clone(); 4];
        assert_eq!(
            reason(t),
            "executors: 4 executors are more than this server's 3 per task (local.max_executors)"
        );

        let mut t = task();
        t.resources = Some(TesResources {
            ram_gb: Some(8.0),
            ..TesResources::default()
        });
        assert_eq!(
            reason(t),
            "resources.ram_gb: 8 is more than this server's maximum of 4 (local.max_ram_gb)"
        );

        let mut t = task();
        t.resources = Some(TesResources {
            disk_gb: Some(10.5),
            ..TesResources::default()
        });
        assert_eq!(
            reason(t),
            "resources.disk_gb: 10.5 is more than this server's maximum of 10 (local.max_disk_gb)"
        );
    }

    #[test]
    fn time_limits_are_checked_against_the_servers_longest_run() {
        let with_time = |value: &str| {
            let mut t = task();
            t.resources = Some(TesResources {
                backend_parameters: Some([("time_limit".to_owned(), value.to_owned())].into()),
                backend_parameters_strict: Some(true),
                ..TesResources::default()
            });
            t
        };
        let accepted = accept_task(with_time("0:30"), &limits()).unwrap();
        assert_eq!(
            accepted
                .spec
                .resources
                .requested
                .unwrap()
                .backend_parameters
                .unwrap()["time_limit"],
            "0:30"
        );
        assert_eq!(
            reason(with_time("2:00:00")),
            "resources.backend_parameters.time_limit: \"2:00:00\" is 7200 s; this server's tasks may run from 1 s to 3600 s (local.max_run_seconds)"
        );
        assert!(reason(with_time("0")).contains("may run from 1 s"));
        let slurm = Limits {
            compute_env: ComputeEnv {
                id: "hpc".to_owned(),
                kind: tresor_domain::ComputeEnvKind::Slurm,
            },
            backend_parameters: SLURM_BACKEND_PARAMETERS,
            max_run_seconds: None,
            ..limits()
        };
        let accepted = accept_task(with_time("10:00"), &slurm).unwrap();
        assert_eq!(
            accepted
                .spec
                .resources
                .requested
                .unwrap()
                .backend_parameters
                .unwrap()["time_limit"],
            "10:00"
        );
        let refused = accept_task(with_time("ten minutes"), &slurm).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("resources.backend_parameters.time_limit: must be a SLURM time limit"),
            "{refused}"
        );
    }

    #[test]
    fn backend_parameters_follow_the_strict_flag() {
        let params = |strict| TesResources {
            backend_parameters: Some([("VmSize".to_owned(), "big".to_owned())].into()),
            backend_parameters_strict: Some(strict),
            ..TesResources::default()
        };
        let mut t = task();
        t.resources = Some(params(true));
        assert!(
            reason(t).starts_with("resources.backend_parameters: unsupported keys [\"VmSize\"]")
        );

        let mut t = task();
        t.resources = Some(params(false));
        let accepted = accept_task(t, &limits()).unwrap();
        let stored = accepted
            .spec
            .resources
            .requested
            .unwrap()
            .backend_parameters
            .unwrap();
        assert!(stored.is_empty(), "unsupported keys must not be stored");
        assert_eq!(accepted.notes.len(), 1);

        let mut t = task();
        t.resources = Some(TesResources {
            backend_parameters: Some([("Network".to_owned(), "true".to_owned())].into()),
            ..TesResources::default()
        });
        assert_eq!(
            reason(t),
            "resources.backend_parameters.network: this server does not allow network access for tasks"
        );
    }
}

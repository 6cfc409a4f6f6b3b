//! A task as tresor runs it. CreateTask turns the submitted TES document into a [`TaskSpec`]
//! once, after validation; the scheduler, the backends, the worker hand-off and the rendered TES
//! document all read this type, never the wire document again.
//!
//! The stored form is versioned (`version`): a change of shape gets a new version and a
//! conversion of stored rows, so a replica of another version never misreads a task.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of [`TaskSpec`]'s stored form that this build writes and reads.
pub const SPEC_VERSION: u32 = 1;

/// The tag naming the secrets a task gets as files.
pub const SECRETS_TAG: &str = "tresor.secrets";
/// The tag naming the secrets a task also gets as environment variables.
pub const SECRETS_ENV_TAG: &str = "tresor.secrets.env";

/// Which kind of compute environment runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeEnvKind {
    /// Workers on the server's own host, in bubblewrap sandboxes.
    Local,
    /// One batch job per task on a SLURM cluster.
    Slurm,
}

impl ComputeEnvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeEnvKind::Local => "local",
            ComputeEnvKind::Slurm => "slurm",
        }
    }
}

/// A compute environment: its id (what workspaces choose) and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeEnv {
    pub id: String,
    pub kind: ComputeEnvKind,
}

/// Whether an input or output is one file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileType {
    #[default]
    File,
    Directory,
}

/// One command of a task, run in order in the task's sandbox.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    pub image: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_error: Option<bool>,
}

/// A file or directory put into the task before its first executor: from `url`, or `content`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<FileType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamable: Option<bool>,
}

impl Input {
    pub fn is_dir(&self) -> bool {
        self.file_type == Some(FileType::Directory)
    }
}

/// A file or directory delivered from the task to `url` after its last executor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub url: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<FileType>,
}

impl Output {
    pub fn is_dir(&self) -> bool {
        self.file_type == Some(FileType::Directory)
    }
}

/// The resources as the submitter asked for them (shown back as given), and as tresor resolved
/// them (what the backends use).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Cores the task holds while it runs (at least 1).
    pub cpu_cores: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<f64>,
    /// The run-time limit in SLURM's syntax (`time_limit` backend parameter), already checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// The `time_limit` in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_seconds: Option<u64>,
    /// Whether the task asked for the host's network (`network` backend parameter).
    #[serde(default)]
    pub network: bool,
    /// The submitted `resources` object, minus backend parameters the environment ignores;
    /// kept only to render the task back as it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<RequestedResources>,
}

/// TES `resources` as submitted (after unsupported backend parameters were dropped).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_parameters: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_parameters_strict: Option<bool>,
}

/// The secrets a task declared in its tags: `tresor.secrets` as files, `tresor.secrets.env`
/// also as environment variables (and as files). Names only, never values.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredSecrets {
    /// Every declared name: each is delivered as a file.
    pub files: Vec<String>,
    /// The names also exported as environment variables.
    pub env: Vec<String>,
}

impl DeclaredSecrets {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// An accepted task: everything tresor needs to run it and to show it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The stored form's version ([`SPEC_VERSION`]).
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub executors: Vec<Executor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    pub resources: Resources,
    #[serde(default)]
    pub secrets: DeclaredSecrets,
    /// Every tag as submitted, the secret declarations included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Where the task runs: its workspace's choice when it was created.
    pub compute_env: ComputeEnv,
    /// The workflow run the task is part of, as its engine or one of its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunLink>,
    /// The id of the API request that created it, which its worker logs on every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A task's place in a workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLink {
    /// The run's id.
    pub id: String,
    pub role: RunRole,
    /// The run's directory in its workspace's `file://` storage, an absolute host path. Every
    /// task of the run sees it read-write at this same path, so the paths an engine writes
    /// into its jobs' commands hold in the jobs too.
    pub dir: String,
}

/// What a task does for its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunRole {
    /// The workflow engine; it may create, watch and cancel the run's jobs.
    Engine,
    /// A job the engine started.
    Job,
}

impl TaskSpec {
    /// A task of these executors in `compute_env`, with nothing else: one core, no inputs,
    /// outputs, secrets or tags.
    pub fn new(executors: Vec<Executor>, compute_env: ComputeEnv) -> TaskSpec {
        TaskSpec {
            version: SPEC_VERSION,
            name: None,
            description: None,
            executors,
            inputs: Vec::new(),
            outputs: Vec::new(),
            volumes: Vec::new(),
            resources: Resources {
                cpu_cores: 1,
                ..Resources::default()
            },
            secrets: DeclaredSecrets::default(),
            tags: BTreeMap::new(),
            compute_env,
            run: None,
            request_id: None,
        }
    }

    /// Parses a stored task; a version this build does not know is an error that says so.
    pub fn from_stored(json: &str) -> Result<TaskSpec, String> {
        #[derive(Deserialize)]
        struct Version {
            version: Option<u32>,
        }
        let version = serde_json::from_str::<Version>(json)
            .map_err(|e| e.to_string())?
            .version;
        match version {
            Some(SPEC_VERSION) => serde_json::from_str(json).map_err(|e| e.to_string()),
            Some(other) => Err(format!(
                "stored task version {other}; this build reads version {SPEC_VERSION}"
            )),
            None => Err("a stored task without a version (a TES document)".to_owned()),
        }
    }

    /// The stored form.
    pub fn to_stored(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            version: SPEC_VERSION,
            name: Some("n".into()),
            description: None,
            executors: vec![Executor {
                image: "alpine".into(),
                command: vec!["true".into()],
                ..Executor::default()
            }],
            inputs: Vec::new(),
            outputs: Vec::new(),
            volumes: Vec::new(),
            resources: Resources {
                cpu_cores: 1,
                ..Resources::default()
            },
            secrets: DeclaredSecrets::default(),
            tags: BTreeMap::new(),
            compute_env: ComputeEnv {
                id: "local".into(),
                kind: ComputeEnvKind::Local,
            },
            run: None,
            request_id: None,
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_names_its_version() {
        let stored = spec().to_stored();
        assert!(stored.starts_with(r#"{"version":1,"#), "{stored}");
        assert_eq!(TaskSpec::from_stored(&stored).unwrap(), spec());
    }

    #[test]
    fn unknown_versions_and_tes_documents_are_refused_with_a_reason() {
        let future = spec()
            .to_stored()
            .replace(r#""version":1"#, r#""version":7"#);
        assert!(
            TaskSpec::from_stored(&future)
                .unwrap_err()
                .contains("version 7")
        );
        let tes = r#"{"executors":[{"image":"alpine","command":["true"]}]}"#;
        assert!(TaskSpec::from_stored(tes).unwrap_err().contains("TES"));
    }
}

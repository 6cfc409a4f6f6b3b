//! Workflow engines as the site configures them, and the engine task of a run.

use std::collections::BTreeMap;

use tresor_api_types::tes::{TesExecutor, TesResources, TesTask};

use crate::error::ServiceError;

/// The adapters tresor puts in every run's control directory (`.tresor/`, on the engine's
/// `PYTHONPATH`): a TES client for the engine's socket, a Snakemake executor plugin, and a
/// cwltool runner. They are part of this build, so a run never depends on what is installed
/// beside the engine.
pub(crate) const ADAPTERS: &[(&str, &str)] = &[
    (
        "tresor_tes.py",
        include_str!("../../../../engines/tresor_tes.py"),
    ),
    (
        "tresor_cwl.py",
        include_str!("../../../../engines/tresor_cwl.py"),
    ),
    (
        "snakemake_executor_plugin_tresor/__init__.py",
        include_str!("../../../../engines/snakemake_executor_plugin_tresor/__init__.py"),
    ),
];

/// One configured engine (`[workflows.engines.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// The name clients give as `workflow_engine`.
    pub name: String,
    /// The WES workflow type it runs (`CWL`, `SMK`, `NFL`, …).
    pub workflow_type: String,
    /// The versions of that type it runs.
    pub type_versions: Vec<String>,
    /// The engine's own version, as service-info shows it.
    pub version: String,
    /// The engine's command line. `{workflow}` (the main file's path), `{params}` (the
    /// parameters file), `{run_dir}`, `{adapters}` (tresor's adapters) and `{run_id}` are
    /// replaced, and so is `{<name>}` for each of `parameters`.
    pub command: Vec<String>,
    /// Variables of the engine's environment, with the same replacements as `command` (the
    /// job's image, the run's paths and `PYTHONPATH` are added).
    pub env: BTreeMap<String, String>,
    /// The engine task's image (pulled when `images.runtime = "oci"`).
    pub image: String,
    /// The image of jobs that name none.
    pub job_image: String,
    /// Parameters a run may set (`workflow_engine_parameters`), with their defaults.
    pub parameters: BTreeMap<String, String>,
    /// Cores the engine task asks for.
    pub cpu_cores: u32,
}

/// A parameter value goes into the engine's argv: plain words only.
fn value_ok(value: &str) -> bool {
    // Not an option or a response file of the engine's own.
    !value.starts_with(['-', '@'])
        && value.len() <= 200
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/=,+-@".contains(&b))
}

impl EngineSettings {
    /// The run's parameter values: each default, replaced by the request's value for it. A
    /// parameter the engine does not declare is refused, so a run cannot add engine options
    /// the site has not allowed.
    pub(crate) fn parameters_for(
        &self,
        requested: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ServiceError> {
        let mut values = self.parameters.clone();
        for (key, value) in requested {
            let name = key.strip_prefix(&format!("{}:", self.name)).unwrap_or(key);
            let Some(slot) = values.get_mut(name) else {
                return Err(ServiceError::invalid(
                    "workflow_engine_parameters",
                    format!(
                        "{key:?} is not a parameter of engine {}; it takes {:?} (service-info default_workflow_engine_parameters)",
                        self.name,
                        self.parameters.keys().collect::<Vec<_>>()
                    ),
                ));
            };
            if !value_ok(value) {
                return Err(ServiceError::invalid(
                    "workflow_engine_parameters",
                    format!(
                        "{key}: {value:?} may hold only letters, digits and ._:/=,+-@ (at most 200), and not start with - or @"
                    ),
                ));
            }
            *slot = value.clone();
        }
        Ok(values)
    }

    /// The run's engine task: the engine's command in the run's directory.
    pub(crate) fn engine_task(
        &self,
        run_id: &str,
        run_dir: &str,
        workflow: &str,
        parameters: &BTreeMap<String, String>,
        run_tags: &BTreeMap<String, String>,
    ) -> TesTask {
        let adapters = format!("{run_dir}/{}", super::files::CONTROL_DIR);
        let mut fixed = BTreeMap::from([
            ("workflow", format!("{run_dir}/{workflow}")),
            ("params", format!("{run_dir}/{}", super::files::PARAMS_FILE)),
            ("run_dir", run_dir.to_owned()),
            ("adapters", adapters.clone()),
            ("run_id", run_id.to_owned()),
        ]);
        for (name, value) in parameters {
            fixed.entry(name.as_str()).or_insert_with(|| value.clone());
        }
        let fill = |part: &String| {
            let mut part = part.clone();
            for (name, value) in &fixed {
                part = part.replace(&format!("{{{name}}}"), value);
            }
            part
        };
        let command: Vec<String> = self.command.iter().map(fill).collect();
        let mut env: BTreeMap<String, String> =
            self.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        env.insert("TRESOR_RUN_ID".to_owned(), run_id.to_owned());
        env.insert("TRESOR_RUN_DIR".to_owned(), run_dir.to_owned());
        env.insert("TRESOR_JOB_IMAGE".to_owned(), self.job_image.clone());
        let python_path = match env.get("PYTHONPATH") {
            Some(more) => format!("{adapters}:{more}"),
            None => adapters,
        };
        env.insert("PYTHONPATH".to_owned(), python_path);
        env.entry("HOME".to_owned())
            .or_insert_with(|| "/tmp".to_owned());
        // The task's host user has no passwd entry; engines that ask who they run as
        // (Snakemake's getpass.getuser()) read these first.
        for name in ["USER", "LOGNAME"] {
            env.entry(name.to_owned())
                .or_insert_with(|| "tresor".to_owned());
        }
        // The adapters' directory is read-only for tasks; and the run's directory, the working
        // directory, must not shadow the engine's modules (`python -m snakemake` would import a
        // `snakemake/` there first).
        for name in ["PYTHONDONTWRITEBYTECODE", "PYTHONSAFEPATH"] {
            env.entry(name.to_owned()).or_insert_with(|| "1".to_owned());
        }
        // The run's declared secrets are the engine's; everything else of the run's tags is
        // the run's, not its engine task's.
        let mut tags: BTreeMap<String, String> = run_tags
            .iter()
            .filter(|(k, _)| {
                k.as_str() == tresor_domain::task::SECRETS_TAG
                    || k.as_str() == tresor_domain::task::SECRETS_ENV_TAG
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.insert("tresor.run".to_owned(), run_id.to_owned());
        tags.insert("tresor.run.role".to_owned(), "engine".to_owned());
        TesTask {
            name: Some(format!("{} engine of run {run_id}", self.name)),
            executors: vec![TesExecutor {
                image: self.image.clone(),
                command,
                workdir: Some(run_dir.to_owned()),
                env: Some(env),
                ..TesExecutor::default()
            }],
            resources: Some(TesResources {
                cpu_cores: Some(i32::try_from(self.cpu_cores.max(1)).unwrap_or(1)),
                ..TesResources::default()
            }),
            tags: Some(tags),
            ..TesTask::default()
        }
    }
}

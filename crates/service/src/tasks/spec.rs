//! The TES document and the typed task: one conversion in at CreateTask (after validation), one
//! rendering out for GetTask and ListTasks.

use std::collections::BTreeMap;

use tresor_api_types::tes::{TesExecutor, TesFileType, TesInput, TesOutput, TesResources, TesTask};
use tresor_domain::task::{
    ComputeEnv, DeclaredSecrets, Executor, FileType, Input, Output, RequestedResources, Resources,
    SECRETS_ENV_TAG, SECRETS_TAG, SPEC_VERSION, TaskSpec,
};

use crate::ServiceError;

/// The backend parameter that limits a task's run time, in SLURM's `--time` syntax.
pub const TIME_LIMIT: &str = "time_limit";

/// The secrets a task declared in its tags: `tresor.secrets` as files, `tresor.secrets.env`
/// also as environment variables (and as files).
pub(crate) fn declared_secrets(
    tags: &BTreeMap<String, String>,
) -> Result<DeclaredSecrets, ServiceError> {
    let parse = |tag: &str| -> Result<Vec<String>, ServiceError> {
        let mut names = Vec::new();
        for name in tags
            .get(tag)
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            crate::secrets::check_name(name).map_err(|_| {
                ServiceError::invalid(
                    format!("tags.{tag}"),
                    format!("{name:?} is not a secret name; list names separated by commas"),
                )
            })?;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    };
    let env = parse(SECRETS_ENV_TAG)?;
    let mut files = parse(SECRETS_TAG)?;
    for name in &env {
        if !files.contains(name) {
            files.push(name.clone());
        }
    }
    Ok(DeclaredSecrets { files, env })
}

fn backend_parameter<'a>(resources: Option<&'a TesResources>, key: &str) -> Option<&'a String> {
    resources
        .and_then(|r| r.backend_parameters.as_ref())
        .into_iter()
        .flatten()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn file_type(t: Option<TesFileType>) -> Option<FileType> {
    t.map(|t| match t {
        TesFileType::File => FileType::File,
        TesFileType::Directory => FileType::Directory,
    })
}

fn tes_file_type(t: Option<FileType>) -> Option<TesFileType> {
    t.map(|t| match t {
        FileType::File => TesFileType::File,
        FileType::Directory => TesFileType::Directory,
    })
}

/// The typed task of a validated TES document.
pub(crate) fn from_tes(tes: TesTask, env: ComputeEnv) -> Result<TaskSpec, ServiceError> {
    let tags = tes.tags.unwrap_or_default();
    let secrets = declared_secrets(&tags)?;
    let requested = tes.resources;
    let time_limit = backend_parameter(requested.as_ref(), TIME_LIMIT).cloned();
    let resources = Resources {
        cpu_cores: requested
            .as_ref()
            .and_then(|r| r.cpu_cores)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(1)
            .max(1),
        ram_gb: requested.as_ref().and_then(|r| r.ram_gb),
        disk_gb: requested.as_ref().and_then(|r| r.disk_gb),
        time_limit_seconds: time_limit
            .as_deref()
            .and_then(tresor_executors::slurm::time_limit_seconds),
        time_limit,
        network: backend_parameter(requested.as_ref(), "network")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        requested: requested.map(|r| RequestedResources {
            cpu_cores: r.cpu_cores,
            preemptible: r.preemptible,
            ram_gb: r.ram_gb,
            disk_gb: r.disk_gb,
            zones: r.zones,
            backend_parameters: r.backend_parameters,
            backend_parameters_strict: r.backend_parameters_strict,
        }),
    };
    Ok(TaskSpec {
        version: SPEC_VERSION,
        name: tes.name,
        description: tes.description,
        executors: tes
            .executors
            .into_iter()
            .map(|e| Executor {
                image: e.image,
                command: e.command,
                workdir: e.workdir,
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr,
                env: e.env,
                ignore_error: e.ignore_error,
            })
            .collect(),
        inputs: tes
            .inputs
            .unwrap_or_default()
            .into_iter()
            .map(|i| Input {
                name: i.name,
                description: i.description,
                url: i.url,
                path: i.path,
                file_type: file_type(i.file_type),
                content: i.content,
                streamable: i.streamable,
            })
            .collect(),
        outputs: tes
            .outputs
            .unwrap_or_default()
            .into_iter()
            .map(|o| Output {
                name: o.name,
                description: o.description,
                url: o.url,
                path: o.path,
                path_prefix: o.path_prefix,
                file_type: file_type(o.file_type),
            })
            .collect(),
        volumes: tes.volumes.unwrap_or_default(),
        resources,
        secrets,
        tags,
        compute_env: env,
        run: None,
        request_id: crate::request_id::current(),
    })
}

/// A task stored before the typed task existed (its TES document, validated when it was
/// accepted), in the typed form.
pub(crate) fn from_legacy(document: &str, env: ComputeEnv) -> Result<TaskSpec, String> {
    let tes: TesTask = serde_json::from_str(document).map_err(|e| e.to_string())?;
    from_tes(tes, env).map_err(|e| e.to_string())
}

/// The task as a TES document (without id, state, logs or creation time).
pub(crate) fn to_tes(spec: &TaskSpec) -> TesTask {
    let r = spec.resources.requested.as_ref();
    TesTask {
        name: spec.name.clone(),
        description: spec.description.clone(),
        inputs: (!spec.inputs.is_empty()).then(|| {
            spec.inputs
                .iter()
                .map(|i| TesInput {
                    name: i.name.clone(),
                    description: i.description.clone(),
                    url: i.url.clone(),
                    path: i.path.clone(),
                    file_type: tes_file_type(i.file_type),
                    content: i.content.clone(),
                    streamable: i.streamable,
                })
                .collect()
        }),
        outputs: (!spec.outputs.is_empty()).then(|| {
            spec.outputs
                .iter()
                .map(|o| TesOutput {
                    name: o.name.clone(),
                    description: o.description.clone(),
                    url: o.url.clone(),
                    path: o.path.clone(),
                    path_prefix: o.path_prefix.clone(),
                    file_type: tes_file_type(o.file_type),
                })
                .collect()
        }),
        resources: r.map(|r| TesResources {
            cpu_cores: r.cpu_cores,
            preemptible: r.preemptible,
            ram_gb: r.ram_gb,
            disk_gb: r.disk_gb,
            zones: r.zones.clone(),
            backend_parameters: r.backend_parameters.clone(),
            backend_parameters_strict: r.backend_parameters_strict,
        }),
        executors: spec
            .executors
            .iter()
            .map(|e| TesExecutor {
                image: e.image.clone(),
                command: e.command.clone(),
                workdir: e.workdir.clone(),
                stdin: e.stdin.clone(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
                env: e.env.clone(),
                ignore_error: e.ignore_error,
            })
            .collect(),
        volumes: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
        tags: (!spec.tags.is_empty()).then(|| spec.tags.clone()),
        ..TesTask::default()
    }
}

/// Whether any string the submitter wrote in a task holds a stored value. Only those strings
/// are searched, never field names nor the names in the secret tags: a member's value may hide
/// that value and nothing else, not the shape of every task.
/// The first credential written in plain sight into a task (see `tresor_crypto::plain_sight`):
/// the field that holds it and what it looks like.
pub(crate) fn plain_credential(spec: &TaskSpec) -> Option<(String, &'static str)> {
    use tresor_crypto::plain_sight::credential_in;
    let mut texts: Vec<(String, String)> = Vec::new();
    texts.extend(spec.name.iter().map(|n| ("name".to_owned(), n.clone())));
    texts.extend(
        spec.description
            .iter()
            .map(|d| ("description".to_owned(), d.clone())),
    );
    for (i, executor) in spec.executors.iter().enumerate() {
        texts.push((
            format!("executors[{i}].command"),
            executor.command.join(" "),
        ));
        for (k, v) in executor.env.iter().flatten() {
            texts.push((format!("executors[{i}].env.{k}"), format!("{k}={v}")));
        }
    }
    for (i, input) in spec.inputs.iter().enumerate() {
        texts.extend(
            input
                .content
                .iter()
                .map(|c| (format!("inputs[{i}].content"), c.clone())),
        );
        texts.extend(
            input
                .url
                .iter()
                .map(|u| (format!("inputs[{i}].url"), u.clone())),
        );
    }
    for (i, output) in spec.outputs.iter().enumerate() {
        texts.push((format!("outputs[{i}].url"), output.url.clone()));
    }
    for (k, v) in &spec.tags {
        texts.push((format!("tags.{k}"), format!("{k}={v}")));
    }
    texts
        .into_iter()
        .find_map(|(field, text)| credential_in(&text).map(|what| (field, what)))
}

/// How to use a secret instead of pasting it.
pub(crate) const USE_A_SECRET: &str = "a document is stored and shown in plain text: store the value as a secret (tresor secret set NAME, or PUT /api/v1/workspaces/{ws}/user-secrets/NAME) and declare it by name in tags[\"tresor.secrets.env\"] (an environment variable) or tags[\"tresor.secrets\"] (a file)";

pub(crate) fn holds_value(spec: &TaskSpec, guard: &tresor_crypto::redact::Redactor) -> bool {
    let mut strings: Vec<&str> = Vec::new();
    strings.extend(spec.name.as_deref());
    strings.extend(spec.description.as_deref());
    for input in &spec.inputs {
        strings.extend(
            [
                input.name.as_deref(),
                input.description.as_deref(),
                input.url.as_deref(),
                input.content.as_deref(),
            ]
            .into_iter()
            .flatten(),
        );
        strings.push(&input.path);
    }
    for output in &spec.outputs {
        strings.extend(
            [output.name.as_deref(), output.description.as_deref()]
                .into_iter()
                .flatten(),
        );
        strings.extend(output.path_prefix.as_deref());
        strings.extend([output.url.as_str(), output.path.as_str()]);
    }
    for executor in &spec.executors {
        strings.push(&executor.image);
        strings.extend(executor.command.iter().map(String::as_str));
        for field in [
            &executor.workdir,
            &executor.stdin,
            &executor.stdout,
            &executor.stderr,
        ] {
            strings.extend(field.as_deref());
        }
        for (k, v) in executor.env.iter().flatten() {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    strings.extend(spec.volumes.iter().map(String::as_str));
    if let Some(requested) = &spec.resources.requested {
        strings.extend(requested.zones.iter().flatten().map(String::as_str));
        for (k, v) in requested.backend_parameters.iter().flatten() {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    for (k, v) in &spec.tags {
        if k != SECRETS_TAG && k != SECRETS_ENV_TAG {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    strings.iter().any(|s| guard.finds_in(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_domain::ComputeEnvKind;

    fn local() -> ComputeEnv {
        ComputeEnv {
            id: "local".into(),
            kind: ComputeEnvKind::Local,
        }
    }

    #[test]
    fn a_task_renders_back_as_it_was_accepted() {
        let tes: TesTask = serde_json::from_str(
            r#"{"name":"n","description":"d",
                "inputs":[{"url":"s3://b/k","path":"/data/in","type":"FILE"},{"content":"x","path":"/data/c","type":"FILE"}],
                "outputs":[{"url":"file:///srv/o","path":"/data/o","type":"DIRECTORY"}],
                "resources":{"cpu_cores":2,"ram_gb":1.5,"backend_parameters":{"time_limit":"1:00","network":"true"}},
                "executors":[{"image":"alpine","command":["sh","-c","true"],"env":{"A":"b"},"workdir":"/data"}],
                "volumes":["/scratch"],
                "tags":{"tresor.secrets":"db_pass, api_key","tresor.secrets.env":"api_key","k":"v"}}"#,
        )
        .unwrap();
        let spec = from_tes(tes.clone(), local()).unwrap();
        assert_eq!(spec.resources.cpu_cores, 2);
        assert!(spec.resources.network);
        assert_eq!(spec.resources.time_limit.as_deref(), Some("1:00"));
        assert_eq!(spec.resources.time_limit_seconds, Some(60));
        assert_eq!(spec.secrets.files, ["db_pass", "api_key"]);
        assert_eq!(spec.secrets.env, ["api_key"]);
        let stored = TaskSpec::from_stored(&spec.to_stored()).unwrap();
        assert_eq!(to_tes(&stored), tes);
    }

    #[test]
    fn a_legacy_document_converts_with_its_defaults() {
        let spec = from_legacy(
            r#"{"executors":[{"image":"alpine","command":["true"]}]}"#,
            local(),
        )
        .unwrap();
        assert_eq!(spec.resources.cpu_cores, 1);
        assert!(!spec.resources.network);
        assert!(spec.secrets.is_empty());
        assert_eq!(spec.version, SPEC_VERSION);
    }
}

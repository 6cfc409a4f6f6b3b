//! Property tests of the parsers that face attackers: page tokens, TES task documents, and the
//! paths of a workflow run's attachments.

use std::path::{Component, Path};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tresor_api_types::tes::{TesExecutor, TesInput, TesOutput, TesResources, TesTask};

use crate::tasks::page_token::PageTokens;
use crate::tasks::validate::{Limits, accept_task};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn page_tokens_round_trip_and_any_change_is_refused(
        filter in ".{0,40}",
        seq in any::<i64>(),
        flip in any::<Index>(),
        bit in 0u8..8,
        junk in "[A-Za-z0-9_-]{0,120}",
    ) {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tokens = PageTokens::new(b"server key");
        let token = tokens.issue(&filter, seq);
        prop_assert_eq!(tokens.check(&filter, &token), Some(seq));
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let at = flip.index(raw.len());
        raw[at] ^= 1 << bit;
        prop_assert_eq!(tokens.check(&filter, &URL_SAFE_NO_PAD.encode(&raw)), None);
        prop_assert_eq!(tokens.check(&filter, &junk), None);
        prop_assert_eq!(PageTokens::new(b"other key").check(&filter, &token), None);
    }
}

/// Strings an attacker would try where a task names paths and URLs.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/data/in.txt".to_owned()),
        Just("/data/../etc/shadow".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("/".to_owned()),
        Just("".to_owned()),
        Just("/proc/self/environ".to_owned()),
        Just("file:///srv/data/in.txt".to_owned()),
        Just("file:///srv/data/../../etc/shadow".to_owned()),
        Just("file:///srv/data%2f..%2f..%2fetc".to_owned()),
        Just("file://host/srv/data/x".to_owned()),
        Just("s3://bucket/key".to_owned()),
        Just("http://169.254.169.254/latest/meta-data".to_owned()),
        Just("/tmp/\u{0}x".to_owned()),
        "/[a-z./]{0,30}",
        "[ -~]{0,40}",
        ".{0,20}",
    ]
}

fn limits() -> Limits {
    Limits {
        max_cpu_cores: 4,
        max_executors: 3,
        max_ram_gb: Some(8.0),
        max_disk_gb: Some(20.0),
        max_run_seconds: Some(3_600),
        allow_network: false,
        allowed_dirs: vec!["/srv/data".into()],
        compute_env: tresor_domain::ComputeEnv {
            id: "local".to_owned(),
            kind: tresor_domain::ComputeEnvKind::Local,
        },
        backend_parameters: crate::tasks::validate::LOCAL_BACKEND_PARAMETERS,
    }
}

/// Mostly what a task could well be, sometimes what an attacker would try: most documents get
/// through validation, so the property is about accepted tasks, not only refusals.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["/data/in.txt", "/data/out.txt", "/data/dir", "/work/x", "/tmp/y"])
            .prop_map(str::to_owned),
        1 => hostile(),
    ]
}

fn file_url() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["file:///srv/data/in.txt", "file:///srv/data/sub/out.txt"])
            .prop_map(str::to_owned),
        1 => hostile(),
    ]
}

fn task() -> impl Strategy<Value = TesTask> {
    (
        vec(
            (
                prop_oneof![3 => Just("debian:12".to_owned()), 1 => hostile()],
                vec(
                    prop_oneof![3 => Just("true".to_owned()), 1 => hostile()],
                    1..3,
                ),
                proptest::option::of(path()),
            ),
            1..4,
        ),
        vec(
            (
                proptest::option::of(file_url()),
                path(),
                proptest::option::of(".{0,20}"),
            ),
            0..3,
        ),
        vec((file_url(), path()), 0..3),
        vec(path(), 0..2),
        proptest::option::of((
            proptest::option::of(-2i32..10),
            proptest::option::of(prop_oneof![
                Just(f64::NAN),
                Just(-1.0),
                0.0f64..64.0,
                Just(f64::INFINITY)
            ]),
            proptest::option::of(prop_oneof![Just(f64::NAN), 0.0f64..64.0, Just(1e300)]),
        )),
    )
        .prop_map(|(executors, inputs, outputs, volumes, resources)| TesTask {
            executors: executors
                .into_iter()
                .map(|(image, command, workdir)| TesExecutor {
                    image,
                    command,
                    workdir,
                    ..TesExecutor::default()
                })
                .collect(),
            inputs: Some(
                inputs
                    .into_iter()
                    .map(|(url, path, content)| TesInput {
                        url,
                        path,
                        content,
                        ..TesInput::default()
                    })
                    .collect(),
            ),
            outputs: Some(
                outputs
                    .into_iter()
                    .map(|(url, path)| TesOutput {
                        url,
                        path,
                        ..TesOutput::default()
                    })
                    .collect(),
            ),
            volumes: Some(volumes),
            resources: resources.map(|(cpu_cores, ram_gb, disk_gb)| TesResources {
                cpu_cores,
                ram_gb,
                disk_gb,
                ..TesResources::default()
            }),
            ..TesTask::default()
        })
}

/// A path the sandbox may be given: absolute, and no `.`/`..` part to climb out with.
fn plain_absolute(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.contains('\0')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn an_accepted_task_names_only_plain_paths_and_allowed_files(task in task()) {
        // Whatever the document, an answer: never a panic.
        if let Ok(accepted) = accept_task(task.clone(), &limits()) {
            let spec = accepted.spec;
            prop_assert!(!spec.executors.is_empty());
            for input in &spec.inputs {
                prop_assert!(plain_absolute(&input.path), "input path {:?}", input.path);
                if let Some(url) = input.url.as_deref().filter(|u| u.starts_with("file:")) {
                    let path = url.trim_start_matches("file://");
                    prop_assert!(
                        plain_absolute(path) && path.starts_with("/srv/data/"),
                        "input url {url:?}"
                    );
                }
            }
            for output in &spec.outputs {
                prop_assert!(plain_absolute(&output.path), "output path {:?}", output.path);
                if output.url.starts_with("file:") {
                    let path = output.url.trim_start_matches("file://");
                    prop_assert!(
                        plain_absolute(path) && path.starts_with("/srv/data/"),
                        "output url {:?}", output.url
                    );
                }
            }
            for volume in &spec.volumes {
                prop_assert!(plain_absolute(volume), "volume {volume:?}");
            }
            for executor in &spec.executors {
                if let Some(dir) = &executor.workdir {
                    prop_assert!(plain_absolute(dir), "workdir {dir:?}");
                }
            }
            let r = &spec.resources;
            prop_assert!(r.cpu_cores >= 1 && r.cpu_cores <= 4);
        }
    }

    #[test]
    fn an_accepted_attachment_path_stays_inside_the_run_directory(path in prop_oneof![
        "[a-z./\\\\]{0,20}",
        ".{0,30}",
        Just("..".to_owned()),
        Just("a/../../b".to_owned()),
        Just(".tresor/engine.py".to_owned()),
    ]) {
        if crate::runs::files::check_relative(&path).is_ok() {
            let joined = Path::new("/run/dir").join(&path);
            prop_assert!(joined.starts_with("/run/dir/"));
            prop_assert!(joined.components().skip(3).all(|c| matches!(c, Component::Normal(_))));
            prop_assert!(!path.starts_with(".tresor"));
        }
    }
}

//! WES with real engines: Snakemake and cwltool (from PyPI, in the venv `engines-up.sh` builds
//! under /opt), each job a TES task of its run, through the real server and the typed client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tresor_api_types::tes::{TesState, TesView};
use tresor_api_types::wes::RunRequest;
use tresor_client::{WesAttachment, WesClient};

use crate::support::*;

/// The engines' venv (`scripts/lib/engines-up.sh` builds it and exports this).
fn engines_venv() -> String {
    std::env::var("TRESOR_TEST_ENGINES").unwrap_or_else(|_| {
        let default = "/opt/tresor-engines/venv";
        assert!(
            std::path::Path::new(default).join("bin/python").exists(),
            "the workflow engines are missing: run scripts/lib/engines-up.sh (scripts/test.sh does)"
        );
        default.to_owned()
    })
}

/// The test server's engines: Snakemake and cwltool, as a site would configure them.
pub fn test_engines() -> tresor_service::WorkflowSettings {
    let venv = engines_venv();
    let python = format!("{venv}/bin/python");
    let env = BTreeMap::from([("PATH".to_owned(), format!("{venv}/bin:/usr/bin:/bin"))]);
    let strings = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    tresor_service::WorkflowSettings {
        engines: vec![
            tresor_service::EngineSettings {
                name: "snakemake".to_owned(),
                workflow_type: "SMK".to_owned(),
                type_versions: strings(&["9"]),
                version: "9.27.1".to_owned(),
                command: strings(&[
                    &python,
                    "-m",
                    "snakemake",
                    "--snakefile",
                    "{workflow}",
                    "--directory",
                    "{run_dir}",
                    "--configfile",
                    "{params}",
                    "--executor",
                    "tresor",
                    "--jobs",
                    "{jobs}",
                    "--shared-fs-usage",
                    "input-output",
                    "persistence",
                    "sources",
                    "source-cache",
                    "storage-local-copies",
                    "--nolock",
                ]),
                env: env.clone(),
                image: "docker.io/library/debian:12".to_owned(),
                job_image: "docker.io/library/debian:12".to_owned(),
                parameters: BTreeMap::from([("jobs".to_owned(), "4".to_owned())]),
                cpu_cores: 1,
            },
            tresor_service::EngineSettings {
                name: "cwltool".to_owned(),
                workflow_type: "CWL".to_owned(),
                type_versions: strings(&["v1.0", "v1.1", "v1.2"]),
                version: "3.3.20260925135507".to_owned(),
                command: strings(&[
                    &python,
                    "{adapters}/tresor_cwl.py",
                    "--parallel",
                    "{workflow}",
                    "{params}",
                ]),
                env,
                image: "docker.io/library/debian:12".to_owned(),
                job_image: "docker.io/library/debian:12".to_owned(),
                parameters: BTreeMap::new(),
                cpu_cores: 1,
            },
        ],
        ..Default::default()
    }
}

pub async fn wes_server() -> TestServer {
    TestServer::start_with(|s| s.services.workflows = test_engines()).await
}

pub fn attach(name: &str, content: &str) -> WesAttachment {
    WesAttachment {
        name: name.to_owned(),
        content: content.as_bytes().to_vec(),
    }
}

pub fn request(kind: &str, version: &str, url: &str, params: serde_json::Value) -> RunRequest {
    RunRequest {
        workflow_params: params.as_object().cloned(),
        workflow_type: kind.to_owned(),
        workflow_type_version: version.to_owned(),
        workflow_url: url.to_owned(),
        ..RunRequest::default()
    }
}

/// Waits (up to five minutes) for a run to end.
pub async fn wait_run(wes: &WesClient, id: &str) -> TesState {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let state = wes.status(id).await.unwrap().state;
        if matches!(
            state,
            TesState::Complete
                | TesState::ExecutorError
                | TesState::SystemError
                | TesState::Canceled
        ) {
            return state;
        }
        assert!(Instant::now() < deadline, "run {id} still {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The engine's stdout and stderr, through TES (the run log links to them).
async fn engine_output(server: &TestServer, wes: &WesClient, id: &str) -> String {
    let log = wes.run_log(id).await.unwrap();
    let engine = wes
        .run_tasks(id)
        .await
        .unwrap()
        .task_logs
        .into_iter()
        .find(|t| t.name.contains("engine"))
        .expect("the run lists its engine");
    let task = server
        .client
        .get_task(&engine.id, TesView::Full)
        .await
        .unwrap();
    format!(
        "{}\n{}\nsystem: {:?}",
        stdout(&task, 0),
        task.logs
            .iter()
            .flatten()
            .flat_map(|l| &l.logs)
            .map(|l| l.stderr.clone().unwrap_or_default())
            .collect::<String>(),
        log.run_log.system_logs
    )
}

const SNAKEFILE: &str = r#"
rule all:
    input: "results/combined.txt"

rule upper:
    input: "data/{name}.txt"
    output: "results/{name}.upper"
    shell: "tr a-z A-Z < {input} > {output}"

rule combine:
    input: expand("results/{name}.upper", name=config["names"])
    output: "results/combined.txt"
    shell: "cat {input} > {output}"
"#;

#[tokio::test]
async fn a_snakemake_workflow_runs_each_job_as_a_task_of_its_run() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let started = Instant::now();
    let id = wes
        .run_workflow(
            &request(
                "SMK",
                "9",
                "Snakefile",
                serde_json::json!({ "names": ["a", "b"] }),
            ),
            &[
                attach("Snakefile", SNAKEFILE),
                attach("data/a.txt", "alpha\n"),
                attach("data/b.txt", "beta\n"),
            ],
        )
        .await
        .unwrap();
    let state = wait_run(&wes, &id).await;
    let took = started.elapsed();
    let run_dir = server.storage.join("runs").join(&id);
    assert_eq!(
        state,
        TesState::Complete,
        "{}\n{}",
        engine_output(&server, &wes, &id).await,
        command_output("ls", &["-lanR", run_dir.to_str().unwrap()])
    );
    let log = wes.run_log(&id).await.unwrap();
    assert_eq!(log.request.workflow_url, "Snakefile");
    assert!(log.task_logs_url.ends_with(&format!("/runs/{id}/tasks")));
    // The engine and three jobs (two `upper`, one `combine`), every one a task of the run.
    let tasks = wes.run_tasks(&id).await.unwrap().task_logs;
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    for task in &tasks {
        assert_eq!(task.state, Some(TesState::Complete), "{task:?}");
        assert!(task.tes_uri.as_deref().is_some_and(|u| u.ends_with(&task.id)), "{task:?}");
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("results/combined.txt")).unwrap(),
        "ALPHA\nBETA\n"
    );
    eprintln!("snakemake, 3 jobs: {took:?}");
}

//! WES with real engines: Snakemake and cwltool (from PyPI, in the venv `engines-up.sh` builds
//! under /opt), each job a TES task of its run, through the real server and the typed client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tresor_api_types::tes::{TesState, TesView};
use tresor_api_types::wes::RunRequest;
use tresor_client::{WesAttachment, WesClient};

use crate::support::*;

/// A run's directory: `<first allowed dir>/.tresor-runs/<workspace>/<run>`, beside the
/// workspace's directory `workspace_dir`.
pub fn run_dir(workspace_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    workspace_dir
        .parent()
        .unwrap()
        .join(".tresor-runs")
        .join(workspace_dir.file_name().unwrap())
        .join(id)
}

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
                    "--max-status-checks-per-second",
                    "100",
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

/// Waits (up to `seconds`) until the run's tasks satisfy `done`.
async fn wait_tasks(
    wes: &WesClient,
    id: &str,
    seconds: u64,
    done: impl Fn(&[tresor_api_types::wes::WesTaskLog]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let tasks = wes.run_tasks(id).await.unwrap().task_logs;
        if done(&tasks) {
            return;
        }
        assert!(Instant::now() < deadline, "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(tasks: &[tresor_api_types::wes::WesTaskLog]) -> usize {
    tasks
        .iter()
        .filter(|t| t.state == Some(TesState::Running))
        .count()
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

fn snakemake_request() -> RunRequest {
    request(
        "SMK",
        "9",
        "Snakefile",
        serde_json::json!({ "names": ["a", "b"] }),
    )
}

/// SNAKEFILE and its two inputs; the run makes `results/combined.txt` of them.
fn snakemake_files() -> Vec<WesAttachment> {
    vec![
        attach("Snakefile", SNAKEFILE),
        attach("data/a.txt", "alpha\n"),
        attach("data/b.txt", "beta\n"),
    ]
}

#[tokio::test]
async fn a_snakemake_workflow_runs_each_job_as_a_task_of_its_run() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let started = Instant::now();
    let id = wes
        .run_workflow(&snakemake_request(), &snakemake_files())
        .await
        .unwrap();
    let state = wait_run(&wes, &id).await;
    let took = started.elapsed();
    let run_dir = run_dir(&server.storage, &id);
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
        assert!(
            task.tes_uri
                .as_deref()
                .is_some_and(|u| u.ends_with(&task.id)),
            "{task:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("results/combined.txt")).unwrap(),
        "ALPHA\nBETA\n"
    );
    eprintln!("snakemake, 3 jobs: {took:?}");
}

const UPPER_CWL: &str = r#"cwlVersion: v1.2
class: CommandLineTool
hints:
  DockerRequirement:
    dockerPull: docker.io/library/busybox:1
baseCommand: [tr, a-z, A-Z]
inputs:
  input_file: File
stdin: $(inputs.input_file.path)
stdout: upper.txt
outputs:
  output_file: {type: stdout}
"#;

const MD5_CWL: &str = r#"cwlVersion: v1.2
class: CommandLineTool
baseCommand: md5sum
inputs:
  input_file: {type: File, inputBinding: {position: 1}}
stdout: md5.txt
outputs:
  output_file: {type: stdout}
"#;

const WF_CWL: &str = r#"cwlVersion: v1.2
class: Workflow
inputs:
  input_file: File
outputs:
  upper_file: {type: File, outputSource: upper/output_file}
  md5_file: {type: File, outputSource: md5/output_file}
steps:
  upper:
    run: tools/upper.cwl
    in: {input_file: input_file}
    out: [output_file]
  md5:
    run: tools/md5.cwl
    in: {input_file: upper/output_file}
    out: [output_file]
"#;

pub fn cwl_files() -> Vec<WesAttachment> {
    vec![
        attach("wf.cwl", WF_CWL),
        attach("tools/upper.cwl", UPPER_CWL),
        attach("tools/md5.cwl", MD5_CWL),
        attach("data/in.txt", "hello tresor\n"),
    ]
}

pub fn cwl_request() -> RunRequest {
    request(
        "CWL",
        "v1.2",
        "wf.cwl",
        serde_json::json!({ "input_file": { "class": "File", "path": "data/in.txt" } }),
    )
}

#[tokio::test]
async fn a_cwl_workflow_runs_each_step_as_a_task_in_its_image() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let started = Instant::now();
    let id = wes
        .run_workflow(&cwl_request(), &cwl_files())
        .await
        .unwrap();
    let state = wait_run(&wes, &id).await;
    let took = started.elapsed();
    assert_eq!(
        state,
        TesState::Complete,
        "{}",
        engine_output(&server, &wes, &id).await
    );
    // cwltool started from the schemas engines-up.sh parsed once, not from their YAML.
    let engine = engine_output(&server, &wes, &id).await;
    assert!(engine.contains("CWL schemas parsed in advance"), "{engine}");
    // The outputs are published into the workspace's file:// directory (runs/<id>/), read-only
    // for its members, and the run log names them there.
    let published = server.storage.join("runs").join(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = wes.run_log(&id).await.unwrap();
        let names = log.outputs["upper_file"]["location"]
            .as_str()
            .is_some_and(|l| l.contains(published.to_str().unwrap()));
        if names {
            break log;
        }
        assert!(Instant::now() < deadline, "never published: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let upper = log.outputs["upper_file"]["location"].as_str().unwrap();
    let path = upper.strip_prefix("file://").unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "HELLO TRESOR\n");
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o640));
    }
    // A later task of the workspace reads them through file://.
    let mut read = sh_task("cat /in/upper.txt");
    read.inputs = Some(vec![tresor_api_types::tes::TesInput {
        url: Some(upper.to_owned()),
        path: "/in/upper.txt".to_owned(),
        ..Default::default()
    }]);
    let done = server.run(&read).await;
    assert_complete(&done);
    assert_eq!(stdout(&done, 0), "HELLO TRESOR\n");
    // Each step is a task of the run, in the image its DockerRequirement names.
    let tasks = wes.run_tasks(&id).await.unwrap().task_logs;
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    let mut images = Vec::new();
    for task in &tasks {
        let tes = server
            .client
            .get_task(&task.id, TesView::Basic)
            .await
            .unwrap();
        images.push(tes.executors[0].image.clone());
    }
    images.sort();
    assert_eq!(
        images,
        [
            "docker.io/library/busybox:1",
            "docker.io/library/debian:12",
            "docker.io/library/debian:12"
        ]
    );
    eprintln!("cwltool, 2 steps: {took:?}");
}

#[tokio::test]
async fn a_failed_job_fails_its_run_with_the_jobs_own_words() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let snakefile = "rule all:\n    shell: \"echo the-job-says-no >&2; exit 3\"\n";
    let id = wes
        .run_workflow(
            &request("SMK", "9", "Snakefile", serde_json::json!({})),
            &[attach("Snakefile", snakefile)],
        )
        .await
        .unwrap();
    assert_eq!(wait_run(&wes, &id).await, TesState::ExecutorError);
    let output = engine_output(&server, &wes, &id).await;
    assert!(output.contains("the-job-says-no"), "{output}");
    assert!(!output.contains("Traceback"), "{output}");
}

#[tokio::test]
async fn canceling_a_run_ends_its_engine_and_every_job() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let marker = format!("sleep 3{}", std::process::id() % 1000);
    let snakefile = format!(
        "rule all:\n    input: \"a.done\", \"b.done\"\nrule one:\n    output: \"{{x}}.done\"\n    shell: \"{marker}; touch {{output}}\"\n"
    );
    let id = wes
        .run_workflow(
            &request("SMK", "9", "Snakefile", serde_json::json!({})),
            &[attach("Snakefile", &snakefile)],
        )
        .await
        .unwrap();
    // Both jobs running.
    wait_tasks(&wes, &id, 60, |tasks| running(tasks) == 3).await;
    let canceled = Instant::now();
    wes.cancel(&id).await.unwrap();
    assert_eq!(wes.status(&id).await.unwrap().state, TesState::Canceled);
    let took = canceled.elapsed();
    for task in wes.run_tasks(&id).await.unwrap().task_logs {
        assert_eq!(task.state, Some(TesState::Canceled), "{task:?}");
    }
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    eprintln!("cancel → CANCELED with every job ended: {took:?}");
}

#[tokio::test]
async fn another_workspace_sees_no_run_of_this_one() {
    let server = wes_server().await;
    let owner = server.user("run-owner").await;
    owner.platform.create_workspace("lab-a").await.unwrap();
    let wes = WesClient::for_workspace(&server.url, "lab-a", &owner.token).unwrap();
    let id = wes
        .run_workflow(&cwl_request(), &cwl_files())
        .await
        .unwrap();
    let stranger = server.user("run-stranger").await;
    stranger.platform.create_workspace("lab-b").await.unwrap();
    for their in [
        WesClient::for_workspace(&server.url, "lab-b", &stranger.token).unwrap(),
        WesClient::with_token(&server.url, &stranger.token).unwrap(),
    ] {
        assert_eq!(their.status(&id).await.unwrap_err().status().unwrap(), 404);
        assert_eq!(their.run_log(&id).await.unwrap_err().status().unwrap(), 404);
        assert_eq!(
            their.run_tasks(&id).await.unwrap_err().status().unwrap(),
            404
        );
        assert_eq!(their.cancel(&id).await.unwrap_err().status().unwrap(), 404);
        assert!(their.list_runs(None, None).await.unwrap().runs.is_empty());
    }
    // Nor through lab-a's own URL: not a member.
    let theirs = WesClient::for_workspace(&server.url, "lab-a", &stranger.token).unwrap();
    assert_eq!(theirs.status(&id).await.unwrap_err().status().unwrap(), 404);
    assert_eq!(wait_run(&wes, &id).await, TesState::Complete);
    // A view member sees the run but may not start one.
    let viewer = server.user("run-viewer").await;
    owner
        .platform
        .set_member("lab-a", &viewer.id, "view")
        .await
        .unwrap();
    let as_viewer = WesClient::for_workspace(&server.url, "lab-a", &viewer.token).unwrap();
    assert_eq!(as_viewer.list_runs(None, None).await.unwrap().runs.len(), 1);
    let refused = as_viewer
        .run_workflow(&cwl_request(), &cwl_files())
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 403, "{refused}");
}

#[tokio::test]
async fn bad_run_requests_are_refused_naming_what_to_fix() {
    let server = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        s.services.workflows.max_attachment_bytes = 64 * 1024;
    })
    .await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let refused = |r: Result<String, tresor_client::ClientError>| {
        let e = r.unwrap_err();
        (e.status().unwrap().as_u16(), e.to_string())
    };
    let cases: Vec<(RunRequest, Vec<WesAttachment>, u16, &str)> = vec![
        (
            request("NFL", "24", "main.nf", serde_json::json!({})),
            vec![attach("main.nf", "x")],
            400,
            "workflow_type",
        ),
        (
            request("CWL", "v9.9", "wf.cwl", serde_json::json!({})),
            cwl_files(),
            400,
            "workflow_type_version",
        ),
        (
            cwl_request(),
            vec![attach("other.cwl", "x")],
            400,
            "workflow_url",
        ),
        (
            cwl_request(),
            vec![attach("wf.cwl", "x"), attach("../escape.txt", "x")],
            400,
            "..",
        ),
        (
            cwl_request(),
            vec![attach("wf.cwl", "x"), attach("/etc/passwd", "x")],
            400,
            "relative",
        ),
        (
            cwl_request(),
            vec![attach("wf.cwl", "x"), attach(".tresor-params.json", "x")],
            400,
            ".tresor",
        ),
        (
            request(
                "CWL",
                "v1.2",
                "https://example.org/wf.cwl",
                serde_json::json!({}),
            ),
            cwl_files(),
            400,
            "attach",
        ),
        (
            cwl_request(),
            vec![attach("wf.cwl", &"x".repeat(70 * 1024))],
            413,
            "max_attachment_mb",
        ),
        (
            RunRequest {
                workflow_engine_parameters: BTreeMap::from([(
                    "--allow-everything".to_owned(),
                    "1".to_owned(),
                )]),
                ..request("SMK", "9", "Snakefile", serde_json::json!({}))
            },
            vec![attach("Snakefile", "rule all:\n    shell: \"true\"\n")],
            400,
            "workflow_engine_parameters",
        ),
    ];
    for (run, files, status, names) in cases {
        let (got, message) = refused(wes.run_workflow(&run, &files).await);
        assert_eq!(got, status, "{message}");
        assert!(message.contains(names), "{names}: {message}");
    }
    // Malformed bodies: not multipart, invalid JSON in a field, a missing field.
    let http = reqwest::Client::new();
    let url = format!("{}/ga4gh/wes/v1/runs", server.url);
    let answer = http
        .post(&url)
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({"workflow_url": "wf.cwl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("multipart/form-data"));
    let form = WesClient::form(&cwl_request(), &cwl_files()).text("workflow_params", "{not json");
    let raw = wes.post_runs_raw(form).await.unwrap();
    assert_eq!(raw.status, 400, "{}", raw.body);
    assert!(raw.body.contains("workflow_params"), "{}", raw.body);
    let form = reqwest::multipart::Form::new().text("workflow_type", "CWL");
    let raw = wes.post_runs_raw(form).await.unwrap();
    assert_eq!(raw.status, 400, "{}", raw.body);
    assert!(raw.body.contains("is required"), "{}", raw.body);
    let answer = http
        .post(&url)
        .bearer_auth(&server.admin_token)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"workflow_type\"\r\n\r\nCWL\r\n--XY")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    // More parts than a run may attach: refused while reading, not after.
    let mut form = WesClient::form(&cwl_request(), &[]);
    for i in 0..300 {
        form = form.part(
            "workflow_attachment",
            reqwest::multipart::Part::bytes(Vec::new()).file_name(format!("f{i}")),
        );
    }
    let raw = wes.post_runs_raw(form).await.unwrap();
    assert_eq!(raw.status, 413, "{}", raw.body);
    assert!(raw.body.contains("max_attachments"), "{}", raw.body);
    // Unknown runs: 404, whatever the id looks like.
    for id in [
        "nope",
        "01a22c5f-0000-7000-8000-000000000000",
        "..%2F..%2Fetc",
    ] {
        assert_eq!(
            wes.status(id).await.unwrap_err().status().unwrap(),
            404,
            "{id}"
        );
    }
    assert!(wes.list_runs(None, None).await.unwrap().runs.is_empty());
}

#[tokio::test]
async fn service_info_describes_the_engines_and_counts_the_workspaces_runs() {
    let server = wes_server().await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let info = wes.service_info().await.unwrap();
    assert_eq!(info.supported_wes_versions, ["1.1.0"]);
    assert_eq!(
        info.workflow_type_versions["CWL"].workflow_type_version,
        ["v1.0", "v1.1", "v1.2"]
    );
    assert_eq!(
        info.workflow_engine_versions["snakemake"].workflow_engine_version,
        ["9.27.1"]
    );
    assert!(
        info.default_workflow_engine_parameters
            .iter()
            .any(|p| p.name == "snakemake:jobs" && p.default_value == "4")
    );
    let id = wes
        .run_workflow(&cwl_request(), &cwl_files())
        .await
        .unwrap();
    wait_run(&wes, &id).await;
    let counts = wes.service_info().await.unwrap().system_state_counts;
    assert_eq!(counts.get("COMPLETE"), Some(&1), "{counts:?}");
    // Paging: two more runs, listed newest first, one per page.
    let second = wes
        .run_workflow(&cwl_request(), &cwl_files())
        .await
        .unwrap();
    let first_page = wes.list_runs(Some(1), None).await.unwrap();
    assert_eq!(first_page.runs[0].run_id, second);
    let token = first_page.next_page_token.unwrap();
    let next = wes.list_runs(Some(1), Some(&token)).await.unwrap();
    assert_eq!(next.runs[0].run_id, id);
    assert!(next.next_page_token.is_none());
    // py-tes before 1.0 asks for TES service-info under /tasks.
    let old = reqwest::get(format!("{}/ga4gh/tes/v1/tasks/service-info", server.url))
        .await
        .unwrap();
    assert_eq!(old.status(), 200);
    assert!(old.text().await.unwrap().contains("\"storage\""));
    wait_run(&wes, &second).await;
}

/// An engine that runs the attached Python script (`workflow_type` PY), with tresor's
/// adapters importable: for probing what an engine may and may not do.
fn with_python_engine(settings: &mut tresor_service::WorkflowSettings) {
    let venv = engines_venv();
    settings.engines.push(tresor_service::EngineSettings {
        name: "python".to_owned(),
        workflow_type: "PY".to_owned(),
        type_versions: vec!["3".to_owned()],
        version: "3".to_owned(),
        command: vec![format!("{venv}/bin/python"), "{workflow}".to_owned()],
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        image: "docker.io/library/debian:12".to_owned(),
        job_image: "docker.io/library/debian:12".to_owned(),
        parameters: BTreeMap::new(),
        cpu_cores: 1,
    });
}

/// Probes the engine's socket; writes what it saw into `probe.json` in the run's directory.
const PROBE_ENGINE: &str = r#"
import http.client, json, os, socket, sys, time
from tresor_tes import TesClient, TesError

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.environ["TRESOR_IDENTITY_SOCKET"])

def raw(method, path, marked=True):
    c = Conn("tresor")
    c.request(method, path, headers={"Tresor-Metadata": "true"} if marked else {})
    return c.getresponse().status

tes = TesClient()
params = json.load(open(os.path.join(os.environ["TRESOR_RUN_DIR"], ".tresor-params.json")))
seen = {}
# Another task of the same workspace, not of this run.
try:
    tes.get_task(params["outsider"])
    seen["outsider"] = "visible"
except TesError as e:
    seen["outsider"] = str(e)
seen["unmarked"] = raw("GET", "/ga4gh/tes/v1/tasks", marked=False)
seen["walk"] = raw("GET", "/ga4gh/tes/v1/tasks/..%2F..%2Fsecrets")
seen["walk2"] = raw("GET", "/ga4gh/tes/v1/tasks/x/../../secrets")
# A job that gets a secret by name and leaves only its digest.
run_dir = os.environ["TRESOR_RUN_DIR"]
job = tes.create_task({
    "name": "secret-job",
    "executors": [{"image": "docker.io/library/debian:12",
                   "command": ["/bin/sh", "-c",
                               "printf %s \"$DB_PASS\" | sha256sum > secret.sha; "
                               "python3 -c 'import os,socket; s=socket.socket(socket.AF_UNIX); "
                               "s.connect(os.environ[\"TRESOR_IDENTITY_SOCKET\"]); "
                               "s.sendall(b\"GET /ga4gh/tes/v1/tasks HTTP/1.0\\r\\nTresor-Metadata: true\\r\\n\\r\\n\"); "
                               "print(s.recv(100).split()[1].decode())' > job-socket.txt"],
                   "workdir": run_dir,
                   "env": {"PATH": "/usr/bin:/bin"}}],
    "tags": {"tresor.secrets.env": "DB_PASS"},
})
while True:
    state = tes.get_task(job)["state"]
    if state not in ("QUEUED", "INITIALIZING", "RUNNING"):
        break
    time.sleep(0.1)
seen["job"] = state
json.dump(seen, open(os.path.join(run_dir, "probe.json"), "w"))
"#;

#[tokio::test]
async fn an_engine_manages_only_its_runs_jobs_which_get_their_declared_secrets() {
    let server = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        with_python_engine(&mut s.services.workflows);
    })
    .await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let value = "db-pass-7f3a9c2e51";
    server
        .admin
        .put_secret(
            &server.admin.me().await.unwrap().personal_workspace,
            true,
            "DB_PASS",
            value.as_bytes(),
            None,
        )
        .await
        .unwrap();
    let outsider = server.client.create_task(&sh_task("true")).await.unwrap();
    let id = wes
        .run_workflow(
            &request(
                "PY",
                "3",
                "probe.py",
                serde_json::json!({ "outsider": outsider }),
            ),
            &[attach("probe.py", PROBE_ENGINE)],
        )
        .await
        .unwrap();
    let state = wait_run(&wes, &id).await;
    assert_eq!(
        state,
        TesState::Complete,
        "{}",
        engine_output(&server, &wes, &id).await
    );
    let run_dir = run_dir(&server.storage, &id);
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("probe.json")).unwrap()).unwrap();
    // Another task of the workspace does not exist for the engine.
    assert!(seen["outsider"].as_str().unwrap().contains("404"), "{seen}");
    assert_eq!(seen["unmarked"], 400, "{seen}");
    assert_eq!(seen["walk"], 404, "{seen}");
    assert_eq!(seen["walk2"], 404, "{seen}");
    assert_eq!(seen["job"], "COMPLETE", "{seen}");
    // The job had the secret's value; nothing of the run holds it.
    let digest = command_output("sh", &["-c", &format!("printf %s {value} | sha256sum")]);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("secret.sha")).unwrap(),
        digest
    );
    // A job's socket has no TES: only engines manage jobs.
    assert_eq!(
        std::fs::read_to_string(run_dir.join("job-socket.txt"))
            .unwrap()
            .trim(),
        "404"
    );
    assert!(files_containing(&run_dir, value.as_bytes()).is_empty());
    for task in wes.run_tasks(&id).await.unwrap().task_logs {
        let full = server
            .client
            .get_task(&task.id, TesView::Full)
            .await
            .unwrap();
        assert!(!serde_json::to_string(&full).unwrap().contains(value));
    }
    assert!(
        !serde_json::to_string(&wes.run_log(&id).await.unwrap())
            .unwrap()
            .contains(value)
    );
}

#[tokio::test]
async fn jobs_left_by_an_engine_that_died_end_with_its_run() {
    let server = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        with_python_engine(&mut s.services.workflows);
    })
    .await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let marker = format!("sleep 4{}", std::process::id() % 1000);
    // The engine starts a long job and dies at once, without canceling it.
    let engine = format!(
        "import os\nfrom tresor_tes import TesClient\nTesClient().create_task({{\"executors\": [{{\"image\": \"x\", \"command\": [\"/bin/sh\", \"-c\", \"{marker}\"]}}]}})\nos._exit(9)\n"
    );
    let id = wes
        .run_workflow(
            &request("PY", "3", "die.py", serde_json::json!({})),
            &[attach("die.py", &engine)],
        )
        .await
        .unwrap();
    assert_eq!(wait_run(&wes, &id).await, TesState::ExecutorError);
    wait_tasks(&wes, &id, 20, |tasks| {
        tasks.len() == 2
            && tasks.iter().all(|t| {
                t.state != Some(TesState::Running)
                    && t.state != Some(TesState::Queued)
                    && t.state != Some(TesState::Initializing)
            })
    })
    .await;
    assert!(processes_with(&marker).is_empty());
}

#[tokio::test]
async fn credentials_pasted_into_a_task_or_a_run_are_refused_with_the_way_to_a_secret() {
    let server = wes_server().await;
    // The stock Snakemake TES plugin's way: S3 keys exported in an input's content.
    let mut task = sh_task("sh /tmp/job.sh");
    task.inputs = Some(vec![tresor_api_types::tes::TesInput {
        path: "/tmp/job.sh".to_owned(),
        content: Some(
            "export SNAKEMAKE_STORAGE_S3_SECRET_KEY='wJalrXUtnFEMIK7MDENGbPxRfiCY' && snakemake"
                .to_owned(),
        ),
        ..Default::default()
    }]);
    let refused = server.client.create_task(&task).await.unwrap_err();
    assert_eq!(refused.status().unwrap(), 400, "{refused}");
    let message = refused.to_string();
    assert!(message.contains("inputs[0].content"), "{message}");
    assert!(message.contains("tresor.secrets.env"), "{message}");
    assert!(
        !message.contains("wJalr"),
        "the refusal repeats the value: {message}"
    );
    let mut task = sh_task("true");
    task.executors[0].env = Some(
        [(
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            "wJalrXUtnFEMIK7MDENG".to_owned(),
        )]
        .into(),
    );
    let refused = server.client.create_task(&task).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("executors[0].env.AWS_SECRET_ACCESS_KEY"),
        "{refused}"
    );
    // A run's parameters and files.
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let refused = wes
        .run_workflow(
            &request(
                "SMK",
                "9",
                "Snakefile",
                serde_json::json!({ "db": { "password": "hunter2hunter2" } }),
            ),
            &[attach("Snakefile", "rule all:\n    shell: \"true\"\n")],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 400, "{refused}");
    assert!(refused.to_string().contains("workflow_params"), "{refused}");
    let refused = wes
        .run_workflow(
            &request("SMK", "9", "Snakefile", serde_json::json!({})),
            &[attach(
                "Snakefile",
                "rule all:\n    shell: \"curl -H 'Authorization: Bearer abcdefgh12345678' x\"\n",
            )],
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("Snakefile"), "{refused}");
}

#[tokio::test]
async fn launch_members_run_only_registered_workflows_that_an_admin_approved() {
    let server = wes_server().await;
    let owner = server.user("wf-owner").await;
    owner.platform.create_workspace("validated").await.unwrap();
    let member = |name: &'static str, role: &'static str| {
        let server = &server;
        let owner = &owner;
        async move {
            let user = server.user(name).await;
            owner
                .platform
                .set_member("validated", &user.id, role)
                .await
                .unwrap();
            user
        }
    };
    let launcher = member("wf-launcher", "launch").await;
    let maintainer = member("wf-maintainer", "maintain").await;
    let wes_of = |token: &str| WesClient::for_workspace(&server.url, "validated", token).unwrap();
    let workflow: Vec<WesAttachment> = cwl_files()
        .into_iter()
        .filter(|f| !f.name.starts_with("data/"))
        .collect();
    // A registered workflow's run attaches only inputs, under inputs/.
    let data = attach("inputs/in.txt", "validated input\n");
    let with_data = |files: &[WesAttachment]| {
        let mut files = files.to_vec();
        files.push(data.clone());
        files
    };

    // Not registered: a launch member is refused, saying how to get it registered.
    let refused = wes_of(&launcher.token)
        .run_workflow(&cwl_request(), &with_data(&workflow))
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 403, "{refused}");
    assert!(refused.to_string().contains("registered"), "{refused}");

    // A maintainer proposes it; until an admin approves, it cannot be run by name.
    let proposed = maintainer
        .platform
        .register_workflow("validated", "upper-md5", "1", &cwl_request(), &workflow)
        .await
        .unwrap();
    assert_eq!(proposed.state, "proposed");
    assert!(proposed.digest.starts_with("sha256:"));
    let by_name = RunRequest {
        workflow_url: "registered:upper-md5@1".to_owned(),
        workflow_params:
            serde_json::json!({ "input_file": { "class": "File", "path": "inputs/in.txt" } })
                .as_object()
                .cloned(),
        ..cwl_request()
    };
    let refused = wes_of(&launcher.token)
        .run_workflow(&by_name, std::slice::from_ref(&data))
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 400, "{refused}");
    let refused = maintainer
        .platform
        .approve_workflow("validated", "upper-md5", "1")
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 403, "{refused}");
    let approved = owner
        .platform
        .approve_workflow("validated", "upper-md5", "1")
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");
    assert_eq!(approved.approved_by.as_deref(), Some(owner.id.as_str()));

    // Now a launch member runs it by name with their own inputs, and the run records its digest.
    let launcher_wes = wes_of(&launcher.token);
    let id = launcher_wes
        .run_workflow(&by_name, std::slice::from_ref(&data))
        .await
        .unwrap();
    assert_eq!(wait_run(&launcher_wes, &id).await, TesState::Complete);
    let log = launcher_wes.run_log(&id).await.unwrap();
    let ran = log.run_log.system_logs.unwrap_or_default().join("\n");
    assert!(
        ran.contains(&approved.digest),
        "{ran} does not name {}",
        approved.digest
    );
    // Its files cannot be replaced, nor anything put beside them (a module, a profile).
    for other in [
        "tools/md5.cwl",
        "snakemake/__main__.py",
        "profiles/default/config.yaml",
    ] {
        let refused = launcher_wes
            .run_workflow(&by_name, &[data.clone(), attach(other, "x")])
            .await
            .unwrap_err();
        assert_eq!(refused.status().unwrap(), 400, "{refused}");
        assert!(refused.to_string().contains("inputs/"), "{refused}");
    }
    // Attaching exactly the approved files is running the approved workflow too.
    let same = launcher_wes
        .run_workflow(
            &RunRequest {
                workflow_params: None,
                ..cwl_request()
            },
            &workflow,
        )
        .await;
    assert!(same.is_ok(), "{same:?}");

    // The same files as another workflow type are not the approved workflow.
    let refused = launcher_wes
        .run_workflow(
            &RunRequest {
                workflow_type_version: "v1.1".to_owned(),
                workflow_params: None,
                ..cwl_request()
            },
            &workflow,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 403, "{refused}");
    // A changed workflow is a new version; the old one stays as it was.
    let mut changed = workflow.clone();
    changed[0].content.extend_from_slice(b"\n# changed\n");
    let conflict = maintainer
        .platform
        .register_workflow("validated", "upper-md5", "1", &cwl_request(), &changed)
        .await
        .unwrap_err();
    assert_eq!(conflict.status().unwrap(), 409, "{conflict}");

    // A maintainer may run unregistered workflows, until the workspace requires registered ones.
    let maintainer_wes = wes_of(&maintainer.token);
    assert!(
        maintainer_wes
            .run_workflow(&cwl_request(), &with_data(&changed))
            .await
            .is_ok()
    );
    owner
        .platform
        .set_workflow_policy("validated", true)
        .await
        .unwrap();
    let refused = maintainer_wes
        .run_workflow(&cwl_request(), &with_data(&changed))
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 403, "{refused}");
    assert!(refused.to_string().contains("only registered"), "{refused}");
    // Another workspace's members do not see the registry.
    let stranger = server.user("wf-stranger").await;
    assert_eq!(
        stranger
            .platform
            .list_workflows("validated")
            .await
            .unwrap_err()
            .status()
            .unwrap(),
        404
    );
    // No member reaches another member's run directory through file:// storage: it is not in
    // the workspace's directory, so neither a task's input nor its output may name it.
    let victim_dir = run_dir(&server.storage_of("validated"), &id);
    assert!(victim_dir.join("tools/md5.cwl").exists());
    let mut overwrite = sh_task("echo 'import os' > /out/x");
    overwrite.outputs = Some(vec![tresor_api_types::tes::TesOutput {
        url: format!("file://{}/tools/md5.cwl", victim_dir.display()),
        path: "/out/x".to_owned(),
        ..Default::default()
    }]);
    let refused = maintainer
        .tes_in("validated")
        .create_task(&overwrite)
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 400, "{refused}");
    let mut read = sh_task("cat /in/x");
    read.inputs = Some(vec![tresor_api_types::tes::TesInput {
        url: Some(format!(
            "file://{}/.tresor-params.json",
            victim_dir.display()
        )),
        path: "/in/x".to_owned(),
        ..Default::default()
    }]);
    let refused = maintainer
        .tes_in("validated")
        .create_task(&read)
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap(), 400, "{refused}");
    let listed = launcher.platform.list_workflows("validated").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].files.len(), 3, "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snakemake_run_on_slurm_runs_its_engine_and_jobs_as_batch_jobs() {
    let server = TestServer::start_with(|s| {
        let dir = s
            .services
            .store
            .path
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        s.services.slurm = vec![slurm_settings(&dir)];
        s.services.workflows = test_engines();
    })
    .await;
    server.admin.create_workspace("hpc-runs").await.unwrap();
    server
        .admin
        .set_compute_env("hpc-runs", "hpc")
        .await
        .unwrap();
    let wes = WesClient::for_workspace(&server.url, "hpc-runs", &server.admin_token).unwrap();
    let started = Instant::now();
    let id = wes
        .run_workflow(&snakemake_request(), &snakemake_files())
        .await
        .unwrap();
    let state = wait_run(&wes, &id).await;
    let run_dir = run_dir(&server.storage_of("hpc-runs"), &id);
    assert_eq!(
        state,
        TesState::Complete,
        "{}",
        command_output("ls", &["-lanR", run_dir.to_str().unwrap()])
    );
    let took = started.elapsed();
    assert_eq!(
        std::fs::read_to_string(run_dir.join("results/combined.txt")).unwrap(),
        "ALPHA\nBETA\n"
    );
    // Every task of the run was a batch job.
    let tes = tresor_client::TesClient::for_workspace(&server.url, "hpc-runs", &server.admin_token)
        .unwrap();
    let tasks = wes.run_tasks(&id).await.unwrap().task_logs;
    assert_eq!(tasks.len(), 4);
    for task in tasks {
        let full = tes.get_task(&task.id, TesView::Full).await.unwrap();
        let metadata = full.logs.as_ref().unwrap()[0]
            .metadata
            .clone()
            .unwrap_or_default();
        assert!(metadata.keys().any(|k| k.contains("slurm")), "{metadata:?}");
    }
    eprintln!("snakemake on SLURM, 3 jobs: {took:?}");
}

/// The test engines as a `tresor serve` configuration file.
fn engines_toml() -> String {
    let mut out = String::new();
    for engine in test_engines().engines {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "[workflows.engines.{}]\nworkflow_type = {:?}\nworkflow_type_versions = [{}]\nversion = {:?}\ncommand = [{}]\nimage = {:?}\n",
            engine.name,
            engine.workflow_type,
            list(&engine.type_versions),
            engine.version,
            list(&engine.command),
            engine.image,
        ));
        out.push_str(&format!("[workflows.engines.{}.env]\n", engine.name));
        for (k, v) in &engine.env {
            out.push_str(&format!("{k} = {v:?}\n"));
        }
        out.push_str(&format!("[workflows.engines.{}.parameters]\n", engine.name));
        for (k, v) in &engine.parameters {
            out.push_str(&format!("{k} = {v:?}\n"));
        }
    }
    out
}

#[tokio::test]
async fn a_kill_9_of_the_server_during_a_run_loses_nothing_and_runs_nothing_twice() {
    use crate::crash::{free_listen_address, personal_storage, spawn_server_at};
    let dir = traversable_tempdir();
    let config = dir.path().join("tresor.toml");
    std::fs::write(&config, engines_toml()).unwrap();
    let listen = free_listen_address();
    let mut first = spawn_server_at(dir.path(), Some(&config), &listen);
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-admin-token")).unwrap();
    let wes = WesClient::with_token(&first.client_url(), token.trim()).unwrap();
    // Each job notes that it ran; the slow ones are running when the server dies.
    let snakefile = r#"
rule all:
    input: "c.txt"
rule slow:
    output: "{x}.txt"
    wildcard_constraints: x="[ab]"
    shell: "echo {wildcards.x} >> ran.log; sleep 3; echo {wildcards.x} > {output}"
rule combine:
    input: "a.txt", "b.txt"
    output: "c.txt"
    shell: "echo c >> ran.log; cat {input} > {output}"
"#;
    let id = wes
        .run_workflow(
            &request("SMK", "9", "Snakefile", serde_json::json!({})),
            &[attach("Snakefile", snakefile)],
        )
        .await
        .unwrap();
    // The engine and a job (the server has two slots: the other job waits its turn).
    wait_tasks(&wes, &id, 60, |tasks| running(tasks) >= 2).await;
    first.kill_9();
    let second = spawn_server_at(dir.path(), Some(&config), &listen);
    let wes = WesClient::with_token(&second.client_url(), token.trim()).unwrap();
    let state = wait_run(&wes, &id).await;
    let run_dir = run_dir(&personal_storage(&second, dir.path()), &id);
    assert_eq!(
        state,
        TesState::Complete,
        "{}",
        std::fs::read_to_string(dir.path().join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut ran: Vec<String> = std::fs::read_to_string(run_dir.join("ran.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(ran, ["a", "b", "c"], "every job ran exactly once");
    assert_eq!(wes.run_tasks(&id).await.unwrap().task_logs.len(), 4);
    assert_eq!(
        std::fs::read_to_string(run_dir.join("c.txt")).unwrap(),
        "a\nb\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_wes_client_runs_a_cwl_workflow() {
    let server = wes_server().await;
    let dir = tempfile::tempdir().unwrap();
    for file in cwl_files() {
        let path = dir.path().join(&file.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &file.content).unwrap();
    }
    std::fs::write(
        dir.path().join("job.json"),
        r#"{"input_file": {"class": "File", "path": "data/in.txt"}}"#,
    )
    .unwrap();
    let wes_client = std::path::Path::new(&std::env::var("TRESOR_TEST_PYTHON").unwrap())
        .with_file_name("wes-client");
    let host = server.url.trim_start_matches("http://").to_owned();
    // wes-client 5.0 sends its --auth header with every call but RunWorkflow (the line is
    // commented out in its code); requests then falls back to ~/.netrc, which carries the token
    // as a Basic password for every call.
    let netrc = dir.path().join("netrc");
    std::fs::write(
        &netrc,
        format!(
            "machine 127.0.0.1 login me password {}\n",
            server.admin_token
        ),
    )
    .unwrap();
    let cwd = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wes_client)
            .current_dir(cwd)
            .env("NETRC", netrc)
            .args([
                &format!("--host={host}"),
                "--proto=http",
                "--attachments=tools/upper.cwl,tools/md5.cwl,data/in.txt",
                "--wait",
                "wf.cwl",
                "job.json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let outputs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let md5 = outputs["md5_file"]["location"].as_str().unwrap();
    let text = std::fs::read_to_string(md5.trim_start_matches("file://")).unwrap();
    assert!(text.contains("upper.txt"), "{text}");
}

#[tokio::test]
async fn runs_at_once_never_starve_their_jobs_of_capacity() {
    // One core: if engines held capacity, the second run's engine would wait for the first's,
    // and the first's job for a free core, forever.
    let server = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        s.services.local.slots = 1;
    })
    .await;
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            wes.run_workflow(&cwl_request(), &cwl_files())
                .await
                .unwrap(),
        );
    }
    for id in ids {
        assert_eq!(wait_run(&wes, &id).await, TesState::Complete);
    }
}

/// A one-file CWL tool, as a workflow registry would serve it.
const BY_URL_TOOL: &str = "cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: [echo, VERSION]\nstdout: said.txt\ninputs: []\noutputs: {said: {type: stdout}}\n";

/// Serves `tool.cwl` (saying what `version` holds, counting its fetches in `fetches`) and a
/// large file.
async fn workflow_registry(
    version: std::sync::Arc<std::sync::Mutex<&'static str>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/wf/tool.cwl",
            get(move || {
                let version = version.clone();
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { BY_URL_TOOL.replace("VERSION", &version.lock().unwrap()) }
            }),
        )
        .route("/wf/huge.cwl", get(|| async { "#".repeat(64 << 10) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn admins_register_a_workflow_by_url_pinned_to_what_was_fetched() {
    let server = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        // The test's registry is on loopback; the default refuses that (below).
        s.services.workflows.allow_private_urls = true;
    })
    .await;
    let version = std::sync::Arc::new(std::sync::Mutex::new("first"));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let registry = workflow_registry(version.clone(), fetches.clone()).await;
    let ws = server.admin.me().await.unwrap().personal_workspace;
    let by_url = |url: &str| request("CWL", "v1.2", url, serde_json::json!({}));

    // Whoever may not propose workflows cannot make the server fetch anything either.
    let launcher = server.user("by-url-launcher").await;
    server
        .admin
        .set_member(&ws, &launcher.id, "launch")
        .await
        .unwrap();
    let refused = launcher
        .platform
        .register_workflow(
            &ws,
            "said",
            "0",
            &by_url(&format!("{registry}/wf/tool.cwl")),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403), "{refused}");
    let outsider = server.user("by-url-outsider").await;
    let refused = outsider
        .platform
        .register_workflow(
            &ws,
            "said",
            "0",
            &by_url(&format!("{registry}/wf/tool.cwl")),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(404), "{refused}");
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 0);

    let first = server
        .admin
        .register_workflow(
            &ws,
            "said",
            "1",
            &by_url(&format!("{registry}/wf/tool.cwl")),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (first.state.as_str(), first.workflow_url.as_str()),
        ("approved", "tool.cwl")
    );
    assert_eq!(first.files, ["tool.cwl"]);
    // What the registry serves changes: the same URL is another digest, so another version.
    *version.lock().unwrap() = "second";
    let second = server
        .admin
        .register_workflow(
            &ws,
            "said",
            "2",
            &by_url(&format!("{registry}/wf/tool.cwl")),
            &[],
        )
        .await
        .unwrap();
    assert_ne!(first.digest, second.digest);

    // Version 1 runs what was fetched then, not what the URL serves now.
    let wes = WesClient::with_token(&server.url, &server.admin_token).unwrap();
    let id = wes
        .run_workflow(&by_url("registered:said@1"), &[])
        .await
        .unwrap();
    assert_eq!(
        wait_run(&wes, &id).await,
        TesState::Complete,
        "{}",
        engine_output(&server, &wes, &id).await
    );
    let log = wes.run_log(&id).await.unwrap();
    assert!(
        log.run_log
            .system_logs
            .iter()
            .flatten()
            .any(|l| l.contains(&first.digest)),
        "{log:?}"
    );
    let said = log.outputs["said"]["location"].as_str().unwrap();
    let said = std::fs::read_to_string(said.strip_prefix("file://").unwrap()).unwrap();
    assert_eq!(said, "first\n");

    // Bad URLs are a 400 naming the problem, and the URL is not echoed.
    let limits = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        s.services.workflows.max_attachment_bytes = 32 << 10;
    })
    .await;
    let ws = limits.admin.me().await.unwrap().personal_workspace;
    let port = registry.rsplit(':').next().unwrap();
    for (url, says) in [
        // The default: the server does not fetch from its own or its networks' services.
        (
            format!("{registry}/wf/tool.cwl"),
            "loopback, private or link-local",
        ),
        (
            format!("http://localhost:{port}/wf/tool.cwl"),
            "loopback, private or link-local",
        ),
        (
            "http://169.254.169.254/latest/meta-data/wf.cwl".to_owned(),
            "loopback, private or link-local",
        ),
        (
            "https://user:pw@example.org/wf.cwl".to_owned(),
            "user name or password",
        ),
        (
            "https://example.org/".to_owned(),
            "must end in the workflow file's name",
        ),
    ] {
        let err = limits
            .admin
            .register_workflow(&ws, "bad", "1", &by_url(&url), &[])
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{url}: {err}");
        assert!(err.to_string().contains(says), "{url}: {err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
    drop(limits);
    let limits = TestServer::start_with(|s| {
        s.services.workflows = test_engines();
        s.services.workflows.allow_private_urls = true;
        s.services.workflows.max_attachment_bytes = 32 << 10;
    })
    .await;
    let ws = limits.admin.me().await.unwrap().personal_workspace;
    let err = limits
        .admin
        .register_workflow(
            &ws,
            "big",
            "1",
            &by_url(&format!("{registry}/wf/huge.cwl")),
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(limits.admin.list_workflows(&ws).await.unwrap().is_empty());
}

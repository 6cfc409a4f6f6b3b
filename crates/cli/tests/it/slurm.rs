//! The SLURM executor against a real single-node cluster (Debian's slurm-wlm and munge, started
//! by scripts/lib/slurm-up.sh): each task is one batch job whose script and environment carry
//! nothing but the task id, the server URL and a one-time bootstrap token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use tresor_api_types::tes::{
    TesFileType, TesInput, TesOutput, TesResources, TesState, TesTask, TesView,
};
use tresor_client::TesClient;

use crate::support::*;

const CANARY: &[u8] = b"canary-7f3a9c-only-in-the-sandbox";

/// The test dir of a server's settings (`settings_for` puts the database in `<dir>/data`).
pub(crate) fn dir_of(settings: &tresor_server::AppSettings) -> PathBuf {
    settings
        .services
        .store
        .path
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

async fn slurm_server(s3: Option<&S3Server>) -> TestServer {
    TestServer::start_with(|s| {
        add_cluster(s);
        s.services.s3 = s3.map(|s3| std::sync::Arc::new(s3.settings()));
    })
    .await
}

/// Gives a test server's settings the `hpc` SLURM compute environment.
pub(crate) fn add_cluster(s: &mut tresor_server::AppSettings) {
    s.services.slurm = vec![slurm_settings(&dir_of(s))];
}

/// A workspace whose tasks run on the cluster, and TES in it as the admin.
pub(crate) async fn cluster_workspace(server: &TestServer, name: &str) -> TesClient {
    server.admin.create_workspace(name).await.unwrap();
    server.admin.set_compute_env(name, "hpc").await.unwrap();
    TesClient::for_workspace(&server.url, name, &server.admin_token).unwrap()
}

fn work_dir(server: &TestServer) -> PathBuf {
    server.dir.path().join("slurm-work")
}

fn job_id(task: &TesTask) -> String {
    task.logs.as_ref().unwrap()[0]
        .metadata
        .as_ref()
        .and_then(|m| m.get("slurm_job_id"))
        .unwrap_or_else(|| panic!("no slurm_job_id in {task:#?}"))
        .clone()
}

fn job_state(job: &str) -> String {
    command_output("squeue", &["-h", "-t", "all", "-j", job, "-o", "%T"])
        .trim()
        .to_owned()
}

/// The job script as SLURM keeps it (what anyone allowed to read the job sees).
fn job_script(job: &str) -> String {
    command_output("scontrol", &["write", "batch_script", job, "-"])
}

fn bootstrap_token(script: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix("TRESOR_BOOTSTRAP_TOKEN='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no bootstrap token in {script}"))
        .to_owned()
}

async fn replay(server: &TestServer, task: &str, job: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/internal/v1/tasks/{task}/bootstrap", server.url))
        .bearer_auth(token)
        .json(&serde_json::json!({ "job_id": job }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn audit_events(server: &TestServer) -> String {
    let store = server.store().await;
    store.audit_events(10_000).await.unwrap().join("\n")
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after 60 s waiting until {what}");
}

fn identity_dirs(task: &str) -> Vec<String> {
    entries(Path::new("/dev/shm"))
        .into_iter()
        .filter(|e| e.contains(task))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_with_inputs_outputs_and_a_secret_runs_as_a_job_that_holds_no_secret() {
    let s3 = S3Server::start().await;
    let server = slurm_server(Some(&s3)).await;
    let envs: Vec<(String, String)> = server
        .admin
        .compute_envs()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.kind))
        .collect();
    assert_eq!(
        envs,
        [
            ("local".into(), "local".into()),
            ("hpc".into(), "slurm".into())
        ]
    );
    server.admin.create_workspace("cluster").await.unwrap();
    assert_eq!(server.admin.compute_env("cluster").await.unwrap(), "local");
    let err = server
        .admin
        .set_compute_env("cluster", "moon")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        err.to_string().contains("known: [\"local\", \"hpc\"]"),
        "{err}"
    );
    server
        .admin
        .set_compute_env("cluster", "hpc")
        .await
        .unwrap();
    assert_eq!(server.admin.compute_env("cluster").await.unwrap(), "hpc");
    let tes = TesClient::for_workspace(&server.url, "cluster", &server.admin_token).unwrap();
    let info = tes.service_info().await.unwrap();
    assert!(
        info.tes_resources_backend_parameters
            .contains(&"time_limit".to_owned())
    );

    server
        .admin
        .put_secret("cluster", false, "DB_PASSWORD", CANARY, None)
        .await
        .unwrap();
    s3.put("workspaces/cluster/in/reads.txt", b"ACGT\n").await;
    let mut task = sh_task(
        r#"cat /data/reads.txt /data/note.txt > /out/result.txt
           wc -c < "$TRESOR_SECRETS_DIR/DB_PASSWORD" >> /out/result.txt
           test -s "$TRESOR_IDENTITY_TOKEN_FILE" && echo "token present"
           echo "env:$DB_PASSWORD""#,
    );
    task.inputs = Some(vec![
        TesInput {
            url: Some("s3://tresor/workspaces/cluster/in/reads.txt".to_owned()),
            path: "/data/reads.txt".to_owned(),
            file_type: Some(TesFileType::File),
            ..TesInput::default()
        },
        TesInput {
            content: Some("hello\n".to_owned()),
            path: "/data/note.txt".to_owned(),
            ..TesInput::default()
        },
    ]);
    task.outputs = Some(vec![TesOutput {
        url: "s3://tresor/workspaces/cluster/out/result.txt".to_owned(),
        path: "/out/result.txt".to_owned(),
        file_type: Some(TesFileType::File),
        ..TesOutput::default()
    }]);
    task.resources = Some(TesResources {
        cpu_cores: Some(1),
        ram_gb: Some(0.25),
        backend_parameters: Some([("time_limit".to_owned(), "10".to_owned())].into()),
        backend_parameters_strict: Some(true),
        ..TesResources::default()
    });
    task.tags = Some([("tresor.secrets.env".to_owned(), "DB_PASSWORD".to_owned())].into());
    let id = tes.create_task(&task).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    assert_complete(&done);
    assert_eq!(
        String::from_utf8(s3.object("workspaces/cluster/out/result.txt").unwrap()).unwrap(),
        format!("ACGT\nhello\n{}\n", CANARY.len())
    );
    let out = stdout(&done, 0);
    assert!(
        out.contains("token present") && out.contains("env:"),
        "{out}"
    );
    assert!(!out.contains("canary"), "the secret reached the log: {out}");

    // What SLURM holds about the job: its script, its record, its logs and spool.
    let job = job_id(&done);
    let record = command_output("scontrol", &["-o", "-d", "show", "job", &job]);
    assert!(record.contains(&format!("JobName=tresor-{id}")), "{record}");
    assert!(record.contains("TimeLimit=00:10:00"), "{record}");
    assert!(record.contains("MinMemoryNode=256M"), "{record}");
    assert!(!record.contains("canary") && !record.contains("TRESOR_BOOTSTRAP"));
    let script = job_script(&job);
    assert!(!script.contains("canary"), "{script}");
    // Nothing but the three variables and the worker's command.
    for line in script
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.starts_with("TRESOR_TASK_ID=")
                || line.starts_with("TRESOR_SERVER_URL=")
                || line.starts_with("TRESOR_BOOTSTRAP_TOKEN=")
                || line
                    .starts_with("export TRESOR_TASK_ID TRESOR_SERVER_URL TRESOR_BOOTSTRAP_TOKEN")
                || line.ends_with(" worker --bootstrap"),
            "unexpected line in the job script: {line}"
        );
    }
    // The token in the script was spent when the job started.
    let token = bootstrap_token(&script);
    assert_eq!(
        replay(&server, &id, &job, &token).await,
        StatusCode::UNAUTHORIZED
    );

    let task_dir = work_dir(&server).join(&id);
    wait_for(
        "the task's directory is removed from the shared work dir",
        || !task_dir.exists(),
    )
    .await;
    for root in [
        work_dir(&server),
        server.data.clone(),
        PathBuf::from("/var/log/slurm"),
        PathBuf::from("/var/spool/slurmd"),
        PathBuf::from("/var/spool/slurmctld"),
    ] {
        let found = files_containing(&root, CANARY);
        assert!(found.is_empty(), "the secret is in {found:?}");
    }
    assert!(identity_dirs(&id).is_empty(), "{:?}", identity_dirs(&id));
    let audit = audit_events(&server).await;
    assert!(
        audit.contains("\"action\":\"task.bootstrap\"") && audit.contains("\"result\":\"ok\""),
        "{audit}"
    );
    assert!(
        audit.contains("denied: the task has ended"),
        "the replay is audited: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_the_job_and_a_replayed_bootstrap_token_is_refused_and_audited() {
    let server = slurm_server(None).await;
    let tes = cluster_workspace(&server, "cancels").await;
    let id = tes
        .create_task(&sh_task("echo started; sleep 300"))
        .await
        .unwrap();
    let running = wait_state(&tes, &id, TesState::Running).await;
    let job = job_id(&running);
    assert_eq!(job_state(&job), "RUNNING");

    // Someone who reads the running job's script gets a token that is already spent.
    let token = bootstrap_token(&job_script(&job));
    assert_eq!(
        replay(&server, &id, &job, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        replay(&server, &id, &job, "forged").await,
        StatusCode::UNAUTHORIZED
    );
    let audit = audit_events(&server).await;
    assert!(
        audit.contains("denied: the token was already used (replay)"),
        "{audit}"
    );
    // The task runs on, untouched by the replay.
    assert_eq!(
        tes.get_task(&id, TesView::Minimal).await.unwrap().state,
        Some(TesState::Running)
    );

    tes.cancel_task(&id).await.unwrap();
    assert_eq!(
        tes.get_task(&id, TesView::Minimal).await.unwrap().state,
        Some(TesState::Canceled)
    );
    wait_for("SLURM reports the job CANCELLED", || {
        job_state(&job) == "CANCELLED"
    })
    .await;
    let task_dir = work_dir(&server).join(&id);
    wait_for("the canceled task's directory is removed", || {
        !task_dir.exists()
    })
    .await;
    wait_for(
        "the identity directory is gone from the node's tmpfs",
        || identity_dirs(&id).is_empty(),
    )
    .await;
    assert!(processes_with(&id).is_empty(), "{:?}", processes_with(&id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_over_its_memory_limit_is_an_executor_error_with_slurms_reason() {
    let server = slurm_server(None).await;
    let tes = cluster_workspace(&server, "limits").await;
    let mut task = sh_task(
        "python3 -c \"import time; x = b'x' * (600 << 20); time.sleep(60)\"; echo survived",
    );
    task.resources = Some(TesResources {
        ram_gb: Some(0.15),
        ..TesResources::default()
    });
    let id = tes.create_task(&task).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    let logs = system_logs(&done);
    assert_eq!(done.state, Some(TesState::ExecutorError), "{logs}");
    assert!(logs.contains("exceeded memory limit"), "{logs}");
    assert!(logs.contains("SLURM ended job"), "{logs}");
    assert!(!format!("{:?}", done.logs).contains("survived"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_tasks_at_once_become_fifty_jobs_and_all_complete() {
    let server = slurm_server(None).await;
    let tes = cluster_workspace(&server, "many").await;
    let mut creating = tokio::task::JoinSet::new();
    for i in 0..50 {
        let tes = tes.clone();
        creating.spawn(async move {
            let id = tes.create_task(&sh_task(&format!("echo task-{i}"))).await;
            (i, id.unwrap())
        });
    }
    let mut ids: Vec<Option<String>> = vec![None; 50];
    while let Some(created) = creating.join_next().await {
        let (i, id) = created.unwrap();
        ids[i] = Some(id);
    }
    let ids: Vec<_> = ids.into_iter().map(Option::unwrap).collect();
    let mut jobs = std::collections::BTreeSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let done = wait_state(&tes, &id, TesState::Complete).await;
        assert_eq!(stdout(&done, 0), format!("task-{i}\n"));
        jobs.insert(job_id(&done));
    }
    assert_eq!(jobs.len(), 50, "one job per task");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_bootstrap_token_is_refused_and_audited() {
    let server = TestServer::start_with(|s| {
        let dir = dir_of(s);
        // A node so slow that the job's token has expired when its worker starts.
        let slow = dir.join("slow-worker.sh");
        std::fs::write(&slow, format!("#!/bin/sh\nsleep 3\nexec {TRESOR} \"$@\"\n")).unwrap();
        std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut slurm = slurm_settings(&dir);
        slurm.worker_program = slow;
        slurm.bootstrap_ttl = Duration::from_secs(1);
        s.services.slurm = vec![slurm];
    })
    .await;
    let tes = cluster_workspace(&server, "slow").await;
    let id = tes.create_task(&sh_task("echo never")).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    let logs = system_logs(&done);
    assert_eq!(done.state, Some(TesState::SystemError), "{logs}");
    assert!(logs.contains("without a result from the worker"), "{logs}");
    assert!(logs.contains("exchanging the bootstrap token"), "{logs}");
    let audit = audit_events(&server).await;
    assert!(audit.contains("denied: the token expired"), "{audit}");
}

//! WES: a trivial CWL workflow (one `md5sum` step, as in ../shared/reference/tes-wes.md §9)
//! through tresor's WES, against wes-service 5.0 running cwltool on the host, in the same run;
//! and cancel → CANCELED of a run whose job is running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tresor_api_types::tes::TesState;
use tresor_api_types::wes::RunRequest;
use tresor_client::{WesAttachment, WesClient};

use crate::{Args, start_server_with};

const MD5_TOOL: &str = "cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: md5sum\ninputs: {input_file: {type: File, inputBinding: {position: 1}}}\nstdout: md5sum.txt\noutputs: {output_file: {type: stdout}}\n";
const MD5_WF: &str = "cwlVersion: v1.2\nclass: Workflow\ninputs: {input_file: File}\noutputs: {output_file: {type: File, outputSource: md5sum/output_file}}\nsteps:\n  md5sum:\n    run: md5tool.cwl\n    in: {input_file: input_file}\n    out: [output_file]\n";
const SLEEP_WF: &str = "cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: [sleep, \"60\"]\ninputs: []\noutputs: []\n";

/// Sapporo's figures: one run (p50), five at once, and CancelRun to CANCELED (None: never, within
/// a minute).
pub struct SapporoBench {
    pub one: Duration,
    pub five: Duration,
    pub cancel: Option<Duration>,
}

/// What the WES rows report.
pub struct WesBench {
    pub tresor_one: Duration,
    pub peer_one: Duration,
    pub tresor_five: Duration,
    pub peer_five: Duration,
    pub cancel: Duration,
    /// The same measures on Sapporo, when its venv is there.
    pub sapporo: Option<SapporoBench>,
    /// Snakemake: from a job's end to the creation of the job that waited for it (median of 3).
    pub next_job: Duration,
}

const CHAIN_SNAKEFILE: &str = "rule all:\n    input: \"b.txt\"\nrule first:\n    output: \"a.txt\"\n    shell: \"echo a > {output}\"\nrule second:\n    input: \"a.txt\"\n    output: \"b.txt\"\n    shell: \"cat {input} > {output}\"\n";

fn rfc3339(text: Option<&str>) -> Result<time::OffsetDateTime> {
    let text = text.context("a time is missing")?;
    Ok(time::OffsetDateTime::parse(
        text,
        &time::format_description::well_known::Rfc3339,
    )?)
}

/// A two-rule Snakemake run; the gap between the first job's end and the second's creation.
async fn next_job_gap(
    wes: &WesClient,
    tes: &tresor_client::TesClient,
    deadline: Instant,
) -> Result<Duration> {
    let request = RunRequest {
        workflow_type: "SMK".to_owned(),
        workflow_type_version: "9".to_owned(),
        workflow_url: "Snakefile".to_owned(),
        ..RunRequest::default()
    };
    let files = [WesAttachment {
        name: "Snakefile".to_owned(),
        content: CHAIN_SNAKEFILE.as_bytes().to_vec(),
    }];
    let id = wes.run_workflow(&request, &files).await?;
    loop {
        match wes.status(&id).await?.state {
            TesState::Complete => break,
            TesState::ExecutorError | TesState::SystemError | TesState::Canceled => {
                bail!("the Snakemake run {id} failed")
            }
            _ if Instant::now() > deadline => bail!("the Snakemake run exceeded --max-seconds"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut jobs = Vec::new();
    for task in wes.run_tasks(&id).await?.task_logs {
        if task.name.contains("engine") {
            continue;
        }
        let full = tes
            .get_task(&task.id, tresor_api_types::tes::TesView::Full)
            .await?;
        let created = rfc3339(full.creation_time.as_deref())?;
        let ended = rfc3339(
            full.logs
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|l| l.end_time.as_deref()),
        )?;
        jobs.push((created, ended));
    }
    jobs.sort();
    let [(_, first_end), (second_created, _)] = jobs[..] else {
        bail!("the Snakemake run had {} jobs, not 2", jobs.len());
    };
    Ok(Duration::try_from(second_created - first_end).unwrap_or_default())
}

fn md5_files() -> Vec<WesAttachment> {
    let file = |name: &str, content: &str| WesAttachment {
        name: name.to_owned(),
        content: content.as_bytes().to_vec(),
    };
    vec![
        file("md5wf.cwl", MD5_WF),
        file("md5tool.cwl", MD5_TOOL),
        file(
            "md5sum.input",
            "the input of the trivial workflow: one hundred and one bytes of text, give or take a few here and there\n",
        ),
    ]
}

fn md5_request() -> RunRequest {
    RunRequest {
        workflow_type: "CWL".to_owned(),
        workflow_type_version: "v1.2".to_owned(),
        workflow_url: "md5wf.cwl".to_owned(),
        workflow_params:
            serde_json::json!({"input_file": {"class": "File", "path": "md5sum.input"}})
                .as_object()
                .cloned(),
        ..RunRequest::default()
    }
}

/// Submits `n` runs back to back and waits (polling every 50 ms) until all have ended.
async fn runs(wes: &WesClient, n: usize, deadline: Instant) -> Result<Duration> {
    runs_of(wes, &md5_request(), n, deadline).await
}

/// `runs` with its own request (Sapporo wants `workflow_engine`).
async fn runs_of(
    wes: &WesClient,
    request: &RunRequest,
    n: usize,
    deadline: Instant,
) -> Result<Duration> {
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(wes.run_workflow(request, &md5_files()).await?);
    }
    for id in ids {
        loop {
            let state = wes.status(&id).await?.state;
            match state {
                TesState::Complete => break,
                TesState::ExecutorError | TesState::SystemError | TesState::Canceled => {
                    let log = wes.run_log(&id).await.ok();
                    bail!(
                        "run {id} ended {state:?}: {:?}",
                        log.and_then(|l| l.run_log.system_logs)
                    )
                }
                _ if Instant::now() > deadline => {
                    bail!("WES run {id} is still {state:?} after --max-seconds")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(start.elapsed())
}

/// One more run, and where its time went (from the tasks' own timestamps), on stderr.
async fn timeline(wes: &WesClient, url: &str, token: &str) -> Result<()> {
    let created = time::OffsetDateTime::now_utc();
    let id = wes.run_workflow(&md5_request(), &md5_files()).await?;
    while !matches!(
        wes.status(&id).await?.state,
        TesState::Complete | TesState::ExecutorError | TesState::SystemError | TesState::Canceled
    ) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = time::OffsetDateTime::now_utc();
    let tes = tresor_client::TesClient::with_token(url, token)?;
    let ms = |t: Option<&str>| -> String {
        rfc3339(t)
            .map(|t| format!("{:>5}", (t - created).whole_milliseconds()))
            .unwrap_or_else(|_| "    -".to_owned())
    };
    let mut lines = Vec::new();
    for task in wes.run_tasks(&id).await?.task_logs {
        let full = tes
            .get_task(&task.id, tresor_api_types::tes::TesView::Full)
            .await?;
        let log = full.logs.as_ref().and_then(|l| l.last());
        let exec = log.and_then(|l| l.logs.first());
        lines.push(format!(
            "  {:<24} created {} started {} command {}..{} ended {}",
            task.name,
            ms(full.creation_time.as_deref()),
            ms(log.and_then(|l| l.start_time.as_deref())),
            ms(exec.and_then(|e| e.start_time.as_deref())),
            ms(exec.and_then(|e| e.end_time.as_deref())),
            ms(log.and_then(|l| l.end_time.as_deref())),
        ));
    }
    lines.sort();
    eprintln!(
        "WES timeline (ms after submitting; COMPLETE seen at {}):\n{}",
        (done - created).whole_milliseconds(),
        lines.join("\n")
    );
    Ok(())
}

/// Sapporo 2.4.0 (WES at `/`) running the same cwltool on the host, as in
/// ../shared/reference/tes-wes.md §9: its run.sh, with `run_cwltool` calling cwltool directly
/// instead of its Docker image. Measured after tresor and wes-service, on its own.
async fn sapporo(args: &Args, engines: &Path, deadline: Instant) -> Result<Option<SapporoBench>> {
    let venv = PathBuf::from(&args.sapporo_venv);
    let program = venv.join("bin/sapporo");
    if !program.exists() {
        eprintln!(
            "Sapporo rows skipped: {} is missing (scripts/lib/sapporo-up.sh builds it; it needs Python 3.12)",
            program.display()
        );
        return Ok(None);
    }
    let stock = std::fs::read_dir(venv.join("lib"))?
        .flatten()
        .map(|entry| entry.path().join("site-packages/sapporo/run.sh"))
        .find(|path| path.exists())
        .context("Sapporo's run.sh is missing from its venv")?;
    let stock = std::fs::read_to_string(&stock)?;
    let start = stock
        .find("function run_cwltool() {")
        .context("run.sh has no run_cwltool")?;
    let end = start
        + stock[start..]
            .find("\n}\n")
            .context("run_cwltool never ends")?;
    let run_sh = format!(
        "{}function run_cwltool() {{\n    local -a cmd_arr=({cwltool:?} --no-container --tmpdir-prefix \"${{tmp_dir}}/\" --outdir \"${{outputs_dir}}\")\n    _append_engine_params cmd_arr\n    cmd_arr+=(\"${{wf_url}}\" \"${{wf_params}}\")\n    ( cd \"${{exe_dir}}\" && _write_and_run cmd_arr ){}",
        &stock[..start],
        &stock[end..],
        cwltool = engines.join("bin/cwltool").display().to_string(),
    );
    let dir = tempfile::Builder::new()
        .prefix("tresor-bench-sapporo-")
        .tempdir()?;
    let run_sh_path = dir.path().join("run.sh");
    std::fs::write(&run_sh_path, run_sh)?;
    std::fs::create_dir_all(dir.path().join("runs"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _peer = Peer(
        Command::new(&program)
            .current_dir(dir.path())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--run-dir",
            ])
            .arg(dir.path().join("runs"))
            .arg("--run-sh")
            .arg(&run_sh_path)
            .env(
                "PATH",
                format!(
                    "{}:{}:/usr/bin:/bin",
                    venv.join("bin").display(),
                    engines.join("bin").display()
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?,
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("Sapporo did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wes = WesClient::at(&format!("http://127.0.0.1:{port}"), "unused")?;
    let with_engine = |request: RunRequest| RunRequest {
        workflow_engine: Some("cwltool".to_owned()),
        ..request
    };
    let md5 = with_engine(md5_request());
    runs_of(&wes, &md5, 1, deadline).await?;
    let mut one = Vec::new();
    for _ in 0..args.wes_runs {
        one.push(runs_of(&wes, &md5, 1, deadline).await?);
    }
    let five = runs_of(&wes, &md5, 5, deadline).await?;
    let sleeper = with_engine(RunRequest {
        workflow_url: "sleep.cwl".to_owned(),
        workflow_params: None,
        ..md5_request()
    });
    let id = wes.run_workflow(&sleeper, &[sleep_file()]).await?;
    while wes.status(&id).await?.state != TesState::Running {
        if Instant::now() > deadline {
            bail!("Sapporo never ran the sleeping run");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Running is reported before cwltool has started its step; give it that second, as the
    // reference measurement did (it canceled after 5 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    wes.cancel(&id).await?;
    let mut cancel = None;
    while start.elapsed() < Duration::from_secs(60) {
        if wes.status(&id).await?.state == TesState::Canceled {
            cancel = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Some(SapporoBench {
        one: median(one),
        five,
        cancel,
    }))
}

fn sleep_file() -> WesAttachment {
    WesAttachment {
        name: "sleep.cwl".to_owned(),
        content: SLEEP_WF.as_bytes().to_vec(),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wes(tresor: &Path, args: &Args) -> Result<WesBench> {
    let engines = PathBuf::from(&args.engines_venv);
    let cwltool = engines.join("bin/cwltool");
    if !cwltool.exists() {
        bail!(
            "{} is missing: run scripts/lib/engines-up.sh",
            cwltool.display()
        );
    }
    // Absolute: the peer runs in a directory of its own.
    let wes_server =
        std::fs::canonicalize(PathBuf::from(&args.wes_service_venv).join("bin/wes-server"))
            .context(
                "wes-server is missing: run scripts/test.sh (it installs wes-service into .venv)",
            )?;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let python = engines.join("bin/python");
    let server = start_server_with(tresor, 2, |dir| {
        let config = dir.join("tresor.toml");
        std::fs::write(
            &config,
            format!(
                "[images]\nruntime = \"host\"\n[workflows.engines.cwltool]\nworkflow_type = \"CWL\"\nworkflow_type_versions = [\"v1.2\"]\nversion = \"3.3\"\ncommand = [{python:?}, \"{{adapters}}/tresor_cwl.py\", \"--parallel\", \"{{workflow}}\", \"{{params}}\"]\n[workflows.engines.cwltool.env]\nPATH = \"{bin}:/usr/bin:/bin\"\n[workflows.engines.snakemake]\nworkflow_type = \"SMK\"\nworkflow_type_versions = [\"9\"]\nversion = \"9\"\ncommand = [{python:?}, \"-m\", \"snakemake\", \"--snakefile\", \"{{workflow}}\", \"--directory\", \"{{run_dir}}\", \"--executor\", \"tresor\", \"--jobs\", \"4\", \"--shared-fs-usage\", \"input-output\", \"persistence\", \"sources\", \"source-cache\", \"storage-local-copies\", \"--nolock\", \"--max-status-checks-per-second\", \"100\"]\n[workflows.engines.snakemake.env]\nPATH = \"{bin}:/usr/bin:/bin\"\n",
                bin = engines.join("bin").display()
            ),
        )?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        Ok(vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--allowed-dir".to_owned(),
            storage.display().to_string(),
        ])
    })?;
    let ours = WesClient::with_token(&server.url, &server.token)?;

    // wes-service with cwltool on the host (no sandbox, no containers), on a free port.
    let peer_dir = tempfile::Builder::new()
        .prefix("tresor-bench-wes-")
        .tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _peer = Peer(
        Command::new(&wes_server)
            .current_dir(peer_dir.path())
            .args([
                "--backend=wes_service.cwl_runner",
                &format!("--opt=runner={}", cwltool.display()),
                "--opt=extra=--no-container",
                &format!("--port={port}"),
            ])
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", engines.join("bin").display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", wes_server.display()))?,
    );
    let peer = WesClient::with_token(&format!("http://127.0.0.1:{port}"), "unused")?;
    // Up when it accepts connections (its service-info lacks fields tresor's type requires).
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("wes-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Warm both (first imports, caches), then alternate.
    runs(&ours, 1, deadline).await?;
    runs(&peer, 1, deadline).await?;
    let (mut ours_one, mut peer_one) = (Vec::new(), Vec::new());
    for _ in 0..args.wes_runs {
        ours_one.push(runs(&ours, 1, deadline).await?);
        peer_one.push(runs(&peer, 1, deadline).await?);
    }
    timeline(&ours, &server.url, &server.token).await?;
    let tresor_five = runs(&ours, 5, deadline).await?;
    let peer_five = runs(&peer, 5, deadline).await?;

    // Cancel: a one-step run whose job sleeps; from CancelRun to every task of the run ended.
    let sleeper = RunRequest {
        workflow_url: "sleep.cwl".to_owned(),
        workflow_params: None,
        ..md5_request()
    };
    let id = ours.run_workflow(&sleeper, &[sleep_file()]).await?;
    loop {
        let tasks = ours.run_tasks(&id).await?.task_logs;
        if tasks.len() == 2 && tasks.iter().all(|t| t.state == Some(TesState::Running)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the sleeping run never ran its job");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    ours.cancel(&id).await?;
    loop {
        let tasks = ours.run_tasks(&id).await?.task_logs;
        if ours.status(&id).await?.state == TesState::Canceled
            && tasks.iter().all(|t| t.state == Some(TesState::Canceled))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the canceled run did not end");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancel = start.elapsed();
    let tes = tresor_client::TesClient::with_token(&server.url, &server.token)?;
    let mut gaps = Vec::new();
    for _ in 0..3 {
        gaps.push(next_job_gap(&ours, &tes, deadline).await?);
    }
    let sapporo = sapporo(args, &engines, deadline).await?;
    Ok(WesBench {
        sapporo,
        next_job: median(gaps),
        tresor_one: median(ours_one),
        peer_one: median(peer_one),
        tresor_five,
        peer_five,
        cancel,
    })
}

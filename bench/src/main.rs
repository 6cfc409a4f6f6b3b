//! `tresor-bench`: measures a real `tresor serve` on loopback; see README.md.
#![allow(clippy::print_stdout)] // a benchmark's output is its report

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tresor_api_types::tes::{TesExecutor, TesResources, TesState, TesTask, TesView};
use tresor_client::TesClient;

#[derive(Parser)]
#[command(about = "Benchmark a real tresor server on loopback")]
struct Args {
    /// CreateTask calls in the throughput run.
    #[arg(long, default_value_t = 5000)]
    creations: usize,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Sequential `true` tasks for the latency run (and bare bwrap runs for its baseline).
    #[arg(long, default_value_t = 100)]
    latency_runs: usize,
    /// Cancels measured.
    #[arg(long, default_value_t = 10)]
    cancels: usize,
    /// Upper bound on the time of each run, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// MiB of log text redacted in the redaction run.
    #[arg(long, default_value_t = 256)]
    redact_mib: usize,
    /// Tasks timed on SLURM against as many raw `sbatch --wrap true` jobs (0 skips the SLURM row).
    #[arg(long, default_value_t = 5)]
    slurm_runs: usize,
    /// The tresor binary (default: `tresor` beside this program).
    #[arg(long)]
    tresor: Option<PathBuf>,
}

struct Server {
    child: Child,
    client: TesClient,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(tresor: &Path, slots: u32) -> Result<Server> {
    start_server_with(tresor, slots, |_| Ok(Vec::new()))
}

/// Starts a server; `extra` gets its directory and returns more `serve` arguments.
fn start_server_with(
    tresor: &Path,
    slots: u32,
    extra: impl FnOnce(&Path) -> Result<Vec<String>>,
) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("tresor-bench-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let extra = extra(dir.path())?;
    let mut child = Command::new(tresor)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            &slots.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRESOR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", tresor.display()))?;
    let mut reader = BufReader::new(child.stdout.take().context("server stdout")?);
    let url = loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the server exited before listening");
        }
        if let Some(url) = line.trim().strip_prefix("tresor listening on ") {
            break url.to_owned();
        }
    };
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-admin-token"))?;
    Ok(Server {
        child,
        client: TesClient::with_token(&url, token.trim())?,
        url,
        token: token.trim().to_owned(),
        _dir: dir,
    })
}

fn task(command: &[&str], cores: i32) -> TesTask {
    TesTask {
        name: Some("bench".into()),
        executors: vec![TesExecutor {
            image: "debian:12".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..TesExecutor::default()
        }],
        resources: Some(TesResources {
            cpu_cores: Some(cores),
            ..TesResources::default()
        }),
        ..TesTask::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Concurrent durable creations. A first task holding every slot keeps the rest queued, so the
/// run measures the API and the database, not the executor.
async fn creations(tresor: &Path, args: &Args) -> Result<f64> {
    let server = start_server(tresor, 2)?;
    server
        .client
        .create_task(&task(&["sleep", "600"], 2))
        .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let client = server.client.clone();
        let next = next.clone();
        let total = args.creations;
        workers.push(tokio::spawn(async move {
            let body = task(&["true"], 1);
            let mut done = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                client.create_task(&body).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut created = 0;
    for w in workers {
        created += w.await??;
    }
    let elapsed = started.elapsed();
    Ok(created as f64 / elapsed.as_secs_f64())
}

/// Submit -> COMPLETE of `true`, one at a time, against bare bubblewrap running `true`.
async fn latency(tresor: &Path, args: &Args) -> Result<(Duration, Duration)> {
    let server = start_server(tresor, 2)?;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let body = task(&["true"], 1);
    // One warm-up task, so the first measured run does not pay for cold caches.
    let mut samples = Vec::new();
    for i in 0..=args.latency_runs {
        let start = Instant::now();
        let id = server.client.create_task(&body).await?;
        loop {
            let t = server.client.get_task(&id, TesView::Minimal).await?;
            match t.state {
                Some(TesState::Complete) => break,
                Some(s) if s.is_terminal() => bail!("latency task ended {s:?}"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
            if Instant::now() > deadline {
                bail!("latency run exceeded --max-seconds");
            }
        }
        if i > 0 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();

    let bare = bare_bwrap(args.latency_runs)?;
    Ok((percentile(&samples, 0.5), bare))
}

/// p50 of spawning bubblewrap with tresor's own sandbox arguments around `true`.
fn bare_bwrap(runs: usize) -> Result<Duration> {
    use tresor_executors::sandbox::{SandboxSettings, SandboxSpec, bwrap_args};
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    let bwrap = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
        .context("bwrap is not on PATH")?;
    // The same user switch the server makes when it runs as root.
    let run_as = is_root().then_some((65534, 65534));
    if run_as.is_some() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        std::os::unix::fs::chown(dir.path().join("tmp"), Some(65534), Some(65534))?;
    }
    let settings = SandboxSettings { bwrap, run_as };
    let env = Default::default();
    let mounts = vec!["/tmp".to_owned()];
    let command = vec!["true".to_owned()];
    let spec = SandboxSpec {
        settings: &settings,
        root: dir.path(),
        mounts: &mounts,
        network: false,
        workdir: "/tmp",
        env: &env,
        command: &command,
        secret_fds: &[],
        ro_binds: &[],
    };
    let argv = bwrap_args(&spec);
    let mut samples = Vec::new();
    for _ in 0..=runs {
        let start = Instant::now();
        let mut command = Command::new(&settings.bwrap);
        command.args(&argv).env_clear();
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let status = command.status()?;
        if !status.success() {
            bail!("bare bwrap failed: {status}");
        }
        samples.push(start.elapsed());
    }
    samples.remove(0);
    samples.sort();
    Ok(percentile(&samples, 0.5))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// CancelTask on a running `sleep` until GetTask reports CANCELED.
async fn cancels(tresor: &Path, args: &Args) -> Result<Vec<Duration>> {
    let server = start_server(tresor, 2)?;
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut samples = Vec::new();
    for _ in 0..args.cancels {
        let id = server
            .client
            .create_task(&task(&["sleep", "300"], 1))
            .await?;
        while server.client.get_task(&id, TesView::Minimal).await?.state != Some(TesState::Running)
        {
            if Instant::now() > deadline {
                bail!("cancel run exceeded --max-seconds");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        server.client.cancel_task(&id).await?;
        while server.client.get_task(&id, TesView::Minimal).await?.state != Some(TesState::Canceled)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(samples)
}

/// Redaction throughput with 100 secrets and all their encodings, against a plain copy of the same
/// bytes timed in the same run. Returns (redact GB/s, copy GB/s).
fn redaction(args: &Args) -> Result<(f64, f64)> {
    use tresor_crypto::SecretValue;
    use tresor_crypto::redact::Redactor;
    let secrets: Vec<SecretValue> = (0..100)
        .map(|i| {
            SecretValue::new(format!("s3cr3t-{i:03}-{}", "x".repeat(20 + i % 13)).into_bytes())
        })
        .collect();
    let redactor = Redactor::new(secrets.iter());
    // Log-like text: lines of words and numbers, with one secret every ~64 KiB.
    let mut text = Vec::with_capacity(args.redact_mib << 20);
    let mut n: u64 = 1;
    while text.len() < args.redact_mib << 20 {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.extend_from_slice(
            format!(
                "2026-11-22T08:00:00Z INFO step {} read {} records from shard {}\n",
                n % 997,
                n % 100_000,
                n % 64
            )
            .as_bytes(),
        );
        if n.is_multiple_of(1000) {
            text.extend_from_slice(secrets[(n as usize / 1000) % 100].expose_secret());
        }
    }
    let gb = text.len() as f64 / 1e9;
    let start = Instant::now();
    let copy = text.to_vec();
    let copy_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let redacted = redactor.redact(&text);
    let redact_secs = start.elapsed().as_secs_f64();
    if redacted.len() >= text.len() || copy.len() != text.len() {
        bail!("redaction changed nothing");
    }
    Ok((gb / redact_secs, gb / copy_secs))
}

/// Submit -> COMPLETE of a task declaring 10 secrets against one declaring none, same server.
async fn secret_fetch(tresor: &Path, args: &Args) -> Result<(Duration, Duration)> {
    let server = start_server(tresor, 2)?;
    let token = server.token.clone();
    let platform = tresor_client::PlatformClient::new(&server.url, Some(&token))?;
    let ws = platform.me().await?.personal_workspace;
    let mut names = Vec::new();
    for i in 0..10 {
        let name = format!("S{i}");
        platform
            .put_secret(
                &ws,
                false,
                &name,
                format!("bench-secret-value-{i:02}").as_bytes(),
                None,
            )
            .await?;
        names.push(name);
    }
    let mut with = task(&["true"], 1);
    with.tags = Some([("tresor.secrets".to_owned(), names.join(","))].into());
    let without = task(&["true"], 1);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut timings = [Vec::new(), Vec::new()];
    for i in 0..=args.latency_runs.min(40) {
        for (k, body) in [&with, &without].into_iter().enumerate() {
            let start = Instant::now();
            let id = server.client.create_task(body).await?;
            loop {
                match server.client.get_task(&id, TesView::Minimal).await?.state {
                    Some(TesState::Complete) => break,
                    Some(s) if s.is_terminal() => bail!("secret task ended {s:?}"),
                    _ => tokio::time::sleep(Duration::from_millis(2)).await,
                }
                if Instant::now() > deadline {
                    bail!("secret run exceeded --max-seconds");
                }
            }
            if i > 0 {
                timings[k].push(start.elapsed());
            }
        }
    }
    for t in &mut timings {
        t.sort();
    }
    Ok((percentile(&timings[0], 0.5), percentile(&timings[1], 0.5)))
}

const S3_KEY: &str = "AKIDBENCH";
const S3_SECRET: &str = "bench-s3-secret-key";

/// An S3 server (s3s-fs, in this process, checking every signature) with bucket `tresor`.
async fn start_s3(root: &Path) -> Result<String> {
    std::fs::create_dir_all(root.join("tresor"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(
        s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?,
    );
    builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY, S3_SECRET));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    Ok(endpoint)
}

/// submit->COMPLETE of a task copying a 1 MiB input to an output, through presigned S3 URLs
/// and through file:// in an allowed directory, alternating.
async fn storage_paths(tresor: &Path, args: &Args) -> Result<(Duration, Duration)> {
    let s3_root = tempfile::tempdir()?;
    let endpoint = start_s3(s3_root.path()).await?;
    let object = s3_root.path().join("tresor/workspaces");
    let files = tempfile::tempdir()?;
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o777))?;
    let payload = vec![b'x'; 1 << 20];
    let files_area = std::fs::canonicalize(files.path())?;
    let server = start_server_with(tresor, 2, |dir| {
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, S3_SECRET)?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        let config = dir.join("tresor.toml");
        std::fs::write(
            &config,
            format!(
                "[s3]\nendpoint = \"{endpoint}\"\naccess_key_id = \"{S3_KEY}\"\nsecret_access_key_file = \"{}\"\ndefault_bucket = \"tresor\"\n",
                secret.display()
            ),
        )?;
        Ok(vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--allowed-dir".to_owned(),
            files_area.display().to_string(),
        ])
    })?;
    let platform = tresor_client::PlatformClient::new(&server.url, Some(&server.token))?;
    let ws = platform.me().await?.personal_workspace;
    // Each workspace's file:// storage is its own directory inside the allowed one.
    let files_dir = files_area.join(&ws);
    std::fs::create_dir_all(&files_dir)?;
    std::fs::write(files_dir.join("in.bin"), &payload)?;
    std::fs::create_dir_all(object.join(&ws))?;
    // Uploaded over S3 with a presigned URL from nobody: written where s3s-fs reads it.
    std::fs::write(object.join(&ws).join("in.bin"), &payload)?;
    let io_task = |input: String, output: String| {
        let mut t = task(&["cp", "/data/in.bin", "/data/out.bin"], 1);
        t.inputs = Some(vec![tresor_api_types::tes::TesInput {
            url: Some(input),
            path: "/data/in.bin".into(),
            ..Default::default()
        }]);
        t.outputs = Some(vec![tresor_api_types::tes::TesOutput {
            url: output,
            path: "/data/out.bin".into(),
            ..Default::default()
        }]);
        t
    };
    let s3 = io_task(
        format!("s3://tresor/workspaces/{ws}/in.bin"),
        format!("s3://tresor/workspaces/{ws}/out.bin"),
    );
    let file = io_task(
        format!("file://{}/in.bin", files_dir.display()),
        format!("file://{}/out.bin", files_dir.display()),
    );
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut timings = [Vec::new(), Vec::new()];
    for i in 0..=args.latency_runs.min(30) {
        for (k, body) in [&s3, &file].into_iter().enumerate() {
            let start = Instant::now();
            let id = server.client.create_task(body).await?;
            loop {
                match server.client.get_task(&id, TesView::Minimal).await?.state {
                    Some(TesState::Complete) => break,
                    Some(s) if s.is_terminal() => bail!("storage task ended {s:?}"),
                    _ => tokio::time::sleep(Duration::from_millis(2)).await,
                }
                if Instant::now() > deadline {
                    bail!("storage run exceeded --max-seconds");
                }
            }
            if i > 0 {
                timings[k].push(start.elapsed());
            }
        }
    }
    for t in &mut timings {
        t.sort();
    }
    Ok((percentile(&timings[0], 0.5), percentile(&timings[1], 0.5)))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Median seconds from submission to COMPLETE: tresor tasks on a SLURM compute environment,
/// against raw `sbatch --wrap true` jobs to COMPLETED on the same cluster, alternated. Also the
/// median cost of one poll (`squeue --me -t all`) with 50 held jobs queued.
async fn slurm(tresor: &Path, args: &Args) -> Result<(Duration, Duration, Duration)> {
    let server = start_server_with(tresor, 2, |dir| {
        let config = dir.join("tresor.toml");
        std::fs::write(
            &config,
            format!(
                "[compute_envs.hpc]\ntype = \"slurm\"\nwork_dir = \"{}\"\npoll_interval_seconds = 0.5\n",
                dir.join("slurm-work").display()
            ),
        )?;
        Ok(vec!["--config".into(), config.display().to_string()])
    })?;
    let admin = tresor_client::PlatformClient::new(&server.url, Some(&server.token))?;
    admin.create_workspace("bench-slurm").await?;
    admin.set_compute_env("bench-slurm", "hpc").await?;
    let tes = TesClient::for_workspace(&server.url, "bench-slurm", &server.token)?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..args.slurm_runs {
        let start = Instant::now();
        let job = run(
            "sbatch",
            &["--parsable", "-o", "/dev/null", "--wrap", "true"],
        )?;
        let job = job.trim().to_owned();
        while run("squeue", &["-h", "-t", "all", "-j", &job, "-o", "%T"])?.trim() != "COMPLETED" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        raw.push(start.elapsed());
        let start = Instant::now();
        let id = tes.create_task(&task(&["true"], 1)).await?;
        loop {
            let state = tes.get_task(&id, TesView::Minimal).await?.state;
            if state == Some(TesState::Complete) {
                break;
            }
            if state.is_some_and(|s| s.is_terminal()) {
                bail!("the SLURM task ended {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ours.push(start.elapsed());
    }
    ours.sort();
    raw.sort();
    for _ in 0..50 {
        run(
            "sbatch",
            &[
                "--hold",
                "-J",
                "tresor-bench-held",
                "-o",
                "/dev/null",
                "--wrap",
                "true",
            ],
        )?;
    }
    let mut polls = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        run(
            "squeue",
            &["--me", "-h", "-t", "all", "-o", "%i|%j|%T|%r|%M"],
        )?;
        polls.push(start.elapsed());
    }
    run("scancel", &["--me", "--name", "tresor-bench-held"])?;
    polls.sort();
    Ok((
        percentile(&ours, 0.5),
        percentile(&raw, 0.5),
        percentile(&polls, 0.5),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let tresor = match &args.tresor {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating this program")?
            .join("tresor"),
    };

    let rate = creations(&tresor, &args).await?;
    let (p50, bare) = latency(&tresor, &args).await?;
    let cancel = cancels(&tresor, &args).await?;
    let (redact_gbs, copy_gbs) = redaction(&args)?;
    let (with_secrets, without_secrets) = secret_fetch(&tresor, &args).await?;
    let (via_s3, via_file) = storage_paths(&tresor, &args).await?;
    let slurm_row = if args.slurm_runs > 0 {
        Some(slurm(&tresor, &args).await?)
    } else {
        None
    };
    let ratio = p50.as_secs_f64() / bare.as_secs_f64().max(f64::EPSILON);
    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| task creations/s ({} calls, {} clients, durable) | {rate:.0}/s | - | - | >= 2000/s |",
        args.creations, args.concurrency
    );
    println!(
        "| submit->COMPLETE p50, `true` ({} runs) | {:.1} ms | bare bwrap `true` p50 {:.1} ms | {ratio:.2}x | <= 2x |",
        args.latency_runs,
        ms(p50),
        ms(bare)
    );
    println!(
        "| cancel->CANCELED ({} runs) | p50 {:.1} ms, max {:.1} ms | - | - | <= 1000 ms |",
        cancel.len(),
        ms(percentile(&cancel, 0.5)),
        ms(cancel.last().copied().unwrap_or_default())
    );
    println!(
        "| redaction, 100 secrets with their encodings, {} MiB of log text | {redact_gbs:.2} GB/s | plain copy {copy_gbs:.2} GB/s | {:.2}x of copy | >= 1 GB/s per core |",
        args.redact_mib,
        redact_gbs / copy_gbs
    );
    println!(
        "| submit->COMPLETE with 10 secrets delivered (p50) | {:.1} ms | same task without secrets {:.1} ms | +{:.1} ms | - |",
        ms(with_secrets),
        ms(without_secrets),
        ms(with_secrets.saturating_sub(without_secrets))
    );
    println!(
        "| submit->COMPLETE, 1 MiB in and out through presigned S3 URLs (p50) | {:.1} ms | same through file:// {:.1} ms | +{:.1} ms | - |",
        ms(via_s3),
        ms(via_file),
        ms(via_s3.saturating_sub(via_file))
    );
    if let Some((ours, raw, poll)) = slurm_row {
        println!(
            "| SLURM: submit->COMPLETE, `true` (p50 of {}) | {:.0} ms | raw `sbatch --wrap true` to COMPLETED {:.0} ms | +{:.0} ms overhead | <= 500 ms |",
            args.slurm_runs,
            ms(ours),
            ms(raw),
            ms(ours.saturating_sub(raw))
        );
        println!(
            "| SLURM: one poll (`squeue --me -t all`) with 50 jobs queued (p50) | {:.1} ms | - | - | one call per interval |",
            ms(poll)
        );
    }
    let summary = serde_json::json!({
        "via_s3_p50_ms": ms(via_s3),
        "via_file_p50_ms": ms(via_file),
        "redaction_gb_per_second": redact_gbs,
        "copy_gb_per_second": copy_gbs,
        "with_10_secrets_p50_ms": ms(with_secrets),
        "without_secrets_p50_ms": ms(without_secrets),
        "creations_per_second": rate,
        "submit_to_complete_p50_ms": ms(p50),
        "bare_bwrap_p50_ms": ms(bare),
        "submit_to_complete_ratio": ratio,
        "cancel_p50_ms": ms(percentile(&cancel, 0.5)),
        "cancel_max_ms": ms(cancel.last().copied().unwrap_or_default()),
    });
    println!("{summary}");
    Ok(())
}

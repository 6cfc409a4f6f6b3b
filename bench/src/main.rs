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

mod soak;
mod wes;

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
    /// Secrets of 64 KiB stored in the secrets-at-scale run, spread over 50 workspaces.
    #[arg(long, default_value_t = 1000)]
    scale_secrets: usize,
    /// Run only these measures (comma-separated): creations, latency, cancels, redaction,
    /// secret-delivery, storage, slurm, secrets-at-scale, images, wes. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Cold pulls of the 50 MB image, each against `skopeo copy` + `umoci unpack` (0 skips the
    /// image rows; they need scripts/lib/registry-up.sh).
    #[arg(long, default_value_t = 3)]
    image_runs: usize,
    /// Single trivial CWL runs timed on tresor's WES and on wes-service (0 skips the WES rows).
    #[arg(long, default_value_t = 3)]
    wes_runs: usize,
    /// The venv with cwltool (scripts/lib/engines-up.sh builds it).
    #[arg(long, default_value = "/opt/tresor-engines/venv")]
    engines_venv: String,
    /// The venv with wes-service's wes-server (scripts/test.sh installs it into .venv).
    #[arg(long, default_value = ".venv")]
    wes_service_venv: String,
    /// The venv with Sapporo 2.4.0, which needs Python 3.12 (scripts/lib/sapporo-up.sh builds
    /// it); without it the Sapporo rows say so.
    #[arg(long, default_value = "/opt/tresor-bench-sapporo")]
    sapporo_venv: String,
    /// The tresor binary (default: `tresor` beside this program).
    #[arg(long)]
    tresor: Option<PathBuf>,
    /// How long the soak runs (`--only soak`; it never runs by default), in seconds.
    #[arg(long, default_value_t = 1800)]
    soak_seconds: u64,
    /// Clients in the soak.
    #[arg(long, default_value_t = 50)]
    soak_clients: usize,
    /// Write the soak's report to this Markdown file (docs/performance.md).
    #[arg(long)]
    doc: Option<PathBuf>,
}

impl Args {
    fn runs(&self, measure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == measure)
    }

    /// The soak is long: it runs only when named.
    fn runs_soak(&self) -> bool {
        self.only.iter().any(|m| m == "soak")
    }
}

struct Server {
    child: Child,
    client: TesClient,
    url: String,
    token: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers outlive their server by design; the benchmark's must not outlive it (the
        // creations run leaves a `sleep 600` holding every slot).
        if let Some(dir) = &self._dir {
            tresor_executors::local::kill_workers_under(&dir.path().join("data/work"));
        }
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
    let mut server = start_server_in(tresor, slots, dir.path(), extra)?;
    server._dir = Some(dir);
    Ok(server)
}

/// Starts a server whose data lives in `dir` (kept by the caller, so it can be restarted).
fn start_server_in(tresor: &Path, slots: u32, dir: &Path, extra: Vec<String>) -> Result<Server> {
    // The measures run host tools unless they bring a config of their own (the image ones).
    let runtime = if extra.iter().any(|a| a == "--config") {
        None
    } else {
        Some("host")
    };
    let dir = dir.to_path_buf();
    let mut child = Command::new(tresor)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--slots",
            &slots.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRESOR_LOG", "warn")
        // The bench drives the server from one credential far past any per-user rate.
        .env("TRESOR_REQUESTS_PER_SECOND", "1000000")
        .envs(runtime.map(|r| ("TRESOR_IMAGE_RUNTIME", r)))
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
    let token = std::fs::read_to_string(dir.join("data/bootstrap-admin-token"))?;
    Ok(Server {
        child,
        client: TesClient::with_token(&url, token.trim())?,
        url,
        token: token.trim().to_owned(),
        _dir: None,
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
    bare_bwrap_in(runs, None)
}

/// The same, with an image's root as `/` when given.
fn bare_bwrap_in(runs: usize, image_root: Option<&Path>) -> Result<Duration> {
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
        image_root,
        shared_dirs: &[],
        group: None,
        hold: None,
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

/// The registry scripts/lib/registry-up.sh starts, its access log, and two of its images.
const REGISTRY: &str = "127.0.0.1:5000";
const REGISTRY_LOG: &str = "/var/tmp/tresor-registry/open.log";
const DEBIAN_IMAGE: &str = "lab/debian:12";
const BUSYBOX_IMAGE: &str = "lab/busybox:1";

struct ImageBench {
    cold: Duration,
    skopeo_umoci: Duration,
    warm_p50: Duration,
    bare_p50: Duration,
    concurrent_downloads: usize,
    concurrent_wall: Duration,
}

/// A server whose executors run in images pulled from the local registry.
fn image_server(tresor: &Path, slots: u32) -> Result<Server> {
    start_server_with(tresor, slots, |dir| {
        let config = dir.join("images.toml");
        std::fs::write(
            &config,
            format!("[images]\nruntime = \"oci\"\nplain_http = [\"{REGISTRY}\"]\n"),
        )?;
        Ok(vec!["--config".to_owned(), config.display().to_string()])
    })
}

fn image_task(image: &str, command: &[&str]) -> TesTask {
    let mut t = task(command, 1);
    t.executors[0].image = format!("{REGISTRY}/{image}");
    t
}

async fn run_to_end(client: &TesClient, body: &TesTask, deadline: Instant) -> Result<TesTask> {
    let id = client.create_task(body).await?;
    loop {
        let t = client.get_task(&id, TesView::Basic).await?;
        match t.state {
            Some(TesState::Complete) => return Ok(t),
            Some(s) if s.is_terminal() => bail!("image task ended {s:?}: {:?}", t.logs),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
        if Instant::now() > deadline {
            bail!("image run exceeded --max-seconds");
        }
    }
}

/// The digest of `image`'s only layer, as the registry's manifest says.
fn layer_digest(image: &str) -> Result<String> {
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{REGISTRY}/{image}"),
        ],
    )?;
    let manifest: serde_json::Value = serde_json::from_str(&raw)?;
    manifest["layers"][0]["digest"]
        .as_str()
        .map(str::to_owned)
        .context("the image has no layer")
}

fn downloads_of(repo: &str, digest: &str) -> usize {
    let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
    std::fs::read_to_string(REGISTRY_LOG)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Cold pulls against skopeo + umoci, a warm `true` against bare bubblewrap on the same root,
/// and twenty tasks starting at once on one uncached image.
async fn images(tresor: &Path, args: &Args) -> Result<ImageBench> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut cold = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..args.image_runs {
        // A fresh server is a fresh cache. One task of another image first, so the cold run
        // pays for the pull and unpack, not for the server's first task (its disk template).
        let server = image_server(tresor, 2)?;
        run_to_end(
            &server.client,
            &image_task(BUSYBOX_IMAGE, &["true"]),
            deadline,
        )
        .await?;
        let start = Instant::now();
        run_to_end(
            &server.client,
            &image_task(DEBIAN_IMAGE, &["true"]),
            deadline,
        )
        .await?;
        cold.push(start.elapsed());
        drop(server);

        let dir = tempfile::tempdir()?;
        let layout = format!("oci:{}:12", dir.path().join("layout").display());
        let bundle = dir.path().join("bundle").display().to_string();
        let start = Instant::now();
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{REGISTRY}/{DEBIAN_IMAGE}"),
                &layout,
            ],
        )?;
        let layout_dir = dir.path().join("layout").display().to_string();
        run(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &format!("{layout_dir}:12"),
                &bundle,
            ],
        )?;
        baseline.push(start.elapsed());
    }
    cold.sort();
    baseline.sort();

    // Warm: the image is cached after the first task.
    let server = image_server(tresor, 2)?;
    let body = image_task(BUSYBOX_IMAGE, &["true"]);
    let first = run_to_end(&server.client, &body, deadline).await?;
    let mut samples = Vec::new();
    for _ in 0..args.latency_runs {
        let start = Instant::now();
        run_to_end(&server.client, &body, deadline).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let digest = first
        .logs
        .as_ref()
        .and_then(|l| l.first())
        .and_then(|l| l.metadata.as_ref())
        .and_then(|m| m.get("executor.0.image_digest"))
        .context("no image digest in the task log")?;
    let server_dir = server._dir.as_ref().context("server dir")?.path();
    let rootfs = server_dir
        .join("data/work/.images/images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs");
    let bare = bare_bwrap_in(args.latency_runs, Some(&rootfs))?;
    drop(server);

    // Twenty at once on an uncached image: one download.
    let server = image_server(tresor, 20)?;
    let layer = layer_digest(BUSYBOX_IMAGE)?;
    let repo = BUSYBOX_IMAGE.split(':').next().unwrap_or_default();
    let before = downloads_of(repo, &layer);
    let start = Instant::now();
    let body = image_task(BUSYBOX_IMAGE, &["true"]);
    let mut runs = Vec::new();
    for _ in 0..20 {
        let client = server.client.clone();
        let body = body.clone();
        runs.push(tokio::spawn(async move {
            run_to_end(&client, &body, deadline).await
        }));
    }
    for r in runs {
        r.await??;
    }
    let concurrent_wall = start.elapsed();
    let concurrent_downloads = downloads_of(repo, &layer) - before;
    Ok(ImageBench {
        cold: percentile(&cold, 0.5),
        skopeo_umoci: percentile(&baseline, 0.5),
        warm_p50: percentile(&samples, 0.5),
        bare_p50: bare,
        concurrent_downloads,
        concurrent_wall,
    })
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
    // Random printable secrets of 24 bytes: unlike values sharing a prefix, they give a matcher
    // no common start to skip on.
    let mut seed: u64 = 0x5EED;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let secrets: Vec<SecretValue> = (0..100)
        .map(|_| SecretValue::new((0..24).map(|_| b'!' + (next() % 94) as u8).collect()))
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
    // As task logs are redacted: streamed in 64 KiB chunks, each answered with a new buffer;
    // the baseline copies each chunk into a new buffer the same way. Best of three each.
    let gb = text.len() as f64 / 1e9;
    let (mut copy_secs, mut redact_secs) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        let mut copied = 0usize;
        for chunk in text.chunks(64 * 1024) {
            copied += std::hint::black_box(chunk.to_vec()).len();
        }
        copy_secs = copy_secs.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut stream = redactor.stream();
        let mut redacted = 0usize;
        for chunk in text.chunks(64 * 1024) {
            redacted += std::hint::black_box(stream.push(chunk)).len();
        }
        redacted += stream.finish().len();
        redact_secs = redact_secs.min(start.elapsed().as_secs_f64());
        if redacted >= text.len() || copied != text.len() {
            bail!("redaction changed nothing");
        }
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

/// What the secrets-at-scale run measured.
struct Scale {
    rss_empty_mib: f64,
    rss_full_mib: f64,
    put_p50: Duration,
    put_p99: Duration,
    submit_p50: Duration,
    submit_p99: Duration,
    restart_empty: Duration,
    restart_full: Duration,
}

/// Resident memory of a process, from /proc.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// 1,000 secrets of 64 KiB across 50 workspaces: the server's memory, PUT and submit latency
/// (each submit runs the launch guard over the workspace's values), and a restart (which
/// decrypts every value and rebuilds every redactor), against the same server empty.
async fn secrets_at_scale(tresor: &Path, args: &Args) -> Result<Scale> {
    let dir = tempfile::Builder::new().prefix("tresor-bench-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let started = Instant::now();
    let mut server = start_server_in(tresor, 2, dir.path(), Vec::new())?;
    let restart_empty_first = started.elapsed();
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let rss_empty_mib = rss_mib(server.child.id())?;
    let platform = tresor_client::PlatformClient::new(&server.url, Some(&server.token))?;
    let workspaces: Vec<String> = (0..50).map(|i| format!("scale-{i:02}")).collect();
    for ws in &workspaces {
        platform.create_workspace(ws).await?;
    }
    let mut seed: u64 = 42;
    let mut puts = Vec::with_capacity(args.scale_secrets);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    for i in 0..args.scale_secrets {
        let value: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b'!' + ((seed >> 33) % 94) as u8
            })
            .collect();
        let ws = &workspaces[i % workspaces.len()];
        let start = Instant::now();
        platform
            .put_secret(ws, false, &format!("S{i}"), &value, None)
            .await?;
        puts.push(start.elapsed());
        if Instant::now() > deadline {
            bail!("secrets at scale: {i} puts took longer than --max-seconds");
        }
    }
    settle().await;
    let rss_full_mib = rss_mib(server.child.id())?;
    // Submits, each checked against every value of its workspace (a cold guard on the first).
    let mut submits = Vec::new();
    for (i, ws) in workspaces.iter().cycle().take(200).enumerate() {
        let client = TesClient::for_workspace(&server.url, ws, &server.token)?;
        let mut t = task(&["true"], 1);
        t.name = Some(format!("scale-{i}"));
        let start = Instant::now();
        client.create_task(&t).await?;
        submits.push(start.elapsed());
    }
    drop(server);
    let started = Instant::now();
    server = start_server_in(tresor, 2, dir.path(), Vec::new())?;
    let restart_full = started.elapsed();
    drop(server);
    // The empty baseline's restart, measured the same way.
    let empty = tempfile::Builder::new().prefix("tresor-bench-").tempdir()?;
    std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o711))?;
    drop(start_server_in(tresor, 2, empty.path(), Vec::new())?);
    let started = Instant::now();
    drop(start_server_in(tresor, 2, empty.path(), Vec::new())?);
    let restart_empty = started.elapsed().min(restart_empty_first);
    puts.sort();
    submits.sort();
    Ok(Scale {
        rss_empty_mib,
        rss_full_mib,
        put_p50: percentile(&puts, 0.5),
        put_p99: percentile(&puts, 0.99),
        submit_p50: percentile(&submits, 0.5),
        submit_p99: percentile(&submits, 0.99),
        restart_empty,
        restart_full,
    })
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

    let mut summary = serde_json::Map::new();
    let mut record = |key: &str, value: f64| {
        summary.insert(key.to_owned(), serde_json::json!(value));
    };
    println!("| measure | result | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    if args.runs("creations") {
        let rate = creations(&tresor, &args).await?;
        println!(
            "| task creations/s ({} calls, {} clients, durable) | {rate:.0}/s | - | - | >= 2000/s |",
            args.creations, args.concurrency
        );
        record("creations_per_second", rate);
    }
    if args.runs("latency") {
        let (p50, bare) = latency(&tresor, &args).await?;
        let ratio = p50.as_secs_f64() / bare.as_secs_f64().max(f64::EPSILON);
        println!(
            "| submit->COMPLETE p50, `true` ({} runs) | {:.1} ms | bare bwrap `true` p50 {:.1} ms | {ratio:.2}x | <= 2x |",
            args.latency_runs,
            ms(p50),
            ms(bare)
        );
        record("submit_to_complete_p50_ms", ms(p50));
        record("bare_bwrap_p50_ms", ms(bare));
        record("submit_to_complete_ratio", ratio);
    }
    if args.runs("cancels") {
        let cancel = cancels(&tresor, &args).await?;
        println!(
            "| cancel->CANCELED ({} runs) | p50 {:.1} ms, max {:.1} ms | - | - | <= 1000 ms |",
            cancel.len(),
            ms(percentile(&cancel, 0.5)),
            ms(cancel.last().copied().unwrap_or_default())
        );
        record("cancel_p50_ms", ms(percentile(&cancel, 0.5)));
        record(
            "cancel_max_ms",
            ms(cancel.last().copied().unwrap_or_default()),
        );
    }
    if args.runs("redaction") {
        let (redact_gbs, copy_gbs) = redaction(&args)?;
        println!(
            "| redaction, 100 random 24-byte secrets with their encodings, {} MiB of log text streamed in 64 KiB chunks | {redact_gbs:.2} GB/s | the same chunks copied {copy_gbs:.2} GB/s | {:.2}x of copy | >= 1 GB/s per core |",
            args.redact_mib,
            redact_gbs / copy_gbs
        );
        record("redaction_gb_per_second", redact_gbs);
        record("copy_gb_per_second", copy_gbs);
    }
    if args.runs("secret-delivery") {
        let (with_secrets, without_secrets) = secret_fetch(&tresor, &args).await?;
        println!(
            "| submit->COMPLETE with 10 secrets delivered (p50) | {:.1} ms | same task without secrets {:.1} ms | +{:.1} ms | - |",
            ms(with_secrets),
            ms(without_secrets),
            ms(with_secrets.saturating_sub(without_secrets))
        );
        record("with_10_secrets_p50_ms", ms(with_secrets));
        record("without_secrets_p50_ms", ms(without_secrets));
    }
    if args.runs("storage") {
        let (via_s3, via_file) = storage_paths(&tresor, &args).await?;
        println!(
            "| submit->COMPLETE, 1 MiB in and out through presigned S3 URLs (p50) | {:.1} ms | same through file:// {:.1} ms | +{:.1} ms | - |",
            ms(via_s3),
            ms(via_file),
            ms(via_s3.saturating_sub(via_file))
        );
        record("via_s3_p50_ms", ms(via_s3));
        record("via_file_p50_ms", ms(via_file));
    }
    if args.runs("secrets-at-scale") {
        let scale = secrets_at_scale(&tresor, &args).await?;
        println!(
            "| secrets at scale: RSS with {} secrets of 64 KiB in 50 workspaces | {:.0} MiB | empty server {:.0} MiB | +{:.0} MiB | <= +200 MiB |",
            args.scale_secrets,
            scale.rss_full_mib,
            scale.rss_empty_mib,
            scale.rss_full_mib - scale.rss_empty_mib
        );
        println!(
            "| secrets at scale: PUT p99 / submit p99 (with the guard) | {:.1} ms / {:.1} ms | p50 {:.1} ms / {:.1} ms | - | <= 50 ms each |",
            ms(scale.put_p99),
            ms(scale.submit_p99),
            ms(scale.put_p50),
            ms(scale.submit_p50)
        );
        println!(
            "| secrets at scale: restart to listening | {:.0} ms | empty server {:.0} ms | +{:.0} ms | - |",
            ms(scale.restart_full),
            ms(scale.restart_empty),
            ms(scale.restart_full.saturating_sub(scale.restart_empty))
        );
        record("scale_rss_empty_mib", scale.rss_empty_mib);
        record("scale_rss_full_mib", scale.rss_full_mib);
        record("scale_put_p99_ms", ms(scale.put_p99));
        record("scale_submit_p99_ms", ms(scale.submit_p99));
        record("scale_restart_ms", ms(scale.restart_full));
    }
    if args.runs("images") && args.image_runs > 0 {
        let b = images(&tresor, &args).await?;
        println!(
            "| image: cold pull + unpack of {REGISTRY}/{DEBIAN_IMAGE} (~50 MB, submit->COMPLETE of `true`, p50 of {}) | {:.0} ms | `skopeo copy` + `umoci unpack` {:.0} ms | {:.2}x | <= 1x |",
            args.image_runs,
            ms(b.cold),
            ms(b.skopeo_umoci),
            b.cold.as_secs_f64() / b.skopeo_umoci.as_secs_f64().max(f64::EPSILON)
        );
        println!(
            "| image: warm `true` in {BUSYBOX_IMAGE}, submit->COMPLETE p50 ({} runs) | {:.1} ms | bare bwrap `true` on the same root {:.1} ms | {:.2}x | <= 2x |",
            args.latency_runs,
            ms(b.warm_p50),
            ms(b.bare_p50),
            b.warm_p50.as_secs_f64() / b.bare_p50.as_secs_f64().max(f64::EPSILON)
        );
        println!(
            "| image: 20 tasks at once on an uncached image | {} layer download(s), all done in {:.0} ms | - | - | exactly 1 download |",
            b.concurrent_downloads,
            ms(b.concurrent_wall)
        );
        record("image_cold_ms", ms(b.cold));
        record("image_skopeo_umoci_ms", ms(b.skopeo_umoci));
        record("image_warm_p50_ms", ms(b.warm_p50));
        record("image_bare_bwrap_p50_ms", ms(b.bare_p50));
        record("image_concurrent_downloads", b.concurrent_downloads as f64);
    }
    if args.runs("wes") && args.wes_runs > 0 {
        let b = wes::wes(&tresor, &args).await?;
        let ratio = |ours: Duration, peer: Duration| {
            ours.as_secs_f64() / peer.as_secs_f64().max(f64::EPSILON)
        };
        println!(
            "| WES: trivial 1-step CWL workflow, submit->COMPLETE (p50 of {}) | {:.0} ms | wes-service 5.0 + cwltool {:.0} ms | {:.2}x | <= 0.8x |",
            args.wes_runs,
            ms(b.tresor_one),
            ms(b.peer_one),
            ratio(b.tresor_one, b.peer_one)
        );
        println!(
            "| WES: 5 such runs posted at once, all COMPLETE | {:.0} ms | wes-service {:.0} ms | {:.2}x | <= 0.8x |",
            ms(b.tresor_five),
            ms(b.peer_five),
            ratio(b.tresor_five, b.peer_five)
        );
        println!(
            "| WES: CancelRun -> CANCELED with every job ended | {:.0} ms | - | - | <= 1000 ms |",
            ms(b.cancel)
        );
        record("wes_one_ms", ms(b.tresor_one));
        record("wes_peer_one_ms", ms(b.peer_one));
        record("wes_five_ms", ms(b.tresor_five));
        record("wes_peer_five_ms", ms(b.peer_five));
        println!(
            "| WES: Snakemake, a job's end to the creation of the job waiting for it (p50 of 3) | {:.0} ms | - | - | <= 1000 ms |",
            ms(b.next_job)
        );
        record("wes_cancel_ms", ms(b.cancel));
        match &b.sapporo {
            Some(s) => {
                println!(
                    "| WES: the 1-step run on Sapporo 2.4.0 + cwltool (p50 of {}) | {:.0} ms | Sapporo {:.0} ms | {:.2}x | <= 0.8x |",
                    args.wes_runs,
                    ms(b.tresor_one),
                    ms(s.one),
                    ratio(b.tresor_one, s.one)
                );
                println!(
                    "| WES: 5 runs at once on Sapporo | {:.0} ms | Sapporo {:.0} ms | {:.2}x | <= 0.8x |",
                    ms(b.tresor_five),
                    ms(s.five),
                    ratio(b.tresor_five, s.five)
                );
                let cancel = s
                    .cancel
                    .map_or_else(|| "never (60 s)".to_owned(), |c| format!("{:.0} ms", ms(c)));
                println!(
                    "| WES: CancelRun -> CANCELED, Sapporo | {:.0} ms | Sapporo {cancel} | - | <= 1000 ms |",
                    ms(b.cancel)
                );
                record("wes_sapporo_one_ms", ms(s.one));
                record("wes_sapporo_five_ms", ms(s.five));
                if let Some(c) = s.cancel {
                    record("wes_sapporo_cancel_ms", ms(c));
                }
            }
            None => println!(
                "| WES: Sapporo rows | not measured: no Sapporo venv (scripts/lib/sapporo-up.sh) | - | - | - |"
            ),
        }
        record("wes_next_job_ms", ms(b.next_job));
    }
    if args.runs("slurm") && args.slurm_runs > 0 {
        let (ours, raw, poll) = slurm(&tresor, &args).await?;
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
    if args.runs_soak() {
        let report = soak::soak(&tresor, args.soak_seconds, args.soak_clients).await?;
        for (name, calls, p50, p99, max, errors) in &report.apis {
            println!(
                "| soak, {} clients for {} s: {name} ({calls} calls, {errors} errors) | p99 {:.1} ms | p50 {:.1} ms, max {:.1} ms | - | p99 < 100 ms, 0 errors |",
                report.clients,
                report.seconds,
                ms(*p99),
                ms(*p50),
                ms(*max)
            );
        }
        println!(
            "| soak: server resident memory, warm -> end | {:+.1}% | {:.1} MiB -> {:.1} MiB (peak {:.1}) | - | < 10% |",
            report.rss_growth() * 100.0,
            report.rss_warm_kib as f64 / 1024.0,
            report.rss_end_kib as f64 / 1024.0,
            report.rss_peak_kib as f64 / 1024.0
        );
        record("soak_errors", report.errors as f64);
        record("soak_worst_p99_ms", ms(report.worst_p99()));
        record("soak_rss_growth", report.rss_growth());
        if let Some(doc) = &args.doc {
            let command = format!(
                "target/release/tresor-bench --only soak --soak-seconds {} --soak-clients {} --doc {}",
                report.seconds,
                report.clients,
                doc.display()
            );
            std::fs::write(doc, report.markdown(&command))
                .with_context(|| format!("writing {}", doc.display()))?;
        }
        if report.errors > 0 {
            bail!(
                "the soak saw {} errors; the first: {}",
                report.errors,
                report.first_error.unwrap_or_default()
            );
        }
    }
    let summary = serde_json::Value::Object(summary);
    println!("{summary}");
    Ok(())
}

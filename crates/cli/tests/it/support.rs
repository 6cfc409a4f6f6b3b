//! The test server and helpers every test module shares.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpListener;
use tresor_api_types::tes::{TesExecutor, TesState, TesTask, TesView};
use tresor_client::{PlatformClient, TesClient};
use tresor_executors::{LocalSettings, SandboxSettings};
use tresor_server::AppSettings;
use tresor_service::ServiceSettings;
use tresor_store::{Durability, StoreSettings};

/// The `tresor` binary under test; the server starts it as `tresor worker`.
pub const TRESOR: &str = env!("CARGO_BIN_EXE_tresor");

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A temporary directory the sandbox user can traverse (task directories live below it).
pub fn traversable_tempdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tresor-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

pub fn bwrap() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
        .expect("bubblewrap is required: run scripts/test.sh, which installs it")
}

/// S3 settings for an S3-compatible server at `endpoint`, default bucket `tresor`.
pub fn s3_settings(endpoint: &str, secret: &str) -> tresor_service::S3Settings {
    tresor_service::S3Settings {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        access_key_id: S3_ACCESS_KEY.to_owned(),
        secret_access_key: tresor_crypto::SecretValue::new(secret.as_bytes().to_vec()),
        allow_http: true,
        default_bucket: Some("tresor".to_owned()),
        prefix_template: "workspaces/{workspace}/".to_owned(),
        presign_ttl: Duration::from_secs(300),
    }
}

pub const S3_ACCESS_KEY: &str = "AKIDTRESORTEST";

/// Host ids of its own for each in-process test server (64 from 2100000000 on, away from the
/// default range that `tresor serve` child processes use), so tasks of servers running side by
/// side never share a uid.
pub fn next_task_ids() -> std::ops::RangeInclusive<u32> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let first = 2_100_000_000 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 64;
    first..=first + 63
}

/// Host gids of its own for each in-process test server's workspace directories (1024 from
/// 2110000000 on: the authorization matrix starts a run in each of its hundreds of workspaces).
pub fn next_workspace_gids() -> std::ops::RangeInclusive<u32> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let first = 2_110_000_000 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 1024;
    first..=first + 1023
}

/// The settings a test server runs with; `dir` holds its data and storage.
pub fn settings_for(dir: &Path) -> AppSettings {
    let data = dir.join("data");
    let storage = dir.join("storage");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir_all(&storage).unwrap();
    AppSettings {
        services: tresor_service::app::Settings {
            store: StoreSettings {
                path: data.join("tresor.db"),
                durability: Durability::Normal,
                audit_key_file: data.join("audit-key"),
            },
            local: LocalSettings {
                work_root: data.join("work"),
                worker_program: PathBuf::from(TRESOR),
                sandbox: SandboxSettings {
                    bwrap: bwrap(),
                    run_as: is_root().then_some((65534, 65534)),
                },
                allowed_dirs: vec![std::fs::canonicalize(&storage).unwrap()],
                log_tail_bytes: 64 * 1024,
                slots: 4,
                allow_network: false,
                // The tests' http fixtures listen on loopback.
                allow_private_http_inputs: true,
                // Egress is the operator's choice; tests that use it turn it on.
                allow_egress: false,
                allow_private_egress: false,
                runtime_dir: PathBuf::from("/dev/shm"),
                limits: tresor_executors::LimitSettings::default(),
                task_ids: is_root().then(next_task_ids),
                workspace_gids: is_root().then(next_workspace_gids),
            },
            tasks: ServiceSettings {
                default_page_size: 256,
                max_page_size: 2047,
                organization_name: "tresor tests".to_owned(),
                organization_url: "https://tresor.invalid".to_owned(),
                callback_url: String::new(),
                task_lease: std::time::Duration::from_secs(15),
            },
            bootstrap_token_file: data.join("bootstrap-admin-token"),
            oidc_issuers: Vec::new(),
            kek_file: data.join("kek"),
            secret_retention: std::time::Duration::from_secs(30 * 24 * 3600),
            log_redactor: Default::default(),
            secret_limits: Default::default(),
            identity: tresor_service::IdentitySettings {
                issuer: String::new(),
                token_ttl: Duration::from_secs(600),
                audiences: vec!["tresor".to_owned(), "vault".to_owned()],
                rotation_period: Duration::from_secs(30 * 86_400),
                sdk_env: vec![
                    "AWS_WEB_IDENTITY_TOKEN_FILE".to_owned(),
                    "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
                ],
            },
            s3: None,
            outbound: None,
            slurm: Vec::new(),
            // Most tests run host tools (the venv's Python, say); `images.rs` runs images.
            images: tresor_service::ImageSettings {
                runtime: tresor_service::ImageRuntime::Host,
                ..Default::default()
            },
            workflows: Default::default(),
        },
        max_body_bytes: 4 * 1024 * 1024,
        limits: Default::default(),
    }
}

/// The production server, in-process, on a free loopback port. Dropping it stops the server.
pub struct TestServer {
    pub url: String,
    /// TES in the bootstrap admin's personal workspace.
    pub client: TesClient,
    /// The platform API as the bootstrap admin.
    pub admin: PlatformClient,
    pub admin_token: String,
    /// The bootstrap admin's personal workspace's `file://` directory (canonical), inside the
    /// first allowed dir. Tresor makes it when the workspace's first task starts (`make_storage`
    /// runs one), and refuses one made by hand.
    pub storage: PathBuf,
    pub data: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut AppSettings)) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = traversable_tempdir();
        let mut settings = settings_for(dir.path());
        adjust(&mut settings);
        let storage_area = settings.services.local.allowed_dirs.first().cloned();
        let data = dir.path().join("data");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        settings.services.tasks.callback_url = url.clone();
        let app = tresor_server::App::build(settings).await.unwrap();
        let token_file = app
            .bootstrap_token_file
            .clone()
            .expect("a fresh server bootstraps an admin");
        let admin_token = std::fs::read_to_string(token_file)
            .unwrap()
            .trim()
            .to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tresor_server::serve(listener, app, async {
            let _ = rx.await;
        }));
        let admin = PlatformClient::new(&url, Some(&admin_token)).unwrap();
        // The admin's personal workspace's own directory inside the storage area.
        let storage = match storage_area {
            Some(area) => area.join(admin.me().await.unwrap().personal_workspace),
            None => PathBuf::new(),
        };
        TestServer {
            client: TesClient::with_token(&url, &admin_token).unwrap(),
            admin,
            admin_token,
            url,
            storage,
            data,
            shutdown: Some(tx),
            dir,
        }
    }

    /// Creates a local user and a token for them.
    pub async fn user(&self, name: &str) -> TestUser {
        let user = self.admin.create_user(name).await.unwrap();
        let token = self
            .admin
            .create_token_for(&user.id, "test")
            .await
            .unwrap()
            .token;
        TestUser {
            id: user.id,
            platform: PlatformClient::new(&self.url, Some(&token)).unwrap(),
            tes: TesClient::with_token(&self.url, &token).unwrap(),
            url: self.url.clone(),
            token,
        }
    }

    /// A workspace's default `file://` directory; tresor makes it when the workspace's first
    /// task starts.
    pub fn storage_of(&self, workspace: &str) -> PathBuf {
        self.storage.parent().unwrap().join(workspace)
    }

    /// Has tresor make a workspace's default `file://` directory `dir` by running a task in it
    /// through `tes` (a directory made by hand is refused: tresor did not make it), so that a
    /// test can put inputs there. A server that is not root prepares no directory, and then the
    /// test makes it.
    pub async fn make_storage(&self, tes: &TesClient, dir: &Path) {
        let done = self.run_in(tes, &sh_task("true")).await;
        assert_eq!(
            done.state,
            Some(TesState::Complete),
            "{}",
            system_logs(&done)
        );
        std::fs::create_dir_all(dir).unwrap();
    }

    /// The server's database, opened beside it (with its audit key), for checks the API does not offer.
    pub async fn store(&self) -> tresor_store::Store {
        tresor_store::Store::connect(&StoreSettings {
            path: self.data.join("tresor.db"),
            durability: Durability::Normal,
            audit_key_file: self.data.join("audit-key"),
        })
        .await
        .unwrap()
    }

    /// A `file://` URL inside the bootstrap admin's personal workspace's directory.
    pub fn storage_url(&self, rel: &str) -> String {
        format!("file://{}/{rel}", self.storage.display())
    }

    /// Submits a task through `client` and waits for it to end.
    pub async fn run_in(&self, client: &TesClient, task: &TesTask) -> TesTask {
        let id = client.create_task(task).await.unwrap();
        wait_terminal(client, &id).await
    }

    /// Submits a task and waits for it to end.
    pub async fn run(&self, task: &TesTask) -> TesTask {
        let id = self.client.create_task(task).await.unwrap();
        wait_terminal(&self.client, &id).await
    }
}

/// A user of a test server with their own token.
pub struct TestUser {
    pub id: String,
    pub token: String,
    pub platform: PlatformClient,
    /// TES in their personal workspace.
    pub tes: TesClient,
    url: String,
}

impl TestUser {
    /// TES in a named workspace.
    pub fn tes_in(&self, workspace: &str) -> TesClient {
        TesClient::for_workspace(&self.url, workspace, &self.token).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Its tasks' workers outlive a server by design; a test's must not outlive the test.
        tresor_executors::local::kill_workers_under(&self.data.join("work"));
    }
}

/// A task with one executor running `sh -c script`.
pub fn sh_task(script: &str) -> TesTask {
    TesTask {
        name: Some("sh".to_owned()),
        executors: vec![executor(&["sh", "-c", script])],
        ..TesTask::default()
    }
}

pub fn executor(command: &[&str]) -> TesExecutor {
    TesExecutor {
        image: "debian:12".to_owned(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        ..TesExecutor::default()
    }
}

/// Polls until the task is in `want` (or any terminal state if `want` is terminal), up to 60 s.
pub async fn wait_state(client: &TesClient, id: &str, want: TesState) -> TesTask {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = client.get_task(id, TesView::Full).await.unwrap();
        let state = task.state.unwrap();
        if state == want || (state.is_terminal() && want.is_terminal()) {
            return task;
        }
        assert!(
            !state.is_terminal(),
            "task {id} ended in {state:?} while waiting for {want:?}: {task:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "task {id} still {state:?} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_terminal(client: &TesClient, id: &str) -> TesTask {
    wait_state(client, id, TesState::Complete).await
}

/// The system logs of a task's latest attempt, joined.
pub fn system_logs(task: &TesTask) -> String {
    task.logs
        .as_ref()
        .and_then(|l| l.last())
        .and_then(|l| l.system_logs.clone())
        .unwrap_or_default()
        .join("\n")
}

/// The stdout of executor `i` of the latest attempt.
pub fn stdout(task: &TesTask, i: usize) -> String {
    task.logs.as_ref().unwrap().last().unwrap().logs[i]
        .stdout
        .clone()
        .unwrap_or_default()
}

/// Processes on this host whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    found
}

/// Entries left in a directory (empty when it does not exist).
/// What a work root holds of tasks: every entry but the executor's own (its host-id claims and
/// its disk templates), which outlive every task.
pub fn task_entries(work_root: &Path) -> Vec<String> {
    entries(work_root)
        .into_iter()
        .filter(|name| name != ".task-ids" && name != ".disk-templates")
        .collect()
}

/// Waits (up to 5 s) until the work root holds no task's directory: a task's result is
/// reported before its worker takes down its disk and exits, and the server removes the
/// directory when the worker has exited.
pub async fn wait_for_no_task_dirs(work_root: &Path) -> Vec<String> {
    for _ in 0..500 {
        if task_entries(work_root).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task_entries(work_root)
}

pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The npm `oidc-provider` (tests/oidc-provider/server.mjs) on a free port; killed on drop.
pub struct RealProvider {
    child: std::process::Child,
    pub issuer: String,
}

impl Drop for RealProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_real_provider() -> RealProvider {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    start_real_provider_on(port)
}

/// `start_real_provider` on a given port (to bring a stopped provider back where it was).
pub fn start_real_provider_on(port: u16) -> RealProvider {
    use std::io::{BufRead, BufReader};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run scripts/test.sh (it runs npm ci in {})",
        dir.display()
    );
    let mut child = std::process::Command::new("node")
        .arg("server.mjs")
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node is required: Node 20 is part of the machine image");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let issuer = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "oidc-provider exited before listening"
        );
        if let Some(issuer) = line.trim().strip_prefix("oidc-provider listening on ") {
            break issuer.to_owned();
        }
    };
    RealProvider { child, issuer }
}

/// The bootstrap admin's access token of a server process whose data is in `dir/data`.
pub fn bootstrap_admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/bootstrap-admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A config file in `dir` with the SLURM compute environment `hpc` (work dir `dir/slurm-work`,
/// polled every half second), for servers run as processes.
pub fn slurm_config(dir: &Path) -> PathBuf {
    let config = dir.join("tresor.toml");
    std::fs::write(
        &config,
        format!(
            "[compute_envs.hpc]\ntype = \"slurm\"\npartition = \"debug\"\nwork_dir = \"{}\"\npoll_interval_seconds = 0.5\n",
            dir.join("slurm-work").display()
        ),
    )
    .unwrap();
    config
}

/// An access token from the test provider by the OAuth2 client-credentials grant, as a pipeline
/// service account (`tes-service`) logs in.
pub async fn client_credentials_token(issuer: &str) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("tes-service", Some("tes-service-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=tes%3Aread%20tes%3Awrite")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

pub const S3_SECRET: &str = "tresor-test-s3-secret-key";

/// A real S3 server (s3s-fs, in-process): SigV4 and presigned signatures are checked, expiry
/// included. Objects live as files under `root/<bucket>/<key>`; bucket `tresor` exists.
pub struct S3Server {
    pub endpoint: String,
    pub root: TempDir,
    addr: std::net::SocketAddr,
    /// The accept loop and every connection, so `down` ends them all.
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.down();
    }
}

impl S3Server {
    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("tresor")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = S3Server {
            endpoint: format!("http://{addr}"),
            root,
            addr,
            tasks: Default::default(),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let mut builder =
            s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(self.root.path()).unwrap());
        builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET));
        let service = builder.build();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                let connection = tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
                });
                tasks.lock().unwrap().push(connection);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// The server goes away: its port refuses connections and open ones are closed.
    pub fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// The server comes back at the same address, with the same objects.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Settings for a tresor server that uses this S3 server.
    pub fn settings(&self) -> tresor_service::S3Settings {
        s3_settings(&self.endpoint, S3_SECRET)
    }

    /// Uploads an object over the S3 protocol, with the server's own credentials.
    pub async fn put(&self, key: &str, body: &[u8]) {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name("tresor")
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET)
            .build()
            .unwrap();
        store
            .put(&object_store::path::Path::from(key), body.to_vec().into())
            .await
            .unwrap();
    }

    /// An object's bytes, read from the server's disk.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join("tresor").join(key)).ok()
    }
}

/// Starts the single-node SLURM cluster of `scripts/lib/slurm-up.sh` (idempotent: returns at
/// once when it is up), once per test process.
pub fn ensure_slurm() {
    static UP: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    UP.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/slurm-up.sh");
        let output = std::process::Command::new("bash")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "SLURM did not start (scripts/lib/slurm-up.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// A compute environment `hpc` on the test cluster, its shared work dir under `dir`.
pub fn slurm_settings(dir: &Path) -> tresor_executors::SlurmSettings {
    ensure_slurm();
    tresor_executors::SlurmSettings {
        name: "hpc".to_owned(),
        partition: Some("debug".to_owned()),
        account: None,
        qos: None,
        extra_args: Vec::new(),
        worker_program: PathBuf::from(TRESOR),
        work_dir: dir.join("slurm-work"),
        runtime_dir: PathBuf::from("/dev/shm"),
        server_url: None,
        poll_interval: Duration::from_millis(500),
        bootstrap_ttl: Duration::from_secs(120),
        max_jobs: 100,
        bin_dir: None,
        image_cache: None,
    }
}

/// Asserts the task ended COMPLETE, showing its system logs if not.
#[track_caller]
pub fn assert_complete(done: &TesTask) {
    assert_eq!(
        done.state,
        Some(TesState::Complete),
        "{}",
        system_logs(done)
    );
}

/// Asserts the task ended SYSTEM_ERROR with `reason` in its system logs.
#[track_caller]
pub fn assert_system_error(done: &TesTask, reason: &str) {
    let logs = system_logs(done);
    assert_eq!(done.state, Some(TesState::SystemError), "{logs}");
    assert!(logs.contains(reason), "{reason:?} not in {logs}");
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
pub fn command_output(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file under `root` (recursively) whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

//! Crash recovery with a real `kill -9` of a real `tresor serve` process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tresor_api_types::tes::{TesOutput, TesState, TesTask, TesView};
use tresor_client::TesClient;

use crate::support::*;

/// `tresor serve` as a child process on a free port.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) client: TesClient,
    url: String,
}

fn spawn_server(dir: &Path) -> ServerProcess {
    spawn_server_with(dir, None)
}

/// A loopback address free now, for a server that must come back at the same one.
pub(crate) fn free_listen_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// `spawn_server_with` on a fixed address, so a restarted server is where its workers left it.
pub(crate) fn spawn_server_at(dir: &Path, config: Option<&Path>, listen: &str) -> ServerProcess {
    spawn_server_listening(dir, config, listen)
}

/// `tresor serve` logging at TRACE into `dir/server.log`, with an optional config file.
pub(crate) fn spawn_server_with(dir: &Path, config: Option<&Path>) -> ServerProcess {
    spawn_server_listening(dir, config, "127.0.0.1:0")
}

fn spawn_server_listening(dir: &Path, config: Option<&Path>, listen: &str) -> ServerProcess {
    spawn_server_command(Command::new(TRESOR), dir, config, listen)
}

/// `spawn_server_at` with extra environment variables for the server.
pub(crate) fn spawn_server_env(dir: &Path, listen: &str, env: &[(&str, &str)]) -> ServerProcess {
    spawn_server_command_env(Command::new(TRESOR), dir, None, listen, env)
}

/// `tresor serve` (the binary `program`) as the unprivileged host user `uid`/`gid` through
/// setpriv, without supplementary groups or capabilities; `dir/data` and `dir/storage` must be
/// that user's.
pub(crate) fn spawn_server_as(dir: &Path, (uid, gid): (u32, u32), program: &Path) -> ServerProcess {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--inh-caps=-all", "--"])
        .arg(program);
    spawn_server_command(command, dir, None, "127.0.0.1:0")
}

/// Runs `command` (which starts the `tresor` binary) as `tresor serve` with `dir`'s data and
/// storage directories.
fn spawn_server_command(
    command: Command,
    dir: &Path,
    config: Option<&Path>,
    listen: &str,
) -> ServerProcess {
    spawn_server_command_env(command, dir, config, listen, &[])
}

fn spawn_server_command_env(
    mut command: Command,
    dir: &Path,
    config: Option<&Path>,
    listen: &str,
    env: &[(&str, &str)],
) -> ServerProcess {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let mut child = command
        .args(["serve", "--listen", listen, "--slots", "2"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--allowed-dir")
        .arg(&storage)
        .args(config.iter().flat_map(|c| [Path::new("--config"), c]))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRESOR_LOG", "trace")
        // These tests run host tools; images.rs runs images.
        .env("TRESOR_IMAGE_RUNTIME", "host")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = listening_url(&mut child, dir);
    let token = std::fs::read_to_string(dir.join("data/bootstrap-admin-token")).unwrap();
    ServerProcess {
        child,
        client: TesClient::with_token(&url, token.trim()).unwrap(),
        url,
    }
}

/// Reads the server's stdout up to its "listening" line.
fn listening_url(child: &mut Child, dir: &Path) -> String {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!(
                "the server exited; it printed {seen:?}; see {}",
                dir.join("server.log").display()
            );
        }
        if let Some(url) = line.trim().strip_prefix("tresor listening on ") {
            return url.to_owned();
        }
        seen.push(line);
    }
}

impl ServerProcess {
    pub(crate) fn client_url(&self) -> String {
        self.url.clone()
    }

    /// Sends SIGTERM and waits up to `within` for the server to exit; its exit status.
    pub(crate) fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The bootstrap admin's personal workspace's `file://` directory under `dir/storage`; tresor
/// makes it when the workspace's first task starts.
pub(crate) fn personal_storage(server: &ServerProcess, dir: &Path) -> PathBuf {
    let token = std::fs::read_to_string(dir.join("data/bootstrap-admin-token")).unwrap();
    let url = server.url.clone();
    // The callers are sync; ask the running server on a thread of its own.
    let personal = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tresor_client::PlatformClient::new(&url, Some(token.trim()))
                    .unwrap()
                    .me()
                    .await
                    .unwrap()
                    .personal_workspace
            })
    })
    .join()
    .unwrap();
    std::fs::canonicalize(dir.join("storage"))
        .unwrap()
        .join(personal)
}

pub(crate) fn storage_url(storage: &Path, rel: &str) -> String {
    format!("file://{}/{rel}", storage.display())
}

#[tokio::test]
async fn kill_9_loses_no_accepted_task_and_reattaches_running_work() {
    let dir = traversable_tempdir();
    let mut first = spawn_server(dir.path());
    let storage = personal_storage(&first, dir.path());

    // One task that finishes while the server is down, one that outlives the restart.
    let mut short = sh_task("sleep 0.3; echo short > /data/out.txt");
    short.outputs = Some(vec![TesOutput {
        path: "/data/out.txt".into(),
        url: storage_url(&storage, "short.txt"),
        ..Default::default()
    }]);
    let mut long = sh_task("sleep 4; echo long > /data/out.txt");
    long.outputs = Some(vec![TesOutput {
        path: "/data/out.txt".into(),
        url: storage_url(&storage, "long.txt"),
        ..Default::default()
    }]);
    let short_id = first.client.create_task(&short).await.unwrap();
    let long_id = first.client.create_task(&long).await.unwrap();
    wait_state(&first.client, &short_id, TesState::Running).await;
    wait_state(&first.client, &long_id, TesState::Running).await;

    // Submit a burst and kill the server in the middle of it.
    let mut submitters = Vec::new();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..4 {
        let client = first.client.clone();
        let answered = answered.clone();
        submitters.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for _ in 0..200 {
                match client.create_task(&sh_task("true")).await {
                    Ok(id) => {
                        accepted.push(id);
                        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            accepted
        }));
    }
    // Killed mid-stream: once some creates were answered (however busy the machine is), while
    // the rest are still being sent.
    wait_until("some creates were answered", || {
        answered.load(std::sync::atomic::Ordering::SeqCst) >= 20
    })
    .await;
    first.kill_9();
    let mut accepted = Vec::new();
    for s in submitters {
        accepted.extend(s.await.unwrap());
    }
    assert!(
        !accepted.is_empty(),
        "some creates should have been answered before the kill"
    );

    // The short task's worker finishes on its own while no server runs.
    wait_until("the orphaned short worker finished", || {
        processes_with(&short_id).is_empty()
    })
    .await;
    assert!(
        !processes_with(&long_id).is_empty(),
        "the long worker must outlive the server"
    );

    let second = spawn_server(dir.path());
    for id in &accepted {
        let task = wait_terminal(&second.client, id).await;
        assert_eq!(
            task.state,
            Some(TesState::Complete),
            "accepted task {id} after restart: {task:#?}"
        );
    }
    let short_done = wait_terminal(&second.client, &short_id).await;
    assert_eq!(
        short_done.state,
        Some(TesState::Complete),
        "{short_done:#?}"
    );
    let long_done = wait_terminal(&second.client, &long_id).await;
    assert_eq!(long_done.state, Some(TesState::Complete), "{long_done:#?}");
    assert_eq!(
        std::fs::read_to_string(storage.join("short.txt")).unwrap(),
        "short\n"
    );
    assert_eq!(
        std::fs::read_to_string(storage.join("long.txt")).unwrap(),
        "long\n"
    );

    let work = dir.path().join("data/work");
    wait_until("every task directory is removed", || {
        task_entries(&work).is_empty()
    })
    .await;
    assert!(
        processes_with(&work.display().to_string()).is_empty(),
        "no worker may be left"
    );
}

#[tokio::test]
async fn a_worker_gone_with_the_server_becomes_a_system_error_with_the_reason() {
    let dir = traversable_tempdir();
    let mut first = spawn_server(dir.path());
    let id = first
        .client
        .create_task(&sh_task("sleep 60"))
        .await
        .unwrap();
    wait_state(&first.client, &id, TesState::Running).await;
    first.kill_9();

    // Kill the worker's whole process group too, as a node reboot would.
    let worker: Vec<String> = processes_with(&format!(
        "--task-dir {}",
        dir.path().join("data/work").join(&id).display()
    ));
    assert_eq!(worker.len(), 1, "{worker:?}");
    let pid = worker[0].split(':').next().unwrap().to_owned();
    let status = Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the task's processes are gone", || {
        processes_with(&id).is_empty()
    })
    .await;

    let second = spawn_server(dir.path());
    let task = second.client.get_task(&id, TesView::Full).await.unwrap();
    assert_eq!(task.state, Some(TesState::SystemError), "{task:#?}");
    assert!(
        system_logs(&task).contains("the worker stopped while the server was down"),
        "{}",
        system_logs(&task)
    );
    assert!(task_entries(&dir.path().join("data/work")).is_empty());
}

#[test]
fn a_bad_configuration_reports_every_problem_and_exits_non_zero() {
    let dir = traversable_tempdir();
    let output = Command::new(TRESOR)
        .args(["serve", "--listen", "0.0.0.0:9"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(PathBuf::from("/nonexistent/tresor.toml"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRESOR_SLOTZ", "4")
        .env("TRESOR_DURABILITY", "sometimes")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "/nonexistent/tresor.toml: cannot read",
        "TRESOR_SLOTZ: unknown environment variable",
        "durability (from TRESOR_DURABILITY)",
        "listen (from --listen): 0.0.0.0:9 is not a loopback address; tresor speaks plain HTTP",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn no_log_line_of_the_server_ever_holds_a_secret_even_at_trace_level() {
    use crate::secrets::{CANARY, canary_finder};
    let dir = traversable_tempdir();
    let server = spawn_server(dir.path());
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-admin-token")).unwrap();
    let url = server.client_url();
    let admin = tresor_client::PlatformClient::new(&url, Some(token.trim())).unwrap();
    let me = admin.me().await.unwrap();
    admin
        .put_secret(&me.personal_workspace, false, "A", CANARY, None)
        .await
        .unwrap();
    admin
        .put_secret(&me.personal_workspace, false, "A", CANARY, Some(1))
        .await
        .unwrap();
    let _ = admin
        .put_secret(&me.personal_workspace, false, "A", CANARY, Some(1))
        .await
        .unwrap_err();
    let mut task =
        sh_task(r#"cat "$TRESOR_SECRETS_DIR/A"; cat "$TRESOR_SECRETS_DIR/A" >&2; exit 2"#);
    task.tags = Some([("tresor.secrets.env".to_owned(), "A".to_owned())].into());
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_eq!(done.state, Some(TesState::ExecutorError));
    let mut pasted = sh_task("true");
    pasted.executors[0].command = vec!["echo".into(), String::from_utf8_lossy(CANARY).into_owned()];
    assert!(server.client.create_task(&pasted).await.is_err());
    drop(server);
    let log = std::fs::read(dir.path().join("server.log")).unwrap();
    assert!(
        log.len() > 10_000,
        "trace logging was on ({} bytes)",
        log.len()
    );
    assert!(
        !canary_finder().finds_in(&log),
        "the server log holds the secret"
    );
    let work = dir.path().join("data");
    assert_eq!(
        crate::secrets::files_with_canary(&work),
        Vec::<String>::new()
    );
}

/// Signing keys are sealed under the KEK like secrets: after `rotate-kek` retires the old KEK
/// and the server restarts (so nothing is cached), the signing key still decrypts and tasks
/// still get tokens, and the JWKS still publishes the same key.
#[tokio::test]
async fn signing_keys_survive_a_kek_rotation_and_a_restart() {
    let dir = traversable_tempdir();
    let mut first = spawn_server(dir.path());
    let jwks = |url: String| async move {
        reqwest::get(format!("{url}/.well-known/jwks.json"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let before = jwks(first.client_url()).await;
    let rotate = Command::new(TRESOR)
        .args(["admin", "rotate-kek", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{rotate:?}");
    first.kill_9();
    let second = spawn_server(dir.path());
    assert_eq!(jwks(second.client_url()).await, before);
    let storage = personal_storage(&second, dir.path());
    let task = TesTask {
        outputs: Some(vec![TesOutput {
            url: storage_url(&storage, "token"),
            path: "/out/token".to_owned(),
            ..TesOutput::default()
        }]),
        ..sh_task(r#"mkdir -p /out && cp "$TRESOR_IDENTITY_TOKEN_FILE" /out/token"#)
    };
    let id = second.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&second.client, &id).await;
    assert_complete(&done);
    let token = std::fs::read_to_string(storage.join("token")).unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], before["keys"][0]["kid"]);
}

/// The worker session is in the store: after a `kill -9` of the server and a restart, a
/// re-attached worker keeps renewing its task's identity token.
#[tokio::test]
async fn a_reattached_worker_keeps_renewing_its_token_after_a_restart() {
    let dir = traversable_tempdir();
    let config = dir.path().join("tresor.toml");
    std::fs::write(&config, "[identity]\ntoken_ttl_seconds = 6\n").unwrap();
    let listen = free_listen_address();
    let mut first = spawn_server_at(dir.path(), Some(&config), &listen);
    let storage = personal_storage(&first, dir.path());
    let task = TesTask {
        outputs: Some(vec![TesOutput {
            url: storage_url(&storage, "tokens"),
            path: "/out".to_owned(),
            file_type: Some(tresor_api_types::tes::TesFileType::Directory),
            ..TesOutput::default()
        }]),
        ..sh_task(
            r#"cp "$TRESOR_IDENTITY_TOKEN_FILE" /out/t1; sleep 10; cp "$TRESOR_IDENTITY_TOKEN_FILE" /out/t2"#,
        )
    };
    let id = first.client.create_task(&task).await.unwrap();
    wait_state(&first.client, &id, TesState::Running).await;
    first.kill_9();
    let second = spawn_server_at(dir.path(), Some(&config), &listen);
    let done = wait_terminal(&second.client, &id).await;
    assert_complete(&done);
    let claims = |name: &str| -> serde_json::Value {
        let token = std::fs::read_to_string(storage.join("tokens").join(name)).unwrap();
        serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.trim().split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let (t1, t2) = (claims("t1"), claims("t2"));
    assert!(
        // The first renewal is due 4 s after the start, well after the kill: any renewal at
        // all came from the restarted server.
        t2["exp"].as_i64().unwrap() > t1["exp"].as_i64().unwrap(),
        "renewed after the restart: {t1} then {t2}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slurm_jobs_survive_a_kill_9_of_the_server_none_lost_none_duplicated() {
    ensure_slurm();
    let dir = traversable_tempdir();
    let config = slurm_config(dir.path());
    let listen = free_listen_address();
    let mut first = spawn_server_at(dir.path(), Some(&config), &listen);
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-admin-token")).unwrap();
    let admin = tresor_client::PlatformClient::new(&first.url, Some(token.trim())).unwrap();
    admin.create_workspace("crashy").await.unwrap();
    admin.set_compute_env("crashy", "hpc").await.unwrap();
    let tes = TesClient::for_workspace(&first.url, "crashy", token.trim()).unwrap();
    // One ends while the server is down, one runs across the restart, one is still queued in
    // SLURM or about to start.
    let scripts = ["sleep 2; echo a", "sleep 8; echo b", "echo c"];
    let mut ids = Vec::new();
    for script in scripts {
        ids.push(tes.create_task(&sh_task(script)).await.unwrap());
    }
    wait_state(&tes, &ids[1], TesState::Running).await;
    first.kill_9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = spawn_server_at(dir.path(), Some(&config), &listen);
    let tes = TesClient::for_workspace(&second.url, "crashy", token.trim()).unwrap();
    for (id, want) in ids.iter().zip(["a\n", "b\n", "c\n"]) {
        let done = wait_terminal(&tes, id).await;
        assert_complete(&done);
        assert_eq!(stdout(&done, 0), want);
        let jobs = command_output(
            "squeue",
            &[
                "-h",
                "-t",
                "all",
                "--name",
                &format!("tresor-{id}"),
                "-o",
                "%i",
            ],
        );
        assert_eq!(jobs.lines().count(), 1, "exactly one job for {id}: {jobs}");
    }
    wait_until("the shared work dir is empty", || {
        std::fs::read_dir(dir.path().join("slurm-work"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    })
    .await;
}

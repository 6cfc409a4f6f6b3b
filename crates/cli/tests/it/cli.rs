//! The `tresor` command line against a real server: login, workspaces, members, tokens and tasks.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::*;

/// Runs `tresor ARGS` with HOME pointing at `home`, optionally feeding `stdin`; returns stdout.
fn tresor(
    home: &std::path::Path,
    url: &str,
    args: &[&str],
    stdin: Option<&str>,
    token: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new(TRESOR);
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("TRESOR_URL", url)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        cmd.env("TRESOR_TOKEN", token);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn the_cli_manages_workspaces_members_tokens_and_tasks() {
    let server = TestServer::start().await;
    let bob = server.user("bob").await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_owned();
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    let bob_id = bob.id.clone();
    tokio::task::spawn_blocking(move || {
        let h = home_path.as_path();
        // login reads the token from standard input, never from argv, and stores it 0600.
        let (ok, out, err) = tresor(h, &url, &["login"], Some(&admin), None);
        assert!(ok, "{err}");
        assert!(out.contains("as admin"), "{out}");
        let creds = h.join(".config/tresor/credentials.json");
        assert_eq!(
            std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let (ok, out, err) = tresor(
            h,
            &url,
            &["workspace", "create", "genomics", "--format", "json"],
            None,
            None,
        );
        assert!(ok, "{err}");
        assert_eq!(json(&out)["role"], "owner");
        let (ok, out, _) = tresor(
            h,
            &url,
            &["workspace", "list", "--format", "json"],
            None,
            None,
        );
        assert!(ok);
        assert!(
            json(&out)
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == "genomics")
        );

        let (ok, _, err) = tresor(
            h,
            &url,
            &["member", "add", "genomics", &bob_id, "launch"],
            None,
            None,
        );
        assert!(ok, "{err}");
        let (ok, out, _) = tresor(
            h,
            &url,
            &["member", "list", "genomics", "--format", "json"],
            None,
            None,
        );
        assert!(ok);
        assert_eq!(json(&out).as_array().unwrap().len(), 2);

        let task = r#"{"name":"cli","executors":[{"image":"x","command":["sleep","30"]}]}"#;
        let (ok, out, err) = tresor(
            h,
            &url,
            &[
                "task",
                "submit",
                "-",
                "--workspace",
                "genomics",
                "--format",
                "json",
            ],
            Some(task),
            None,
        );
        assert!(ok, "{err}");
        let id = json(&out)["id"].as_str().unwrap().to_owned();
        let (ok, out, _) = tresor(
            h,
            &url,
            &["task", "list", "-w", "genomics", "--format", "json"],
            None,
            None,
        );
        assert!(ok);
        assert_eq!(json(&out)["tasks"][0]["id"], id.as_str());
        let (ok, _, err) = tresor(
            h,
            &url,
            &["task", "cancel", &id, "-w", "genomics"],
            None,
            None,
        );
        assert!(ok, "{err}");
        let (ok, out, _) = tresor(
            h,
            &url,
            &["task", "get", &id, "-w", "genomics", "--format", "json"],
            None,
            None,
        );
        assert!(ok);
        assert_eq!(json(&out)["state"], "CANCELED");

        let (ok, out, _) = tresor(
            h,
            &url,
            &["token", "create", "ci", "--format", "json"],
            None,
            None,
        );
        assert!(ok);
        let created = json(&out);
        let token = created["token"].as_str().unwrap().to_owned();
        let (ok, out, _) = tresor(h, &url, &["token", "list"], None, None);
        assert!(
            ok && out.contains("ci") && !out.contains(&token[4..]),
            "{out}"
        );
        let (ok, _, _) = tresor(
            h,
            &url,
            &["token", "revoke", created["id"].as_str().unwrap()],
            None,
            None,
        );
        assert!(ok);
        // The revoked token, given through the environment, is refused with a clear message.
        let (ok, _, err) = tresor(h, &url, &["task", "list"], None, Some(&token));
        assert!(!ok && err.contains("revoked"), "{err}");

        let (ok, _, err) = tresor(
            h,
            &url,
            &["member", "remove", "genomics", &bob_id],
            None,
            None,
        );
        assert!(ok, "{err}");
        let (ok, _, err) = tresor(h, &url, &["workspace", "remove", "genomics"], None, None);
        assert!(ok, "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_cli_sets_secrets_from_stdin_or_a_file_never_from_argv() {
    let server = TestServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_owned();
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    let value_file = home.path().join("value.bin");
    std::fs::write(&value_file, crate::secrets::CANARY).unwrap();
    tokio::task::spawn_blocking(move || {
        let h = home_path.as_path();
        let (ok, _, err) = tresor(h, &url, &["login"], Some(&admin), None);
        assert!(ok, "{err}");
        let (ok, out, err) = tresor(
            h,
            &url,
            &["secret", "set", "FROM_STDIN", "--format", "json"],
            Some("stdin-value-1234"),
            None,
        );
        assert!(ok, "{err}");
        assert_eq!(json(&out)["version"], 1);
        let (ok, _, err) = tresor(
            h,
            &url,
            &[
                "secret",
                "set",
                "FROM_FILE",
                "--user",
                "--from-file",
                value_file.to_str().unwrap(),
            ],
            None,
            None,
        );
        assert!(ok, "{err}");
        let (ok, out, _) = tresor(
            h,
            &url,
            &["secret", "set", "FROM_STDIN", "--if-match", "1"],
            Some("stdin-value-5678"),
            None,
        );
        assert!(ok && out.contains("version 2"), "{out}");
        let (ok, _, err) = tresor(
            h,
            &url,
            &["secret", "set", "FROM_STDIN", "--if-match", "1"],
            Some("stdin-value-9999"),
            None,
        );
        assert!(!ok && err.contains("changed since you read it"), "{err}");
        // There is no way to pass a value as an argument.
        let (ok, _, err) = tresor(
            h,
            &url,
            &["secret", "set", "X_Y", "a-value-on-argv"],
            None,
            None,
        );
        assert!(!ok && err.contains("unexpected argument"), "{err}");
        let (ok, out, _) = tresor(h, &url, &["secret", "list", "--format", "json"], None, None);
        assert!(ok);
        let listed = json(&out);
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert!(!out.contains("stdin-value"), "{out}");
        let (ok, out, _) = tresor(h, &url, &["secret", "list", "--user"], None, None);
        assert!(ok && out.contains("FROM_FILE"), "{out}");
        let (ok, _, err) = tresor(h, &url, &["secret", "delete", "FROM_STDIN"], None, None);
        assert!(ok, "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn secret_set_on_an_existing_secret_updates_it_and_if_match_still_guards() {
    let server = TestServer::start().await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_owned();
    let url = server.url.clone();
    let admin = server.admin_token.clone();
    tokio::task::spawn_blocking(move || {
        let h = home_path.as_path();
        let (ok, _, err) = tresor(h, &url, &["login"], Some(&admin), None);
        assert!(ok, "{err}");
        let set = |value: &str, extra: &[&str]| {
            let mut args = vec!["secret", "set", "API_KEY", "--format", "json"];
            args.extend_from_slice(extra);
            tresor(h, &url, &args, Some(value), None)
        };
        let (ok, out, err) = set("first-value-1234", &[]);
        assert!(ok, "{err}");
        assert_eq!(json(&out)["version"], 1);
        // Like `gh secret set`: setting it again replaces the value, no version needed.
        let (ok, out, err) = set("second-value-5678", &[]);
        assert!(ok, "setting an existing secret updates it: {err}");
        assert_eq!(json(&out)["version"], 2);
        // --if-match stays the careful update: a stale version is refused, the current one wins.
        let (ok, _, err) = set("third-value-9012", &["--if-match", "1"]);
        assert!(!ok && err.contains("changed since you read it"), "{err}");
        let (ok, out, err) = set("third-value-9012", &["--if-match", "2"]);
        assert!(ok, "{err}");
        assert_eq!(json(&out)["version"], 3);
        let (ok, out, _) = tresor(h, &url, &["secret", "list", "--format", "json"], None, None);
        assert!(ok);
        let listed = json(&out);
        assert_eq!(listed.as_array().unwrap().len(), 1, "{out}");
        assert_eq!(listed[0]["version"], 3, "{out}");
    })
    .await
    .unwrap();

    // Tasks get the newest value.
    let store = server.store().await;
    let keys = tresor_crypto::KeyRing::open_or_create(&server.data.join("kek")).unwrap();
    let platform = tresor_service::PlatformService::new(
        store.clone(),
        tresor_auth::oidc::OidcVerifier::new(Vec::new()).unwrap(),
    );
    let secrets = tresor_service::SecretService::new(store.clone(), platform, keys)
        .await
        .unwrap();
    let personal = server.admin.me().await.unwrap().personal_workspace;
    let key = tresor_store::SecretKey {
        workspace: tresor_domain::WorkspaceId::parse(&personal).unwrap(),
        owner: None,
        name: "API_KEY".to_owned(),
    };
    let (version, value) = secrets.open(&key).await.unwrap().unwrap();
    assert_eq!(
        (version, value.expose_secret()),
        (3, &b"third-value-9012"[..])
    );
}

/// `tresor ARGS` as the admin of `server`, in `home`; its exit code, stdout and stderr.
fn tresor_as(server_url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(TRESOR)
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("TRESOR_URL", server_url)
        .env("TRESOR_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn task_run_works_like_docker_run_and_exits_with_the_tasks_code() {
    let server = TestServer::start().await;
    server.make_storage(&server.client, &server.storage).await;
    std::fs::write(server.storage.join("reads.txt"), "a\nb\nc\n").unwrap();
    let me = server.admin.me().await.unwrap();
    server
        .admin
        .put_secret(
            &me.personal_workspace,
            false,
            "RUN_SECRET",
            b"run-secret-value-5521",
            None,
        )
        .await
        .unwrap();
    let (url, token) = (server.url.clone(), server.admin_token.clone());
    let input = format!("/in/reads.txt={}", server.storage_url("reads.txt"));
    let output = format!("/out/count.txt={}", server.storage_url("count.txt"));
    let storage = server.storage.clone();
    let id = tokio::task::spawn_blocking(move || {
        // Inputs, outputs, env, a secret and resources; stdout and stderr kept apart.
        let (code, out, err) = tresor_as(
            &url,
            &token,
            &[
                "task", "run", "--input", &input, "--output", &output, "--env", "GREETING=hi",
                "--secret", "RUN_SECRET", "--cpu", "1", "--mem", "0.5", "--name", "counting",
                "debian:12", "--", "sh", "-c",
                "wc -l < /in/reads.txt > /out/count.txt; echo \"$GREETING ${#RUN_SECRET}\"; echo to-stderr >&2",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out, "hi 21\n");
        assert!(err.contains("to-stderr"), "{err}");
        assert!(!err.contains('\r') && !err.contains('\x1b'), "no progress bar off a terminal: {err:?}");
        assert_eq!(std::fs::read_to_string(storage.join("count.txt")).unwrap().trim(), "3");

        // The executor's exit code is the command's, with the reason on stderr.
        let (code, out, err) =
            tresor_as(&url, &token, &["task", "run", "debian:12", "--", "sh", "-c", "echo partial; exit 7"]);
        assert_eq!((code, out.as_str()), (7, "partial\n"), "{err}");
        assert!(err.contains("EXECUTOR_ERROR") && err.contains("exited with code 7"), "{err}");

        // A system failure (a missing input) is 125.
        let missing = format!("/in/x={}", "file:///nonexistent/x");
        let (code, _, err) =
            tresor_as(&url, &token, &["task", "run", "--input", &missing, "debian:12", "--", "true"]);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains("error") || err.contains("SYSTEM_ERROR"), "{err}");

        // Detached: the id at once; then wait, logs and a readable get.
        let (code, id, err) = tresor_as(
            &url,
            &token,
            &["task", "run", "-d", "debian:12", "--", "sh", "-c", "echo one; exit 4"],
        );
        assert_eq!(code, 0, "{err}");
        let id = id.trim().to_owned();
        let (code, out, _) = tresor_as(&url, &token, &["task", "wait", &id]);
        assert_eq!((code, out.as_str()), (4, "EXECUTOR_ERROR\n"));
        let (code, out, _) = tresor_as(&url, &token, &["task", "logs", &id]);
        assert_eq!((code, out.as_str()), (0, "one\n"));
        let (code, out, _) = tresor_as(&url, &token, &["task", "get", &id]);
        assert_eq!(code, 0);
        for want in [&format!("id           {id}"), "state        EXECUTOR_ERROR", "executor 0   debian:12 sh -c 'echo one; exit 4'", "exit code 4"] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        // Bad flags are a clear error before anything is submitted.
        let (code, _, err) = tresor_as(&url, &token, &["task", "run", "--env", "NOEQUALS", "debian:12", "--", "true"]);
        assert_eq!(code, 1);
        assert!(err.contains("--env \"NOEQUALS\" is not of the form KEY=VALUE"), "{err}");
        let (code, _, err) = tresor_as(&url, &token, &["task", "run", "--input", "/in=relative/path", "debian:12", "--", "true"]);
        assert_eq!(code, 1);
        assert!(err.contains("neither a URL nor an absolute host path"), "{err}");
        id
    })
    .await
    .unwrap();

    // The secret went by name only: not in the task document.
    let listed = server.client.list_tasks(&Default::default()).await.unwrap();
    let raw = serde_json::to_string(&listed).unwrap();
    assert!(!raw.contains("run-secret-value"), "{raw}");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn task_logs_follow_prints_output_while_the_task_runs() {
    let server = TestServer::start().await;
    let id = server
        .client
        .create_task(&sh_task("echo first; sleep 4; echo second"))
        .await
        .unwrap();
    let mut child = Command::new(TRESOR)
        .args(["task", "logs", "--follow", &id])
        .env_clear()
        .env("TRESOR_URL", &server.url)
        .env("TRESOR_TOKEN", &server.admin_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await
    .unwrap();
    assert_eq!(first.0, "first");
    // The first line arrived while the task still ran.
    let now = server
        .client
        .get_task(&id, tresor_api_types::tes::TesView::Minimal)
        .await
        .unwrap();
    assert_eq!(now.state, Some(tresor_api_types::tes::TesState::Running));
    let rest: Vec<String> =
        tokio::task::spawn_blocking(move || first.1.map(Result::unwrap).collect())
            .await
            .unwrap();
    assert_eq!(rest, ["second"]);
    assert!(child.wait().unwrap().success());
}

#[test]
fn completion_scripts_are_generated_for_the_common_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(TRESOR)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("tresor"), "{shell}: {script}");
        assert!(
            script.contains("logs") && script.contains("wait"),
            "{shell} completes task subcommands"
        );
    }
    let out = Command::new(TRESOR)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn on_a_terminal_task_run_shows_the_state_while_it_waits() {
    let server = TestServer::start().await;
    let (url, token) = (server.url.clone(), server.admin_token.clone());
    let out = tokio::task::spawn_blocking(move || {
        let command = format!("{TRESOR} task run debian:12 -- sh -c 'sleep 1; echo done'");
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TRESOR_URL", url)
            .env("TRESOR_TOKEN", token)
            .env("TERM", "xterm")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("RUNNING"),
        "the spinner names the state: {text:?}"
    );
    assert!(text.contains("done"), "{text:?}");
}

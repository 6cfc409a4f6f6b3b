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
            &["workspace", "create", "genomics", "--output", "json"],
            None,
            None,
        );
        assert!(ok, "{err}");
        assert_eq!(json(&out)["role"], "owner");
        let (ok, out, _) = tresor(
            h,
            &url,
            &["workspace", "list", "--output", "json"],
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
            &["member", "list", "genomics", "--output", "json"],
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
                "--output",
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
            &["task", "list", "-w", "genomics", "--output", "json"],
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
            &["task", "get", &id, "-w", "genomics", "--output", "json"],
            None,
            None,
        );
        assert!(ok);
        assert_eq!(json(&out)["state"], "CANCELED");

        let (ok, out, _) = tresor(
            h,
            &url,
            &["token", "create", "ci", "--output", "json"],
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
            &["secret", "set", "FROM_STDIN", "--output", "json"],
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
        let (ok, out, _) = tresor(h, &url, &["secret", "list", "--output", "json"], None, None);
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
            let mut args = vec!["secret", "set", "API_KEY", "--output", "json"];
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
        let (ok, out, _) = tresor(h, &url, &["secret", "list", "--output", "json"], None, None);
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

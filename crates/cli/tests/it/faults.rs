//! Broken parts: a full disk under the data directory, a database locked by another process,
//! the storage server down, the identity provider down. Each is a clear 503 (or a task's clear
//! SYSTEM_ERROR), corrupts nothing, and the server recovers by itself when the fault ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tresor_api_types::tes::{TesFileType, TesInput, TesState, TesTask};
use tresor_auth::oidc::TrustedIssuer;
use tresor_client::{PlatformClient, TesClient};

use crate::crash::spawn_server_env;
use crate::support::*;

/// A size-limited file system mounted for the test, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tresor-test",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {size} tmpfs at {}",
            at.display()
        );
        SmallFs(at.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    // Then the last bytes a smaller write still finds.
    while file.write_all(&chunk[..4096]).is_ok() {}
    path
}

async fn post_task(url: &str, token: &str, task: &TesTask) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}/ga4gh/tes/v1/tasks"))
        .bearer_auth(token)
        .json(task)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn id_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The server's logged request failures, for an assertion's message.
fn failures(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("request failed") || l.contains("panic"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n")
}

fn tresor_ok(args: &[&str]) {
    let out = Command::new(TRESOR).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tresor {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_a_clear_503_and_the_server_recovers_when_space_returns() {
    let dir = traversable_tempdir();
    let data = dir.path().join("data");
    let _fs = SmallFs::mount(&data, "64m");
    let server = spawn_server_env(dir.path(), "127.0.0.1:0", &[]);
    let (url, token) = (server.client_url(), bootstrap_admin_token(dir.path()));
    let first = wait_terminal(
        &server.client,
        &server
            .client
            .create_task(&sh_task("echo before"))
            .await
            .unwrap(),
    )
    .await;
    assert_complete(&first);

    let filler = fill(&data);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..2000 {
        let (status, body) = post_task(&url, &token, &sh_task(&format!("echo during-{i}"))).await;
        match status {
            StatusCode::OK => accepted.push(id_of(&body)),
            StatusCode::SERVICE_UNAVAILABLE => {
                refusal = Some(body);
                break;
            }
            other => panic!("{other} while the disk is full: {body}"),
        }
    }
    let refusal = refusal.expect("the full disk was never reported");
    assert!(
        refusal.contains("the server's disk is full"),
        "{refusal}\n{}",
        {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
            log.lines()
                .filter(|l| l.contains("request failed") || l.contains("panic"))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        }
    );
    // Reading goes on.
    let listed = server.client.list_tasks(&Default::default()).await.unwrap();
    assert!(!listed.tasks.is_empty());

    std::fs::remove_file(&filler).unwrap();
    // Space is back: the next task is accepted and runs, with no restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (status, body) = post_task(&url, &token, &sh_task("echo after")).await;
        if status == StatusCode::OK {
            break id_of(&body);
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after space returned: {body}\n{}",
            failures(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        stdout(&wait_terminal(&server.client, &after).await, 0),
        "after\n"
    );
    // Nothing accepted was lost: each task ended, and one that could not start says why.
    for id in &accepted {
        let task = wait_terminal(&server.client, id).await;
        if task.state != Some(TesState::Complete) {
            assert_eq!(task.state, Some(TesState::SystemError), "{id}");
            let logs = system_logs(&task);
            assert!(!logs.is_empty(), "{id} failed without a reason");
        }
    }
    drop(server);
    let copy = dir.path().join("after-full.db");
    tresor_ok(&[
        "admin",
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    tresor_ok(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_process_is_a_clear_503_until_it_lets_go() {
    use sqlx::{Connection, Executor};
    let dir = traversable_tempdir();
    let server = spawn_server_env(dir.path(), "127.0.0.1:0", &[]);
    let (url, token) = (server.client_url(), bootstrap_admin_token(dir.path()));
    // Another process's write transaction, as a backup tool or a stray sqlite3 shell would hold.
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&format!(
        "sqlite://{}",
        dir.path().join("data/tresor.db").display()
    ))
    .unwrap()
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    let (status, body) = post_task(&url, &token, &sh_task("echo locked")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("the database is locked"), "{body}");
    // A read that needs the lock too is the same clear 503, never a 500.
    let (status, body) = {
        let response = reqwest::Client::new()
            .get(format!("{url}/ga4gh/tes/v1/tasks"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert!(
        status == StatusCode::OK
            || (status == StatusCode::SERVICE_UNAVAILABLE && body.contains("locked")),
        "{status} {body}"
    );
    other.execute("ROLLBACK").await.unwrap();
    other.close().await.unwrap();

    let (status, body) = post_task(&url, &token, &sh_task("echo unlocked")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = wait_terminal(&server.client, &id_of(&body)).await;
    assert_eq!(stdout(&done, 0), "unlocked\n");
    drop(server);
    tresor_ok(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
}

#[tokio::test]
async fn a_storage_server_down_fails_its_tasks_clearly_and_they_run_once_it_is_back() {
    let s3 = S3Server::start().await;
    let server =
        TestServer::start_with(|s| s.services.s3 = Some(std::sync::Arc::new(s3.settings()))).await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let tes = alice.tes_in("lab");
    s3.put("workspaces/lab/in.txt", b"ACGT\n").await;
    let task = TesTask {
        inputs: Some(vec![TesInput {
            url: Some("s3://tresor/workspaces/lab/in.txt".to_owned()),
            path: "/data/in.txt".to_owned(),
            file_type: Some(TesFileType::File),
            ..TesInput::default()
        }]),
        ..sh_task("cat /data/in.txt")
    };

    s3.down();
    let failed = wait_terminal(&tes, &tes.create_task(&task).await.unwrap()).await;
    assert_eq!(failed.state, Some(TesState::SystemError));
    let logs = system_logs(&failed);
    assert!(
        logs.contains(
            "s3://tresor/workspaces/lab/in.txt (to /data/in.txt): the storage server cannot be reached"
        ),
        "the input is named: {logs}"
    );
    assert!(
        !logs.contains("X-Amz-Signature"),
        "no presigned URL in the logs: {logs}"
    );

    s3.up().await;
    let done = wait_terminal(&tes, &tes.create_task(&task).await.unwrap()).await;
    assert_complete(&done);
    assert_eq!(stdout(&done, 0), "ACGT\n");
}

#[tokio::test]
async fn an_identity_provider_down_is_a_clear_503_for_its_tokens_only_and_passes() {
    let provider = tokio::task::spawn_blocking(start_real_provider)
        .await
        .unwrap();
    let port: u16 = provider
        .issuer
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let trust = TrustedIssuer {
        issuer: provider.issuer.clone(),
        audience: "tes-api".to_owned(),
        roles_claim: None,
        role_mappings: Vec::new(),
    };
    let token = client_credentials_token(&provider.issuer).await;
    // A server that has not seen the provider's keys yet, with the provider gone.
    drop(provider);
    let server = TestServer::start_with(|s| s.services.oidc_issuers = vec![trust]).await;
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(
        body.contains("the identity provider that issued the token cannot be reached"),
        "{body}"
    );
    // Access tokens do not depend on it.
    server.admin.me().await.unwrap();

    // It comes back (on the same address): its tokens work again, with no restart of tresor.
    let provider = tokio::task::spawn_blocking(move || start_real_provider_on(port))
        .await
        .unwrap();
    let token = client_credentials_token(&provider.issuer).await;
    let me = PlatformClient::new(&server.url, Some(&token))
        .unwrap()
        .me()
        .await
        .unwrap();
    assert_eq!(me.name, "tes-service");
    let tes = TesClient::with_token(&server.url, &token).unwrap();
    let done = wait_terminal(&tes, &tes.create_task(&sh_task("echo back")).await.unwrap()).await;
    assert_eq!(stdout(&done, 0), "back\n");
}

//! Host users: a server that is not root runs its tasks as itself, and a root server refuses a
//! data dir that its tasks' users could not reach.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tresor_api_types::tes::{TesOutput, TesState, TesTask};

use crate::support::*;

/// These tests switch users, which needs root (CI runs the suite as root); elsewhere they say
/// so and pass.
fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped; it switches host users, which needs root");
    }
    is_root()
}

/// The unprivileged account `tresor-test` (uid, gid), created the first time it is needed.
fn test_account() -> (u32, u32) {
    static ACCOUNT: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *ACCOUNT.get_or_init(|| {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id")
                .args([flag, "tresor-test"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if id("-u").is_none() {
            // Another test process may create it at the same moment: "exists" is fine.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    "tresor-test",
                ])
                .status();
        }
        (
            id("-u").expect("useradd could not create the account tresor-test"),
            id("-g").expect("the account tresor-test has no group"),
        )
    })
}

/// A task whose outputs `/out/*` go to `storage/<name>`.
fn task_with_outputs(storage: &Path, names: &[&str], script: &str) -> TesTask {
    TesTask {
        outputs: Some(
            names
                .iter()
                .map(|name| TesOutput {
                    path: format!("/out/{name}"),
                    url: crate::crash::storage_url(storage, name),
                    ..TesOutput::default()
                })
                .collect(),
        ),
        ..sh_task(script)
    }
}

#[tokio::test]
async fn a_server_that_is_not_root_runs_tasks_as_itself_and_delivers_their_outputs() {
    if !root_or_skip("a_server_that_is_not_root_runs_tasks_as_itself") {
        return;
    }
    let (uid, gid) = test_account();
    let dir = traversable_tempdir();
    // The binary where that user may run it: the checkout may lie below root's own home.
    let program = dir.path().join("tresor");
    if std::fs::hard_link(TRESOR, &program).is_err() {
        std::fs::copy(TRESOR, &program).unwrap();
    }
    for sub in ["data", "storage"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::os::unix::fs::chown(dir.path().join(sub), Some(uid), Some(gid)).unwrap();
    }
    let server = crate::crash::spawn_server_as(dir.path(), (uid, gid), &program);
    let storage = crate::crash::personal_storage(&server, dir.path());
    std::os::unix::fs::chown(&storage, Some(uid), Some(gid)).unwrap();

    let info = server.client.service_info().await.unwrap();
    assert!(
        info.description.unwrap_or_default().contains("not root"),
        "service-info says that tasks share the server's user"
    );
    let task = task_with_outputs(
        &storage,
        &["who", "result.txt"],
        r#"id -u > /out/who; test -s "$TRESOR_IDENTITY_TOKEN_FILE" && echo token; echo result > /out/result.txt"#,
    );
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_eq!(
        done.state,
        Some(TesState::Complete),
        "{}",
        system_logs(&done)
    );
    assert_eq!(
        stdout(&done, 0),
        "token\n",
        "the task read its identity token"
    );
    assert_eq!(
        std::fs::read_to_string(storage.join("who")).unwrap().trim(),
        uid.to_string(),
        "executors run as the server's own user"
    );
    let result = storage.join("result.txt");
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "result\n");
    assert_eq!(std::fs::metadata(&result).unwrap().uid(), uid);
}

#[tokio::test]
async fn a_data_dir_that_tasks_cannot_reach_is_refused_at_start_naming_the_directory() {
    if !root_or_skip("a_data_dir_that_tasks_cannot_reach_is_refused_at_start") {
        return;
    }
    // `mktemp -d`: mode 0700, so no task's user could enter the data dir below it.
    let closed = tempfile::tempdir().unwrap();
    let closed_path = std::fs::canonicalize(closed.path()).unwrap();
    let child = tokio::process::Command::new(TRESOR)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(closed.path().join("data"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tresor serve started instead of refusing the data dir")
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("data_dir (from --data-dir)")
            && stderr.contains(&format!(
                "cannot enter {} (mode 0700)",
                closed_path.display()
            ))
            && stderr.contains(&format!("chmod o+x {}", closed_path.display())),
        "{stderr}"
    );
}

//! What an operator points tools at: health, readiness, metrics, JSON logs with request ids,
//! and a clean stop on SIGTERM.

use std::collections::BTreeMap;
use std::time::Duration;

use tresor_api_types::tes::{TesState, TesTask, TesView};
use tresor_client::PlatformClient;

use crate::crash::{free_listen_address, spawn_server_env};
use crate::support::*;

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the sample named exactly `series` (name and labels) in a Prometheus text body.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_health_and_json_logs_follow_a_request_into_its_worker() {
    let dir = traversable_tempdir();
    let server = spawn_server_env(
        dir.path(),
        "127.0.0.1:0",
        &[("TRESOR_LOG_FORMAT", "json"), ("TRESOR_LOG", "info")],
    );
    let base = server.client_url();
    let token = bootstrap_admin_token(dir.path());

    assert_eq!(
        get(&format!("{base}/healthz"), None).await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        get(&format!("{base}/readyz"), None).await,
        (200, "ready\n".to_owned())
    );
    let (status, _) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(
        status, 401,
        "the metrics need an administrator's credential"
    );

    let admin = PlatformClient::new(&base, Some(&token)).unwrap();
    admin.create_workspace("ops").await.unwrap();
    admin
        .put_secret("ops", false, "OPS_SECRET", b"ops-secret-value-7781", None)
        .await
        .unwrap();

    // A task created with a request id of the client's choosing.
    let mut task = sh_task("test -n \"$OPS_SECRET\" && echo done");
    task.tags = Some(BTreeMap::from([(
        "tresor.secrets.env".to_owned(),
        "OPS_SECRET".to_owned(),
    )]));
    let response = reqwest::Client::new()
        .post(format!("{base}/w/ops/ga4gh/tes/v1/tasks"))
        .bearer_auth(&token)
        .header("x-request-id", "ops-req-4711")
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "ops-req-4711");
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tes = tresor_client::TesClient::for_workspace(&base, "ops", &token).unwrap();
    let done = wait_terminal(&tes, &id).await;
    assert_complete(&done);

    // An id that could break a log line is replaced, not echoed.
    let response = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .header("x-request-id", "\"},{\"level\":\"ERROR\"")
        .send()
        .await
        .unwrap();
    let given = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid_like(&given), "{given}");

    // One bad credential, and one unknown task (its id must not become a label).
    let (status, _) = get(
        &format!("{base}/ga4gh/tes/v1/tasks"),
        Some("tresor_pat_bogus"),
    )
    .await;
    assert_eq!(status, 401);
    let unknown = "0192f1c2-aaaa-7bbb-8ccc-0123456789ab";
    let (status, _) = get(
        &format!("{base}/ga4gh/tes/v1/tasks/{unknown}"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 404);

    // Made-up methods, as an unauthenticated attacker would send to grow the label set.
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let _ = reqwest::Client::new()
            .request(method, format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
    }
    let (status, metrics) = get(&format!("{base}/metrics"), Some(&token)).await;
    assert_eq!(status, 200, "{metrics}");
    for (series, want) in [
        ("tresor_tasks{state=\"COMPLETE\"}", 1.0),
        ("tresor_tasks{state=\"QUEUED\"}", 0.0),
        ("tresor_task_queue_wait_seconds_count", 1.0),
        ("tresor_task_run_seconds_count{state=\"COMPLETE\"}", 1.0),
        ("tresor_secret_deliveries_total", 1.0),
        ("tresor_secrets_delivered_total", 1.0),
        // The scrape without a credential, and the bogus token.
        ("tresor_auth_failures_total{kind=\"user\"}", 2.0),
        (
            "tresor_http_request_duration_seconds_count{method=\"POST\",route=\"/w/{workspace}/ga4gh/tes/v1/tasks\",status=\"2xx\"}",
            1.0,
        ),
        (
            "tresor_http_request_duration_seconds_count{method=\"GET\",route=\"/ga4gh/tes/v1/tasks/{id}\",status=\"4xx\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(want),
            "{series} in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(unknown),
        "a raw path became a label:\n{metrics}"
    );
    assert!(!metrics.contains("ops-secret-value"), "{metrics}");
    assert!(
        !metrics.contains("MADEUP"),
        "a made-up method became a label:\n{metrics}"
    );
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");

    // Every line of the server's log is one JSON object; the request's own lines carry its id,
    // and so do the worker's lines, which the server relays when the task ends.
    // (The worker ends after it reports; the server relays its log when it has exited.)
    let relayed = |log: &str| log.contains("tresor::worker") && log.contains("ended the task");
    let mut log = String::new();
    for _ in 0..300 {
        log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
        if relayed(&log) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let worker_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "tresor::worker")
        .collect();
    assert!(
        worker_lines.iter().any(|l| {
            let message = l["fields"]["line"].as_str().unwrap_or_default();
            message.contains("request_id=ops-req-4711") && message.contains(&id)
        }),
        "no relayed worker line names the request and the task:\n{log}"
    );
    assert!(
        !log.contains("ops-secret-value"),
        "a secret reached the log"
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.bytes().filter(|b| *b == b'-').count() == 4
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_leaves_running_tasks_to_the_next_one() {
    let dir = traversable_tempdir();
    let listen = free_listen_address();
    let mut server = spawn_server_env(dir.path(), &listen, &[]);
    let id = server
        .client
        .create_task(&sh_task("sleep 2; echo survived"))
        .await
        .unwrap();
    wait_state(&server.client, &id, TesState::Running).await;

    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !processes_with(&id).is_empty(),
        "the task's worker stopped with the server"
    );

    // The next server finds the task where its worker left it.
    let next = spawn_server_env(dir.path(), &listen, &[]);
    let done = wait_terminal(&next.client, &id).await;
    assert_complete(&done);
    assert_eq!(stdout(&done, 0).trim(), "survived");
    let listed = next.client.get_task(&id, TesView::Minimal).await.unwrap();
    assert_eq!(listed.state, Some(TesState::Complete));
    let _: TesTask = listed;
}

fn tresor_admin(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(TRESOR)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secret_task() -> TesTask {
    let mut task = sh_task("echo \"length ${#OPS_SECRET}\"");
    task.tags = Some(BTreeMap::from([(
        "tresor.secrets.env".to_owned(),
        "OPS_SECRET".to_owned(),
    )]));
    task
}

#[tokio::test]
async fn an_online_backup_restores_with_its_key_file_and_not_without_it() {
    use std::os::unix::fs::PermissionsExt;
    let first = traversable_tempdir();
    let server = spawn_server_env(first.path(), "127.0.0.1:0", &[]);
    let token = bootstrap_admin_token(first.path());
    let admin = PlatformClient::new(&server.client_url(), Some(&token)).unwrap();
    admin.create_workspace("ops").await.unwrap();
    admin
        .put_secret("ops", false, "OPS_SECRET", b"backup-secret-value-42", None)
        .await
        .unwrap();
    let tes = tresor_client::TesClient::for_workspace(&server.client_url(), "ops", &token).unwrap();
    let before = wait_terminal(&tes, &tes.create_task(&secret_task()).await.unwrap()).await;
    assert_eq!(stdout(&before, 0), "length 22\n");

    // Online: the server keeps running and taking tasks while the copy is made.
    let busy = tes.create_task(&sh_task("sleep 1")).await.unwrap();
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("tresor-backup.db");
    let data = first.path().join("data");
    let (ok, out, err) = tresor_admin(&[
        "admin",
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("secret versions"), "{out}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read(&file)
            .unwrap()
            .windows(22)
            .any(|w| w == b"backup-secret-value-42"),
        "the backup holds the secret only sealed"
    );
    let (ok, _, err) = tresor_admin(&[
        "admin",
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("exists already"), "{err}");
    wait_terminal(&tes, &busy).await;
    drop(server);

    // Elsewhere, without the key file: refused, and nothing is put in place.
    let second = traversable_tempdir();
    let target = second.path().join("data");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(data.join("audit-key"), target.join("audit-key")).unwrap();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tresor_admin(&args)
    };
    let (ok, _, err) = restore(&[]);
    assert!(!ok, "restored without the key file");
    assert!(
        err.contains("no key file") && err.contains("key-encryption key"),
        "{err}"
    );
    assert!(!target.join("tresor.db").exists());
    // A different key file is refused too.
    let stranger = tempfile::tempdir().unwrap();
    tresor_crypto::KeyRing::open_or_create(&stranger.path().join("kek")).unwrap();
    let (ok, _, err) = restore(&["--kek-file", stranger.path().join("kek").to_str().unwrap()]);
    assert!(!ok && err.contains("lacks key-encryption key"), "{err}");

    // A server started on the copy without its key file does not start either.
    std::fs::copy(&file, target.join("tresor.db")).unwrap();
    let (ok, _, err) = tresor_admin(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(!ok, "a server started without the key file");
    assert!(err.contains("restore the key file"), "{err}");
    assert!(!target.join("kek").exists(), "no new key file was made");
    std::fs::remove_file(target.join("tresor.db")).unwrap();

    // With the key file it restores, verifies, and a server on it runs the secret's tasks.
    std::fs::copy(data.join("kek"), target.join("kek")).unwrap();
    std::fs::set_permissions(target.join("kek"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out, err) = restore(&[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("audit trail verifies"), "{out}");
    let (ok, _, err) = restore(&[]);
    assert!(
        !ok && err.contains("--replace"),
        "an existing database is not overwritten: {err}"
    );
    let (ok, out, err) = restore(&["--replace"]);
    assert!(ok, "{out}{err}");
    assert!(target.join("tresor.db.before-restore").exists());
    std::fs::copy(
        data.join("bootstrap-admin-token"),
        target.join("bootstrap-admin-token"),
    )
    .unwrap();
    let restored = spawn_server_env(second.path(), "127.0.0.1:0", &[]);
    let tes =
        tresor_client::TesClient::for_workspace(&restored.client_url(), "ops", &token).unwrap();
    let old = tes
        .get_task(before.id.as_deref().unwrap(), TesView::Full)
        .await
        .unwrap();
    assert_eq!(old.state, Some(TesState::Complete));
    let after = wait_terminal(&tes, &tes.create_task(&secret_task()).await.unwrap()).await;
    assert_eq!(stdout(&after, 0), "length 22\n", "{}", system_logs(&after));
    let (ok, out, err) = tresor_admin(&["audit", "verify", "--data-dir", target.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
}

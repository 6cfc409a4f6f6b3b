//! tresor as an OIDC issuer: task identity tokens verified by an independent relying party
//! (PyJWT), key rotation, renewal while a task runs, the per-task socket, and isolation.

use std::path::Path;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use tresor_api_types::tes::{TesFileType, TesOutput, TesState, TesTask};

use crate::support::*;

fn python() -> String {
    std::env::var("TRESOR_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TRESOR_TEST_PYTHON is not set: run the tests through scripts/test.sh, which creates the venv")
    })
}

/// Verifies token files with PyJWT against the server's discovery document and JWKS.
async fn verify_with_pyjwt(issuer: &str, audience: &str, files: &[&Path]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/verify_tokens.py");
    let mut args = vec![script.to_owned(), issuer.to_owned(), audience.to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "pyjwt refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A task whose script runs with `/out` delivered to `dest` in the workspace directory `storage`.
fn task_with_out(storage: &std::path::Path, dest: &str, script: &str) -> TesTask {
    TesTask {
        outputs: Some(vec![TesOutput {
            url: format!("file://{}/{dest}", storage.display()),
            path: "/out".to_owned(),
            file_type: Some(TesFileType::Directory),
            ..TesOutput::default()
        }]),
        ..sh_task(script)
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.trim().split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn task_tokens_verify_with_pyjwt_and_outlive_a_key_rotation() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let tes = alice.tes_in("lab");
    let lab = server.storage_of("lab");
    let script = r#"test "$AWS_WEB_IDENTITY_TOKEN_FILE" = "$TRESOR_IDENTITY_TOKEN_FILE" &&
        test "$AZURE_FEDERATED_TOKEN_FILE" = "$TRESOR_IDENTITY_TOKEN_FILE" &&
        cp "$TRESOR_IDENTITY_TOKEN_FILE" /out/token"#;
    let a = tes
        .create_task(&task_with_out(&lab, "a", script))
        .await
        .unwrap();
    let done = wait_terminal(&tes, &a).await;
    assert_complete(&done);

    let rotate = std::process::Command::new(TRESOR)
        .args(["admin", "rotate-signing-key", "--data-dir"])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{rotate:?}");

    let b = tes
        .create_task(&task_with_out(&lab, "b", script))
        .await
        .unwrap();
    let done = wait_terminal(&tes, &b).await;
    assert_complete(&done);

    let (token_a, token_b) = (lab.join("a/token"), lab.join("b/token"));
    let verified = verify_with_pyjwt(&server.url, "tresor", &[&token_a, &token_b]).await;
    assert_eq!(
        verified["discovery"]["authorization_endpoint"],
        format!("{}/oauth2/authorize", server.url)
    );
    let tokens = verified["tokens"].as_array().unwrap();
    assert_ne!(
        tokens[0]["kid"], tokens[1]["kid"],
        "task B was signed by the new key"
    );
    assert_eq!(
        verified["keys"].as_array().unwrap().len(),
        2,
        "the retired key stays published while its tokens live"
    );
    for (token, id) in tokens.iter().zip([&a, &b]) {
        let c = &token["claims"];
        assert_eq!(c["iss"], server.url.as_str());
        assert_eq!(c["sub"], format!("workspace:lab:task:{id}"));
        assert_eq!(c["aud"], "tresor");
        assert_eq!(c["workspace"], "lab");
        assert_eq!(c["user"], alice.id.as_str());
        assert_eq!(c["task"], id.as_str());
        assert_eq!(c["run"], id.as_str());
        assert_eq!(c["groups"], serde_json::json!(["lab"]));
        let life = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
        assert!(life > 0 && life <= 900, "lifetime {life}");
    }
    assert_ne!(tokens[0]["claims"]["jti"], tokens[1]["claims"]["jti"]);

    // A task's identity token is no credential for tresor's own API.
    let jwt = std::fs::read_to_string(&token_a).unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/w/lab/ga4gh/tes/v1/tasks", server.url))
        .bearer_auth(jwt.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_token_is_renewed_while_the_task_runs_and_gone_when_it_ends() {
    let server = TestServer::start_with(|s| {
        s.services.identity.token_ttl = std::time::Duration::from_secs(6);
    })
    .await;
    let script = r#"T="$TRESOR_IDENTITY_TOKEN_FILE"
cp "$T" /out/t1
sleep 5
cp "$T" /out/t2
stat -c '%a' /run/tresor/identity "$T" > /out/modes
python3 - > /out/socket.json <<'PY'
import json, os, socket
def get(path, marked=True):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["TRESOR_IDENTITY_SOCKET"])
    mark = "Tresor-Metadata: true\r\n" if marked else ""
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: task\r\n{mark}\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return [int(head.split(b" ")[1]), body.decode()]
print(json.dumps({
    "vault": get("/token?audience=vault"),
    "unmarked": get("/token?audience=vault", marked=False),
    "unknown": get("/token?audience=somewhere-else"),
}))
PY"#;
    let id = server
        .client
        .create_task(&task_with_out(&server.storage, "run", script))
        .await
        .unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_complete(&done);
    let read = |name: &str| std::fs::read_to_string(server.storage.join("run").join(name)).unwrap();
    let (t1, t2) = (read("t1"), read("t2"));
    assert_ne!(t1, t2, "the worker renewed the token before it expired");
    assert!(claims_of(&t2)["exp"].as_i64() > claims_of(&t1)["exp"].as_i64());
    assert_eq!(
        read("modes"),
        "500\n400\n",
        "a private directory, a read-only token"
    );

    let socket: Value = serde_json::from_str(&read("socket.json")).unwrap();
    assert_eq!(socket["vault"][0], 200, "{socket}");
    let vault: Value = serde_json::from_str(socket["vault"][1].as_str().unwrap()).unwrap();
    assert_eq!(claims_of(vault["token"].as_str().unwrap())["aud"], "vault");
    assert_eq!(socket["unmarked"][0], 400, "{socket}");
    assert_eq!(socket["unknown"][0], 400, "{socket}");
    assert!(
        socket["unknown"][1]
            .as_str()
            .unwrap()
            .contains("not an audience"),
        "{socket}"
    );

    // Nothing outlives the task: no token directory on the tmpfs, no token in the data dir.
    let left: Vec<String> = entries(Path::new("/dev/shm"))
        .into_iter()
        .filter(|e| e.contains(&id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for token in [&t1, &t2] {
        assert!(
            files_containing(&server.data, token.trim().as_bytes()).is_empty(),
            "a token was left in the data directory"
        );
    }
}

#[tokio::test]
async fn a_tasks_token_opens_nothing_of_another_task() {
    let server = TestServer::start().await;
    server.admin.create_workspace("lab").await.unwrap();
    let lab = server.storage_of("lab");
    server
        .admin
        .put_secret("lab", false, "B_SECRET", b"b-secret-value-1234", None)
        .await
        .unwrap();
    let tes =
        tresor_client::TesClient::for_workspace(&server.url, "lab", &server.admin_token).unwrap();
    let mut b_task = sh_task("sleep 60");
    b_task.tags = Some([("tresor.secrets".to_owned(), "B_SECRET".to_owned())].into());
    let b = tes.create_task(&b_task).await.unwrap();
    wait_state(&tes, &b, TesState::Running).await;
    let a = tes
        .create_task(&task_with_out(
            &lab,
            "a",
            r#"cp "$TRESOR_IDENTITY_TOKEN_FILE" /out/token"#,
        ))
        .await
        .unwrap();
    let done = wait_terminal(&tes, &a).await;
    assert_complete(&done);
    let jwt = std::fs::read_to_string(lab.join("a/token")).unwrap();
    let jwt = jwt.trim();
    let http = reqwest::Client::new();
    for id in [&b, &a] {
        for (method, route, body) in [
            (
                reqwest::Method::POST,
                "secrets",
                Some(serde_json::json!({ "delivery": "a-token-is-no-credential" })),
            ),
            (reqwest::Method::GET, "inputs", None),
            (
                reqwest::Method::POST,
                "token",
                Some(serde_json::json!({ "audience": "tresor" })),
            ),
            (
                reqwest::Method::POST,
                "uploads",
                Some(serde_json::json!({ "urls": [] })),
            ),
        ] {
            let mut req = http
                .request(
                    method,
                    format!("{}/internal/v1/tasks/{id}/{route}", server.url),
                )
                .bearer_auth(jwt);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} of {id}: {text}");
            assert!(!text.contains("b-secret-value-1234"));
        }
    }
    tes.cancel_task(&b).await.unwrap();
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if meta.is_file()
            && std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn a_task_hammering_its_token_socket_is_slowed_to_its_rate() {
    let server = TestServer::start().await;
    let script = r#"python3 - > /out/statuses <<'PY'
import os, socket
def get(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["TRESOR_IDENTITY_SOCKET"])
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: task\r\nTresor-Metadata: true\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode()
    retry = [l for l in head.split("\r\n") if l.lower().startswith("retry-after:")]
    return head.split(" ")[1] + (" " + retry[0].split(":")[1].strip() if retry else "")
for _ in range(60):
    print(get("/token?audience=vault"))
PY"#;
    let done = server
        .run(&task_with_out(&server.storage, "hammer", script))
        .await;
    assert_complete(&done);
    let statuses = std::fs::read_to_string(server.storage.join("hammer").join("statuses")).unwrap();
    let ok = statuses.lines().filter(|l| *l == "200").count();
    let limited: Vec<&str> = statuses.lines().filter(|l| l.starts_with("429")).collect();
    assert!(ok >= 20, "the burst is served: {statuses}");
    assert!(limited.len() >= 20, "the rest is refused: {statuses}");
    assert!(
        limited.iter().all(|l| l
            .split(' ')
            .nth(1)
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1))),
        "with Retry-After: {statuses}"
    );
}

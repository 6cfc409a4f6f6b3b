//! Pipeline secrets: write-only, versioned, role-gated, encrypted at rest, never leaked.

use reqwest::StatusCode;
use tresor_crypto::SecretValue;
use tresor_crypto::redact::Redactor;

use crate::identity::{Rechain, verify_after};
use crate::support::*;

/// A value with every awkward byte: quotes, backticks, `$`, newlines, UTF-8.
pub const CANARY: &[u8] = b"tr3s0r-CANARY-7f3a `whoami` $HOME \"q\" 'x'\nline-two-\xc3\xa9";

pub fn canary_finder() -> Redactor {
    Redactor::new([&SecretValue::new(CANARY.to_vec())])
}

/// Every file below `dir` (recursively) that holds the canary in any encoding.
pub fn files_with_canary(dir: &std::path::Path) -> Vec<String> {
    let finder = canary_finder();
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && finder.finds_in(&bytes)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn secrets_are_write_only_versioned_and_guarded_by_if_match() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    let v1 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", CANARY, None)
        .await
        .unwrap();
    assert_eq!((v1.version, v1.scope.as_str()), (1, "workspace"));

    let listed = server.admin.list_secrets("genomics", false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].version),
        ("DB_PASSWORD", 1)
    );
    let raw = server
        .admin
        .raw(reqwest::Method::GET, "workspaces/genomics/secrets", None)
        .await
        .unwrap();
    assert!(
        !canary_finder().finds_in(raw.body.as_bytes()),
        "a listing never holds the value"
    );

    // A plain PUT replaces the live value (200, where a create is 201).
    let put_plain = |value: &'static str, precondition: Option<(&'static str, &'static str)>| {
        let mut request = reqwest::Client::new()
            .put(format!(
                "{}/api/v1/workspaces/genomics/secrets/DB_PASSWORD",
                server.url
            ))
            .bearer_auth(&server.admin_token)
            .json(&serde_json::json!({ "value": value }));
        if let Some((name, header)) = precondition {
            request = request.header(name, header);
        }
        request.send()
    };
    let replaced = put_plain("other-value", None).await.unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(
        replaced.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some("\"2\"")
    );
    // If-None-Match: * only creates; on a live secret it is a 409.
    let refused = put_plain("other-value", Some(("if-none-match", "*")))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert!(
        refused.text().await.unwrap().contains("already exists"),
        "create-only says why"
    );
    // If-Match updates only the version the caller read: a stale one is a 409, no update is lost.
    let v3 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", b"second-value", Some(2))
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    let err = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", b"third-value", Some(2))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert!(
        err.to_string().contains("changed since you read it"),
        "{err}"
    );

    // Deleted secrets disappear; a new one continues the version numbers.
    server
        .admin
        .delete_secret("genomics", false, "DB_PASSWORD")
        .await
        .unwrap();
    assert!(
        server
            .admin
            .list_secrets("genomics", false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        server
            .admin
            .delete_secret("genomics", false, "DB_PASSWORD")
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    let v4 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", CANARY, None)
        .await
        .unwrap();
    assert_eq!(v4.version, 4);

    // Bad names and sizes are refused without echoing the value.
    for (name, value) in [
        ("1BAD", &b"long-enough"[..]),
        ("OK_NAME", b"abc"),
        ("has-dash", b"long-enough"),
    ] {
        let err = server
            .admin
            .put_secret("genomics", false, name, value, None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{name}");
        assert!(
            !err.to_string().contains("long-enough") && !err.to_string().contains("abc"),
            "{err}"
        );
    }
    let too_big = vec![b'x'; 64 * 1024 + 1];
    let err = server
        .admin
        .put_secret("genomics", false, "BIG", &too_big, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("8 to 65536 bytes (got 65537)"),
        "{err}"
    );
    let garbage = server
        .admin
        .raw(
            reqwest::Method::PUT,
            "workspaces/genomics/secrets/X_Y",
            Some(serde_json::json!({ "value": 12345678, "note": "tr3s0r-CANARY" })),
        )
        .await
        .unwrap();
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(
        !garbage.body.contains("12345678") && !garbage.body.contains("tr3s0r"),
        "{}",
        garbage.body
    );

    // At rest: the database, its WAL and every other file of the data dir hold no trace of it.
    assert_eq!(files_with_canary(&server.data), Vec::<String>::new());
}

#[tokio::test]
async fn only_admins_manage_workspace_secrets_and_user_secrets_stay_private() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    for role in ["view", "launch", "maintain"] {
        server
            .admin
            .set_member("genomics", &alice.id, role)
            .await
            .unwrap();
        let err = alice
            .platform
            .put_secret("genomics", false, "TOKEN", b"value-1234", None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{role}");
        assert!(err.to_string().contains("needs the admin role"), "{err}");
        server
            .admin
            .put_secret(
                "genomics",
                false,
                &format!("BY_ADMIN_{role}"),
                b"value-1234",
                None,
            )
            .await
            .unwrap();
        let err = alice
            .platform
            .delete_secret("genomics", false, &format!("BY_ADMIN_{role}"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{role}");
    }
    server
        .admin
        .set_member("genomics", &alice.id, "admin")
        .await
        .unwrap();
    alice
        .platform
        .put_secret("genomics", false, "TOKEN", b"value-1234", None)
        .await
        .unwrap();

    // Every member keeps their own user secrets; nobody else sees them.
    server
        .admin
        .set_member("genomics", &bob.id, "view")
        .await
        .unwrap();
    bob.platform
        .put_secret("genomics", true, "TOKEN", b"bobs-value", None)
        .await
        .unwrap();
    alice
        .platform
        .put_secret("genomics", true, "MINE", b"alices-value", None)
        .await
        .unwrap();
    let bobs: Vec<String> = bob
        .platform
        .list_secrets("genomics", true)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let alices: Vec<String> = alice
        .platform
        .list_secrets("genomics", true)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        (bobs, alices),
        (vec!["TOKEN".to_owned()], vec!["MINE".to_owned()])
    );
    assert_eq!(
        alice
            .platform
            .delete_secret("genomics", true, "TOKEN")
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    // Strangers do not even see the workspace.
    let carol = server.user("carol").await;
    assert_eq!(
        carol
            .platform
            .list_secrets("genomics", false)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn kek_rotation_keeps_every_value_and_a_tampered_ciphertext_is_an_error() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    server
        .admin
        .put_secret("genomics", false, "A_SECRET", CANARY, None)
        .await
        .unwrap();
    let before = std::fs::read_to_string(server.data.join("kek")).unwrap();

    let out = std::process::Command::new(TRESOR)
        .args(["admin", "rotate-kek", "--data-dir"])
        .arg(&server.data)
        .env_remove("TRESOR_KEK_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 data keys re-wrapped"));
    let after = std::fs::read_to_string(server.data.join("kek")).unwrap();
    assert_ne!(
        before.lines().next(),
        after.lines().next(),
        "a new current key"
    );
    assert_eq!(after.lines().count(), 1, "the old key is retired");

    // The running server keeps working: it writes under the new key and old values still open.
    server
        .admin
        .put_secret("genomics", false, "A_SECRET", b"after-rotation", Some(1))
        .await
        .unwrap();
    let store = server.store().await;
    let keys = tresor_crypto::KeyRing::open_or_create(&server.data.join("kek")).unwrap();
    let platform = tresor_service::PlatformService::new(
        store.clone(),
        tresor_auth::oidc::OidcVerifier::new(Vec::new()).unwrap(),
    );
    let secrets = tresor_service::SecretService::new(store.clone(), platform, keys)
        .await
        .unwrap();
    let key = tresor_store::SecretKey {
        workspace: tresor_domain::WorkspaceId::parse("genomics").unwrap(),
        owner: None,
        name: "A_SECRET".to_owned(),
    };
    let (version, value) = secrets.open(&key).await.unwrap().unwrap();
    assert_eq!(
        (version, value.expose_secret()),
        (2, &b"after-rotation"[..])
    );

    // Flip one byte of the stored ciphertext: opening fails loudly instead of returning garbage.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        server.data.join("tresor.db").display()
    ))
    .await
    .unwrap();
    let mut ciphertext: Vec<u8> = sqlx::query_scalar(
        "SELECT ciphertext FROM secrets WHERE name = 'A_SECRET' AND version = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let last = ciphertext.len() - 1;
    ciphertext[last] ^= 0x01;
    sqlx::query("UPDATE secrets SET ciphertext = ? WHERE name = 'A_SECRET' AND version = 2")
        .bind(ciphertext)
        .execute(&pool)
        .await
        .unwrap();
    let err = secrets.open(&key).await.unwrap_err();
    assert!(
        err.to_string().contains("internal") || format!("{err:?}").contains("does not decrypt"),
        "{err:?}"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn with_secrets(
    mut task: tresor_api_types::tes::TesTask,
    files: &str,
    env: &str,
) -> tresor_api_types::tes::TesTask {
    let mut tags = std::collections::BTreeMap::new();
    if !files.is_empty() {
        tags.insert("tresor.secrets".to_owned(), files.to_owned());
    }
    if !env.is_empty() {
        tags.insert("tresor.secrets.env".to_owned(), env.to_owned());
    }
    task.tags = Some(tags);
    task
}

/// A workspace `genomics` holding the given workspace secrets, and TES in it as the admin.
async fn genomics_with(server: &TestServer, secrets: &[(&str, &[u8])]) -> tresor_client::TesClient {
    server.admin.create_workspace("genomics").await.unwrap();
    for (name, value) in secrets {
        server
            .admin
            .put_secret("genomics", false, name, value, None)
            .await
            .unwrap();
    }
    tresor_client::TesClient::for_workspace(&server.url, "genomics", &server.admin_token).unwrap()
}

#[tokio::test]
async fn declared_secrets_reach_their_task_as_files_and_env_and_nothing_else() {
    let server = TestServer::start().await;
    let tes = genomics_with(
        &server,
        &[
            ("A", CANARY),
            ("B", b"b-value-1234"),
            ("C", b"c-never-declared"),
        ],
    )
    .await;

    let script = r#"ls "$TRESOR_SECRETS_DIR"; stat -c %a "$TRESOR_SECRETS_DIR" "$TRESOR_SECRETS_DIR/A";
        sha256sum < "$TRESOR_SECRETS_DIR/A" | cut -c1-64; printf %s "$B" | sha256sum | cut -c1-64;
        echo "C=${C:-unset} dir=$TRESOR_SECRETS_DIR""#;
    let done = server
        .run_in(&tes, &with_secrets(sh_task(script), "A", "B"))
        .await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::Complete),
        "{done:#?}"
    );
    assert_eq!(
        stdout(&done, 0),
        format!(
            "A\nB\n700\n400\n{}\n{}\nC=unset dir=/run/secrets\n",
            sha256_hex(CANARY),
            sha256_hex(b"b-value-1234")
        )
    );

    // A user secret of the same name overrides the workspace secret for its owner's tasks.
    server
        .admin
        .put_secret("genomics", true, "A", b"admins-own-value", None)
        .await
        .unwrap();
    let done = server
        .run_in(
            &tes,
            &with_secrets(
                sh_task(r#"sha256sum < "$TRESOR_SECRETS_DIR/A" | cut -c1-64"#),
                "A",
                "",
            ),
        )
        .await;
    assert_eq!(stdout(&done, 0).trim(), sha256_hex(b"admins-own-value"));

    // The audit trail names secret, version and task; the secret's metadata records its use.
    let listed = server.admin.list_secrets("genomics", false).await.unwrap();
    assert!(
        listed
            .iter()
            .find(|s| s.name == "B")
            .unwrap()
            .last_used_at
            .is_some()
    );

    // The deliveries cannot be erased from the trail without the audit key: deleting their events
    // breaks the chain, and re-chaining what is left, in plain SHA-256 or under another key,
    // does not verify either. The intact trail does.
    let events = server.store().await.audit_events(10_000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"action\":\"secret.deliver\"")),
        "{events:?}"
    );
    let (ok, why) = verify_after(&server.data, "SELECT 1", Rechain::No).await;
    assert!(ok, "{why}");
    for rechain in [
        Rechain::No,
        Rechain::PlainSha256,
        Rechain::HmacUnder([7; 32]),
    ] {
        let (ok, why) = verify_after(
            &server.data,
            "DELETE FROM audit_events WHERE body LIKE '%\"action\":\"secret.deliver\"%'",
            rechain,
        )
        .await;
        assert!(
            !ok && why.contains("audit trail broken at event"),
            "{rechain:?}: {why}"
        );
    }
}

#[tokio::test]
async fn undeclared_missing_or_foreign_secrets_are_refused_at_create() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    let bob = server.user("bob").await;
    server
        .admin
        .set_member("genomics", &bob.id, "launch")
        .await
        .unwrap();
    server
        .admin
        .put_secret("genomics", true, "ADMINS_ONLY", b"admin-user-secret", None)
        .await
        .unwrap();

    let err = bob
        .tes_in("genomics")
        .create_task(&with_secrets(sh_task("true"), "NOPE", ""))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        err.to_string().contains("secret NOPE is not defined"),
        "{err}"
    );
    // Another member's user secret is not usable, and the refusal is the same as for a missing one.
    let err = bob
        .tes_in("genomics")
        .create_task(&with_secrets(sh_task("true"), "", "ADMINS_ONLY"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("secret ADMINS_ONLY is not defined"),
        "{err}"
    );
    let err = bob
        .tes_in("genomics")
        .create_task(&with_secrets(sh_task("true"), "bad-name", ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a secret name"), "{err}");
}

#[tokio::test]
async fn secrets_in_plain_sight_are_refused_and_printed_ones_are_redacted() {
    let server = TestServer::start().await;
    let tes = genomics_with(&server, &[("TOKEN", b"tok-9f8e7d6c5b4a"), ("A", CANARY)]).await;

    // The launch guard: a stored value pasted into the command, env, input content or tags.
    let mut in_env = sh_task("true");
    in_env.executors[0].env = Some([("T".to_owned(), "tok-9f8e7d6c5b4a".to_owned())].into());
    let mut in_content = sh_task("true");
    in_content.inputs = Some(vec![tresor_api_types::tes::TesInput {
        path: "/data/creds".into(),
        content: Some("password=tok-9f8e7d6c5b4a".into()),
        ..Default::default()
    }]);
    let mut in_tags = sh_task("true");
    in_tags.tags = Some([("note".to_owned(), "tok-9f8e7d6c5b4a".to_owned())].into());
    for task in [
        sh_task("echo tok-9f8e7d6c5b4a"),
        in_env,
        in_content,
        in_tags,
    ] {
        let err = tes.create_task(&task).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert!(
            err.to_string().contains("reference the secret by name"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("tok-9f8e"),
            "the refusal does not repeat the value"
        );
    }

    // A task that prints its secret, in several encodings and split across writes: redacted.
    let script = r#"f="$TRESOR_SECRETS_DIR/A"; cat "$f"; echo; base64 -w0 "$f"; echo; od -An -tx1 "$f" | tr -d ' \n'; echo;
        head -c 10 "$f"; sleep 0.2; tail -c +11 "$f"; echo; cat "$f" >&2; exit 3"#;
    let done = server
        .run_in(&tes, &with_secrets(sh_task(script), "A", ""))
        .await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::ExecutorError)
    );
    let log = &done.logs.as_ref().unwrap()[0].logs[0];
    let (out, err) = (log.stdout.clone().unwrap(), log.stderr.clone().unwrap());
    assert!(out.contains("***") && err.contains("***"), "{out}\n{err}");
    let finder = canary_finder();
    assert!(
        !finder.finds_in(out.as_bytes()) && !finder.finds_in(err.as_bytes()),
        "{out}\n{err}"
    );
    assert!(!out.contains("tr3s0r-CANARY"), "{out}");
}

#[tokio::test]
async fn secrets_are_delivered_once_per_task_and_nothing_is_left_behind() {
    let server = TestServer::start().await;
    let tes = genomics_with(&server, &[("A", CANARY), ("B", b"b-env-value-1234")]).await;

    let id = tes
        .create_task(&with_secrets(sh_task("sleep 30"), "A", "B"))
        .await
        .unwrap();
    wait_state(&tes, &id, tresor_api_types::tes::TesState::Running).await;
    let task_file = server.data.join("work").join(&id).join("task.json");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&task_file).unwrap()).unwrap();
    assert!(
        !canary_finder().finds_in(&std::fs::read(&task_file).unwrap()),
        "the task file holds no value"
    );
    let url = format!("{}/secrets", spec["session"]["base_url"].as_str().unwrap());
    let credential = spec["session"]["credential"].as_str().unwrap().to_owned();
    // The worker already fetched them: a replay with the right credential gets nothing, with
    // no delivery id or another one (the worker's own id never leaves its memory), and a
    // guessed credential is refused outright.
    for body in [
        String::new(),
        r#"{"delivery": "replayed-by-someone-else-0001"}"#.to_owned(),
    ] {
        let replay = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&credential)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), StatusCode::CONFLICT);
        assert!(!canary_finder().finds_in(&replay.bytes().await.unwrap()));
    }
    let guessed = reqwest::Client::new()
        .post(&url)
        .bearer_auth("not-the-credential")
        .send()
        .await
        .unwrap();
    assert_eq!(guessed.status(), StatusCode::UNAUTHORIZED);

    // While it runs: no process's command line holds a value, and the env secret is only in the
    // environment of the task's own sandbox (bubblewrap and the command it runs).
    let env_finder = tresor_crypto::redact::Redactor::new([&tresor_crypto::SecretValue::new(
        b"b-env-value-1234".to_vec(),
    )]);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !canary_finder().finds_in(&cmdline) && !env_finder.finds_in(&cmdline),
            "pid {pid} has a secret in argv"
        );
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if env_finder.finds_in(&environ) {
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                cmd.starts_with("/usr/bin/bwrap")
                    || cmd.starts_with("sleep")
                    || cmd.starts_with("sh -c sleep"),
                "pid {pid} ({cmd}) holds the env secret"
            );
        }
        assert!(
            !canary_finder().finds_in(&environ),
            "the file-only secret is in pid {pid}'s environment"
        );
    }

    tes.cancel_task(&id).await.unwrap();
    let after = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "an ended task's credential fetches nothing"
    );

    // A successful and a failing run too; then nothing anywhere in the data dir holds a value.
    server
        .run_in(
            &tes,
            &with_secrets(sh_task(r#"cat "$TRESOR_SECRETS_DIR/A""#), "A", ""),
        )
        .await;
    server
        .run_in(
            &tes,
            &with_secrets(sh_task(r#"cat "$TRESOR_SECRETS_DIR/A"; exit 1"#), "A", ""),
        )
        .await;
    for _ in 0..200 {
        if task_entries(&server.data.join("work")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(files_with_canary(&server.data), Vec::<String>::new());
    assert!(task_entries(&server.data.join("work")).is_empty());
}

#[tokio::test]
async fn a_killed_worker_takes_its_secrets_tmpfs_with_it() {
    let server = TestServer::start().await;
    let tes = genomics_with(&server, &[("A", CANARY)]).await;
    let id = tes
        .create_task(&with_secrets(sh_task("sleep 4242"), "A", ""))
        .await
        .unwrap();
    wait_state(&tes, &id, tresor_api_types::tes::TesState::Running).await;
    for _ in 0..200 {
        if !processes_with("sleep 4242").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let worker = processes_with(&format!(
        "--task-dir {}",
        server.data.join("work").join(&id).display()
    ));
    assert_eq!(worker.len(), 1, "{worker:?}");
    assert!(
        entries(std::path::Path::new("/dev/shm"))
            .iter()
            .any(|e| e.contains(&id)),
        "the running task has its identity directory"
    );
    let pid = worker[0].split(':').next().unwrap().to_owned();
    // Only the worker, not its group: bubblewrap must notice and take the sandbox down.
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let done = wait_terminal(&tes, &id).await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::SystemError)
    );
    for _ in 0..300 {
        if processes_with("sleep 4242").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        processes_with("sleep 4242").is_empty(),
        "the sandbox outlived its worker"
    );
    assert_eq!(files_with_canary(&server.data), Vec::<String>::new());
    // The killed worker could not remove its identity token directory; the server did.
    let tokens: Vec<String> = entries(std::path::Path::new("/dev/shm"))
        .into_iter()
        .filter(|e| e.contains(&id))
        .collect();
    assert!(tokens.is_empty(), "{tokens:?}");
}

#[tokio::test]
async fn a_deleted_workspace_takes_its_secrets_and_a_demoted_member_gets_none() {
    let server = TestServer::start_with(|s| s.services.local.slots = 1).await;
    let tes = genomics_with(&server, &[("A", CANARY)]).await;
    let bob = server.user("bob").await;
    server
        .admin
        .set_member("genomics", &bob.id, "launch")
        .await
        .unwrap();

    // Bob's task waits behind a blocker; bob is demoted before it starts: it gets no secret.
    let blocker = tes.create_task(&sh_task("sleep 30")).await.unwrap();
    wait_state(&tes, &blocker, tresor_api_types::tes::TesState::Running).await;
    let queued = bob
        .tes_in("genomics")
        .create_task(&with_secrets(sh_task("true"), "A", ""))
        .await
        .unwrap();
    server
        .admin
        .set_member("genomics", &bob.id, "view")
        .await
        .unwrap();
    tes.cancel_task(&blocker).await.unwrap();
    let done = wait_terminal(&tes, &queued).await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::SystemError),
        "{done:#?}"
    );
    assert!(
        system_logs(&done).contains("could not fetch the task's secrets"),
        "{}",
        system_logs(&done)
    );

    // Deleting the workspace deletes its secrets, and its id is never given out again: nobody
    // re-creates it to inherit anything.
    server.admin.delete_workspace("genomics").await.unwrap();
    let live = server.store().await.live_secret_keys().await.unwrap();
    assert!(
        live.iter().all(|k| k.workspace.as_str() != "genomics"),
        "{live:?}"
    );
    let err = bob.platform.create_workspace("genomics").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert!(
        err.to_string().contains("belonged to a deleted workspace"),
        "{err}"
    );
}

#[tokio::test]
async fn a_members_value_hides_only_itself_never_words_of_every_task() {
    let server = TestServer::start().await;
    // Values as short as a common word are refused, saying the rule and never the value.
    server.admin.create_workspace("genomics").await.unwrap();
    for short in [&b"task"[..], b"WARN", b"secrets"] {
        let err = server
            .admin
            .put_secret("genomics", false, "SHORT", short, None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert!(err.to_string().contains("8 to 65536 bytes"), "{err}");
    }
    // A value equal to the tag that declares secrets, and to a schema word, block nothing
    // but themselves.
    for (name, value) in [
        ("TAG_NAME", &b"tresor.secrets"[..]),
        ("FIELD", b"executors"),
        ("DB_PASSWORD", b"hunter2-but-longer"),
    ] {
        server
            .admin
            .put_secret("genomics", false, name, value, None)
            .await
            .unwrap();
    }
    let tes = tresor_client::TesClient::for_workspace(&server.url, "genomics", &server.admin_token)
        .unwrap();
    let ordinary = with_secrets(sh_task("echo ok"), "DB_PASSWORD", "");
    let done = server.run_in(&tes, &ordinary).await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::Complete),
        "{}",
        system_logs(&done)
    );
    let pasted = with_secrets(sh_task("echo executors"), "DB_PASSWORD", "");
    let resp = tes
        .post_raw("tasks", serde_json::to_vec(&pasted).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);
    assert!(
        resp.body.contains("value of a stored secret"),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn a_value_shorter_than_the_minimum_stored_before_it_existed_is_never_delivered() {
    let server = TestServer::start().await;
    let tes = genomics_with(&server, &[]).await;
    // A 7-byte value, stored the way a server from before the 8-byte minimum stored it: sealed
    // under the server's KEK with the associated data that binds it to its row, and written
    // with its audit event, straight into the database.
    const SHORT: &str = "Q7#zK9w";
    let name = "OLD_PIN";
    let store = server.store().await;
    let keys = tresor_crypto::KeyRing::open_or_create(&server.data.join("kek")).unwrap();
    let key = tresor_store::SecretKey {
        workspace: tresor_domain::WorkspaceId::parse("genomics").unwrap(),
        owner: None,
        name: name.to_owned(),
    };
    let version = 1;
    // workspace, scope, owner (none), name, version, as `tresor_service::secrets::aad` has them.
    let aad = format!("tresor-secret/v1\0genomics\0workspace\0\0{name}\0{version}");
    let sealed = tresor_crypto::seal(
        &keys,
        &SecretValue::new(SHORT.as_bytes().to_vec()),
        aad.as_bytes(),
    )
    .unwrap();
    let admin = tresor_domain::UserId::parse(&server.admin.me().await.unwrap().id).unwrap();
    store
        .put_secret_version(
            &key,
            None,
            version,
            &tresor_store::SealedRow {
                kek_id: sealed.kek_id,
                wrapped_key: sealed.wrapped_key,
                ciphertext: sealed.ciphertext,
            },
            &admin,
            &tresor_store::AuditEvent {
                actor: admin.to_string(),
                action: "secret.create".to_owned(),
                object: format!("secret:workspace:{name}"),
                workspace: Some("genomics".to_owned()),
                source: None,
                result: "ok".to_owned(),
                detail: Some(format!("version {version}")),
            },
        )
        .await
        .unwrap();

    // A task declaring it is accepted (the secret exists), but fails at start without it:
    // logs could not hide a value that short.
    let done = server
        .run_in(
            &tes,
            &with_secrets(
                sh_task(&format!(r#"cat "$TRESOR_SECRETS_DIR/{name}""#)),
                name,
                "",
            ),
        )
        .await;
    assert_eq!(
        done.state,
        Some(tresor_api_types::tes::TesState::SystemError),
        "{done:#?}"
    );
    let why = system_logs(&done);
    assert!(why.contains(name), "{why}");
    assert!(why.contains("at least 8 bytes"), "{why}");
    let everything = serde_json::to_string(&done).unwrap();
    assert!(!everything.contains(SHORT), "{everything}");
    // Nothing was delivered, so nothing is recorded as delivered.
    let events = store.audit_events(10_000).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e.contains("\"action\":\"secret.deliver\"")),
        "{events:?}"
    );
}

#[tokio::test]
async fn secret_counts_and_bytes_are_limited_per_workspace_and_per_user() {
    let server = TestServer::start_with(|s| {
        s.services.secret_limits = tresor_service::SecretLimits {
            workspace_count: 3,
            workspace_bytes: 100,
            user_count: 2,
            user_bytes: 30,
            total_bytes: 130,
        };
    })
    .await;
    server.admin.create_workspace("lab").await.unwrap();
    server.admin.create_workspace("other").await.unwrap();
    server.admin.create_workspace("third").await.unwrap();
    let value = |i: u8| vec![b'a' + i; 20];
    for i in 0..3 {
        server
            .admin
            .put_secret("lab", false, &format!("S{i}"), &value(i), None)
            .await
            .unwrap();
    }
    let err = server
        .admin
        .put_secret("lab", false, "S3", &value(3), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    assert!(
        err.to_string().contains("secrets.max_per_workspace"),
        "{err}"
    );
    assert!(err.to_string().contains("limit of 3"), "{err}");
    // A new version of an existing secret replaces its value, so it still fits.
    server
        .admin
        .put_secret("lab", false, "S0", &value(9), Some(1))
        .await
        .unwrap();
    // Bytes: one large value in a fresh workspace.
    let err = server
        .admin
        .put_secret("other", false, "BIG", &[b'x'; 101], None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("secrets.max_bytes_per_workspace"),
        "{err}"
    );
    // A user's own secrets count across every workspace they are in.
    server
        .admin
        .put_secret("other", true, "MINE", &value(1), None)
        .await
        .unwrap();
    let err = server
        .admin
        .put_secret("third", true, "MINE_TOO", &value(2), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("secrets.max_bytes_per_user"),
        "{err}"
    );
    // Deleting frees room.
    server
        .admin
        .delete_secret("lab", false, "S1")
        .await
        .unwrap();
    server
        .admin
        .put_secret("lab", false, "S3", &value(3), None)
        .await
        .unwrap();
    // The server's bytes count across every workspace: 80 are live, so a fresh workspace's
    // value that fits its own limit is refused once the total would pass 130.
    server.admin.create_workspace("fourth").await.unwrap();
    let err = server
        .admin
        .put_secret("fourth", false, "LARGE", &[b'y'; 51], None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    assert!(err.to_string().contains("secrets.max_bytes_total"), "{err}");
    assert!(err.to_string().contains("limit of 130"), "{err}");
    assert!(
        !err.to_string().contains("(131)"),
        "names no server total: {err}"
    );
    server
        .admin
        .put_secret("fourth", false, "LARGE", &[b'y'; 50], None)
        .await
        .unwrap();
}

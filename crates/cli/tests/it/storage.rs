//! s3:// inputs and outputs against a real S3 server (s3s-fs checks every signature): presigned
//! per object and method when the task starts, confined to the workspace's bucket and prefix.

use reqwest::StatusCode;
use tresor_api_types::tes::{TesFileType, TesInput, TesOutput, TesTask, TesView};

use crate::support::*;

fn s3_input(url: &str, path: &str, kind: TesFileType) -> TesInput {
    TesInput {
        url: Some(url.to_owned()),
        path: path.to_owned(),
        file_type: Some(kind),
        ..TesInput::default()
    }
}

fn s3_output(url: &str, path: &str, kind: TesFileType) -> TesOutput {
    TesOutput {
        url: url.to_owned(),
        path: path.to_owned(),
        file_type: Some(kind),
        ..TesOutput::default()
    }
}

#[tokio::test]
async fn s3_inputs_and_outputs_run_end_to_end_through_presigned_urls() {
    let s3 = S3Server::start().await;
    let server =
        TestServer::start_with(|s| s.services.s3 = Some(std::sync::Arc::new(s3.settings()))).await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let base = "workspaces/lab";
    s3.put(&format!("{base}/in/reads.txt"), b"ACGT\n").await;
    s3.put(&format!("{base}/in/ref/a.txt"), b"ref-a\n").await;
    s3.put(&format!("{base}/in/ref/sub/b.txt"), b"ref-b\n")
        .await;

    let url = |key: &str| format!("s3://tresor/{base}/{key}");
    let task = TesTask {
        inputs: Some(vec![
            s3_input(&url("in/reads.txt"), "/data/reads.txt", TesFileType::File),
            s3_input(&url("in/ref"), "/data/ref", TesFileType::Directory),
        ]),
        outputs: Some(vec![
            s3_output(&url("out/joined.txt"), "/out/joined.txt", TesFileType::File),
            s3_output(&url("out/tree"), "/out/tree", TesFileType::Directory),
        ]),
        ..sh_task(
            "cat /data/reads.txt /data/ref/a.txt /data/ref/sub/b.txt > /out/joined.txt && \
             mkdir -p /out/tree/x && echo one > /out/tree/one && echo two > /out/tree/x/two && \
             env | sort",
        )
    };
    let tes = alice.tes_in("lab");
    let id = tes.create_task(&task).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    assert_complete(&done);
    assert_eq!(
        s3.object(&format!("{base}/out/joined.txt")).unwrap(),
        b"ACGT\nref-a\nref-b\n"
    );
    assert_eq!(
        s3.object(&format!("{base}/out/tree/one")).unwrap(),
        b"one\n"
    );
    assert_eq!(
        s3.object(&format!("{base}/out/tree/x/two")).unwrap(),
        b"two\n"
    );
    let full = tes.get_task(&id, TesView::Full).await.unwrap();
    let outputs = &full.logs.as_ref().unwrap()[0].outputs;
    let mut delivered: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| (o.url.as_str(), o.size_bytes.as_str()))
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            (url("out/joined.txt").as_str(), "17"),
            (url("out/tree/one").as_str(), "4"),
            (url("out/tree/x/two").as_str(), "4"),
        ]
    );
    // The task saw no storage credential, and no document or log holds a signature or key.
    let env = stdout(&full, 0);
    assert!(
        !env.contains("AWS_ACCESS_KEY") && !env.contains(S3_SECRET),
        "{env}"
    );
    let document = serde_json::to_string(&full).unwrap();
    for leak in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        S3_ACCESS_KEY,
        S3_SECRET,
    ] {
        assert!(!document.contains(leak), "{leak} in {document}");
    }
}

#[tokio::test]
async fn tasks_reach_only_their_own_workspaces_storage() {
    let s3 = S3Server::start().await;
    let server =
        TestServer::start_with(|s| s.services.s3 = Some(std::sync::Arc::new(s3.settings()))).await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    alice.platform.create_workspace("other").await.unwrap();
    let tes = alice.tes_in("lab");
    let refused = |url: &str| {
        let task = TesTask {
            inputs: Some(vec![s3_input(url, "/data/in", TesFileType::File)]),
            ..sh_task("true")
        };
        let tes = tes.clone();
        async move {
            tes.post_raw("tasks", serde_json::to_vec(&task).unwrap())
                .await
                .unwrap()
        }
    };
    for url in [
        "s3://tresor/workspaces/other/secret.vcf",
        "s3://tresor/workspaces/lab-evil/x",
        "s3://another-bucket/workspaces/lab/x",
    ] {
        let resp = refused(url).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{url}: {}", resp.body);
        assert!(
            resp.body.contains("inputs[0].url")
                && resp.body.contains("outside this workspace's storage"),
            "{url}: {}",
            resp.body
        );
    }
    let resp = refused("s3://tresor/workspaces/lab/../other/x").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);

    // Only a platform administrator moves a workspace, and never into another one's prefix.
    let denied = alice
        .platform
        .set_storage("lab", "tresor", "projects/lab/")
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("platform administrator"),
        "{denied}"
    );
    server
        .admin
        .set_storage("other", "tresor", "projects/shared/")
        .await
        .unwrap();
    let overlap = server
        .admin
        .set_storage("lab", "tresor", "projects/")
        .await
        .unwrap_err();
    assert!(overlap.to_string().contains("overlaps"), "{overlap}");
    server
        .admin
        .set_storage("lab", "tresor", "projects/lab/")
        .await
        .unwrap();
    let location = alice.platform.storage("lab").await.unwrap();
    assert_eq!(location.url.as_deref(), Some("s3://tresor/projects/lab/"));
    // The old default prefix is no longer the workspace's.
    let resp = refused("s3://tresor/workspaces/lab/x").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);
    s3.put("projects/lab/x", b"moved\n").await;
    let task = TesTask {
        inputs: Some(vec![s3_input(
            "s3://tresor/projects/lab/x",
            "/in/x",
            TesFileType::File,
        )]),
        ..sh_task("cat /in/x")
    };
    let done = server.run_in(&tes, &task).await;
    assert_eq!(stdout(&done, 0), "moved\n", "{}", system_logs(&done));

    // Without storage configured at all, s3:// is refused with what to do.
    let plain = TestServer::start().await;
    let task = TesTask {
        inputs: Some(vec![s3_input(
            "s3://tresor/x/y",
            "/data/in",
            TesFileType::File,
        )]),
        ..sh_task("true")
    };
    let resp = plain
        .client
        .post_raw("tasks", serde_json::to_vec(&task).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(
        resp.body.contains("no S3 storage configured"),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn an_expired_or_altered_presigned_url_is_refused_by_the_storage_server() {
    let s3 = S3Server::start().await;
    s3.put("workspaces/lab/data.txt", b"payload").await;
    s3.put("workspaces/other/data.txt", b"not yours").await;
    let dir = tempfile::tempdir().unwrap();
    let store = tresor_store::Store::connect(&tresor_store::StoreSettings {
        path: dir.path().join("db"),
        durability: tresor_store::Durability::Normal,
        audit_key_file: dir.path().join("audit-key"),
    })
    .await
    .unwrap();
    let storage = tresor_service::StorageService::new(
        store,
        Some(std::sync::Arc::new(s3.settings())),
        Vec::new(),
    );
    let http = reqwest::Client::new();
    let url = storage
        .presign(
            tresor_service::storage::Method::GET,
            "tresor",
            "workspaces/lab/data.txt",
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap();
    let fresh = http.get(&url).send().await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.bytes().await.unwrap().as_ref(), b"payload");
    let moved = url.replace("workspaces/lab/", "workspaces/other/");
    assert_eq!(
        http.get(&moved).send().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "a signature does not open another object"
    );
    let as_put = http.put(&url).body("overwrite").send().await.unwrap();
    assert_eq!(as_put.status(), StatusCode::FORBIDDEN, "nor another method");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "an expired URL is refused"
    );
}

#[tokio::test]
async fn presigned_urls_and_tokens_never_reach_a_log_even_at_trace_level() {
    let s3 = S3Server::start().await;
    s3.put("workspaces/lab/in.txt", b"input\n").await;
    let dir = traversable_tempdir();
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&secret_file, S3_SECRET).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("tresor.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nendpoint = \"{}\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\ndefault_bucket = \"tresor\"\n",
            s3.endpoint,
            secret_file.display()
        ),
    )
    .unwrap();
    let server = crate::crash::spawn_server_with(dir.path(), Some(&config));
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-admin-token")).unwrap();
    let url = server.client_url();
    let admin = tresor_client::PlatformClient::new(&url, Some(token.trim())).unwrap();
    admin.create_workspace("lab").await.unwrap();
    let tes = tresor_client::TesClient::for_workspace(&url, "lab", token.trim()).unwrap();
    let task = TesTask {
        inputs: Some(vec![s3_input(
            "s3://tresor/workspaces/lab/in.txt",
            "/data/in.txt",
            TesFileType::File,
        )]),
        outputs: Some(vec![s3_output(
            "s3://tresor/workspaces/lab/out.txt",
            "/data/out.txt",
            TesFileType::File,
        )]),
        // The task prints its own token: its log shows it masked.
        ..sh_task(r#"cp /data/in.txt /data/out.txt; cat "$TRESOR_IDENTITY_TOKEN_FILE""#)
    };
    let id = tes.create_task(&task).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    assert_complete(&done);
    assert_eq!(s3.object("workspaces/lab/out.txt").unwrap(), b"input\n");
    assert_eq!(stdout(&done, 0), "***");
    drop(server);
    let log = String::from_utf8_lossy(&std::fs::read(dir.path().join("server.log")).unwrap())
        .into_owned();
    assert!(
        log.len() > 10_000,
        "trace logging was on ({} bytes)",
        log.len()
    );
    let jwt = regex_free_find(&log, "eyJ");
    assert!(jwt.is_none(), "a JWT in the server log: {jwt:?}");
    for (i, _) in log.match_indices("X-Amz-Signature=") {
        let value = &log[i + "X-Amz-Signature=".len()..];
        assert!(
            value.starts_with("***"),
            "an unmasked signature: {}",
            &log[i..i + 40]
        );
    }
    assert!(!log.contains(S3_SECRET));
}

/// The first occurrence of `needle` followed by at least 20 base64url characters.
fn regex_free_find<'a>(haystack: &'a str, needle: &str) -> Option<&'a str> {
    haystack.match_indices(needle).find_map(|(i, _)| {
        let rest = &haystack[i..];
        let run = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .count();
        (run >= 20).then(|| &rest[..run.min(60)])
    })
}

//! The workspace as a hard boundary, tried the way a hostile member of another workspace would:
//! `file://` storage is one directory per workspace, and nothing outside it is reachable.

use reqwest::StatusCode;
use tresor_api_types::tes::{TesFileType, TesInput, TesOutput, TesState, TesTask};

use crate::support::*;

fn file_input(url: &str, path: &str, kind: TesFileType) -> TesInput {
    TesInput {
        url: Some(url.to_owned()),
        path: path.to_owned(),
        file_type: Some(kind),
        ..TesInput::default()
    }
}

fn file_output(url: &str, path: &str) -> TesOutput {
    TesOutput {
        url: url.to_owned(),
        path: path.to_owned(),
        ..TesOutput::default()
    }
}

/// Submits `task` raw and returns the refusal.
async fn refusal(client: &tresor_client::TesClient, task: &TesTask) -> (StatusCode, String) {
    let resp = client
        .post_raw("tasks", serde_json::to_vec(task).unwrap())
        .await
        .unwrap();
    (resp.status, resp.body)
}

#[tokio::test]
async fn another_workspaces_files_cannot_be_read_listed_or_overwritten() {
    let server = TestServer::start().await;
    let area = server.storage.parent().unwrap().to_path_buf();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let alice_ws = alice.platform.me().await.unwrap().personal_workspace;
    let bob_ws = bob.platform.me().await.unwrap().personal_workspace;

    // Alice's task writes her result into her own directory.
    let mine = format!("file://{}/{alice_ws}/result.txt", area.display());
    let task = TesTask {
        outputs: Some(vec![file_output(&mine, "/out/result.txt")]),
        ..sh_task("echo alice-result > /out/result.txt")
    };
    let done = server.run_in(&alice.tes, &task).await;
    assert_eq!(
        done.state,
        Some(TesState::Complete),
        "{}",
        system_logs(&done)
    );
    let result = area.join(&alice_ws).join("result.txt");
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "alice-result\n");
    let info = alice.platform.file_storage(&alice_ws).await.unwrap();
    assert_eq!(
        info.dir,
        area.join(&alice_ws).display().to_string(),
        "{info:?}"
    );
    assert_eq!(info.assigned, Some(false));

    // Bob reads her file, lists the whole area, and overwrites her file: each a 400 naming
    // the field and the workspace's own directory.
    let read = TesTask {
        inputs: Some(vec![file_input(&mine, "/in/r.txt", TesFileType::File)]),
        ..sh_task("cat /in/r.txt")
    };
    let (status, body) = refusal(&bob.tes, &read).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("inputs[0].url"), "{body}");
    assert!(
        body.contains(&format!("{}/{bob_ws}/", area.display())),
        "{body}"
    );
    let list = TesTask {
        inputs: Some(vec![file_input(
            &format!("file://{}", area.display()),
            "/in",
            TesFileType::Directory,
        )]),
        ..sh_task("ls -R /in")
    };
    let (status, body) = refusal(&bob.tes, &list).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("inputs[0].url"), "{body}");
    let overwrite = TesTask {
        outputs: Some(vec![file_output(&mine, "/out/x")]),
        ..sh_task("echo bob > /out/x")
    };
    let (status, body) = refusal(&bob.tes, &overwrite).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("outputs[0].url"), "{body}");
    // A percent-encoded `..` does not climb out of his directory either.
    let climb = TesTask {
        inputs: Some(vec![file_input(
            &format!(
                "file://{}/{bob_ws}/%2E%2E/{alice_ws}/result.txt",
                area.display()
            ),
            "/in/r.txt",
            TesFileType::File,
        )]),
        ..sh_task("cat /in/r.txt")
    };
    let (status, body) = refusal(&bob.tes, &climb).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A link in his own directory that points into hers is refused by the worker, which
    // resolves links and checks again.
    std::fs::create_dir_all(area.join(&bob_ws)).unwrap();
    std::os::unix::fs::symlink(&result, area.join(&bob_ws).join("link.txt")).unwrap();
    let via_link = TesTask {
        inputs: Some(vec![file_input(
            &format!("file://{}/{bob_ws}/link.txt", area.display()),
            "/in/r.txt",
            TesFileType::File,
        )]),
        ..sh_task("cat /in/r.txt")
    };
    let done = server.run_in(&bob.tes, &via_link).await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(!format!("{done:?}").contains("alice-result"), "{done:?}");
    assert!(
        system_logs(&done).contains("outside the directories"),
        "{}",
        system_logs(&done)
    );

    // Her file is untouched, and her directory's settings are not his to see.
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "alice-result\n");
    let hidden = bob.platform.file_storage(&alice_ws).await.unwrap_err();
    assert!(hidden.to_string().contains("404"), "{hidden}");
}

#[tokio::test]
async fn an_administrator_gives_a_workspace_its_own_directory_and_no_two_overlap() {
    let extra = traversable_tempdir();
    let projects = std::fs::canonicalize(extra.path()).unwrap();
    let server = TestServer::start_with(|s| s.local.allowed_dirs.push(projects.clone())).await;
    let area = server.storage.parent().unwrap().to_path_buf();
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    alice.platform.create_workspace("other").await.unwrap();
    for dir in ["lab", "lab/sub", "shared"] {
        std::fs::create_dir_all(projects.join(dir)).unwrap();
    }
    std::fs::create_dir_all(area.join("x")).unwrap();
    let lab_dir = projects.join("lab").display().to_string();

    // Only a platform administrator may choose.
    let denied = alice
        .platform
        .set_file_storage("lab", Some(&lab_dir))
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("platform administrator"),
        "{denied}"
    );
    server
        .admin
        .set_file_storage("lab", Some(&lab_dir))
        .await
        .unwrap();
    for (dir, why) in [
        (projects.join("lab/sub"), "overlaps"),
        (projects.clone(), "overlaps"),
        (area.join("x"), "outside"),
        (projects.join("missing"), "create the directory first"),
    ] {
        let err = server
            .admin
            .set_file_storage("other", Some(&dir.display().to_string()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{}: {err}", dir.display());
    }
    let relative = server
        .admin
        .set_file_storage("other", Some("shared/../lab"))
        .await
        .unwrap_err();
    assert!(relative.to_string().contains("absolute"), "{relative}");

    let info = alice.platform.file_storage("lab").await.unwrap();
    assert_eq!(info.dir, lab_dir);
    assert_eq!(info.assigned, Some(true));

    // The lab's tasks now use its own directory, and no longer the default one.
    let tes = alice.tes_in("lab");
    let task = TesTask {
        outputs: Some(vec![file_output(
            &format!("file://{lab_dir}/out.txt"),
            "/out/out.txt",
        )]),
        ..sh_task("echo lab > /out/out.txt")
    };
    let done = server.run_in(&tes, &task).await;
    assert_eq!(
        done.state,
        Some(TesState::Complete),
        "{}",
        system_logs(&done)
    );
    assert_eq!(
        std::fs::read_to_string(projects.join("lab/out.txt")).unwrap(),
        "lab\n"
    );
    let old_default = TesTask {
        outputs: Some(vec![file_output(
            &format!("file://{}/lab/out.txt", area.display()),
            "/out/out.txt",
        )]),
        ..sh_task("true")
    };
    let (status, body) = refusal(&tes, &old_default).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains(&lab_dir), "{body}");

    // Another workspace cannot reach into the lab's directory.
    let other = TesTask {
        inputs: Some(vec![file_input(
            &format!("file://{lab_dir}/out.txt"),
            "/in/x",
            TesFileType::File,
        )]),
        ..sh_task("cat /in/x")
    };
    let (status, body) = refusal(&alice.tes_in("other"), &other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Back to the default.
    server.admin.set_file_storage("lab", None).await.unwrap();
    let info = alice.platform.file_storage("lab").await.unwrap();
    assert_eq!(info.dir, area.join("lab").display().to_string());
}

#[tokio::test]
async fn an_administrator_may_give_a_workspace_a_whole_bucket_of_its_own() {
    let s3 = S3Server::start().await;
    let server = TestServer::start_with(|s| s.s3 = Some(std::sync::Arc::new(s3.settings()))).await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    alice.platform.create_workspace("whole").await.unwrap();

    // The default bucket holds every workspace's default prefix: it cannot be one's alone.
    let err = server
        .admin
        .set_storage("whole", "tresor", "")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("overlaps the default storage"),
        "{err}"
    );
    server
        .admin
        .set_storage("whole", "project-bucket", "")
        .await
        .unwrap();
    let location = alice.platform.storage("whole").await.unwrap();
    assert_eq!(location.url.as_deref(), Some("s3://project-bucket/"));
    // No other workspace may take part of that bucket.
    let err = server
        .admin
        .set_storage("lab", "project-bucket", "lab/")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");

    let tes = alice.tes_in("whole");
    let anywhere = TesTask {
        outputs: Some(vec![TesOutput {
            url: "s3://project-bucket/any/key.txt".to_owned(),
            path: "/out/key.txt".to_owned(),
            ..TesOutput::default()
        }]),
        ..sh_task("true")
    };
    let id = tes.create_task(&anywhere).await.unwrap();
    wait_terminal(&tes, &id).await;
    let (status, body) = refusal(&alice.tes_in("lab"), &anywhere).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("outputs[0].url"), "{body}");
}

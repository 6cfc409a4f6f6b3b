//! The workspace as a hard boundary, tried the way a hostile member of another workspace would:
//! `file://` storage is one directory per workspace, and nothing outside it is reachable; a
//! workspace's id, files and host group are never handed on to another workspace.

use std::os::unix::fs::MetadataExt;

use reqwest::StatusCode;
use tresor_api_types::tes::{TesFileType, TesInput, TesOutput, TesState, TesTask, TesView};
use tresor_domain::WorkspaceId;

use crate::host_users::root_or_skip;
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
    assert_complete(&done);
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
    server.make_storage(&bob.tes, &area.join(&bob_ws)).await;
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
    let server =
        TestServer::start_with(|s| s.services.local.allowed_dirs.push(projects.clone())).await;
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
    assert_complete(&done);
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
    let server =
        TestServer::start_with(|s| s.services.s3 = Some(std::sync::Arc::new(s3.settings()))).await;
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

/// Deleting a workspace leaves its files on the host (and its objects under its prefix), and
/// outside services trust the `sub` its tasks' tokens carried: whoever created the id again would
/// inherit all of it, so the id is never given out again.
#[tokio::test]
async fn a_deleted_workspaces_id_is_never_given_to_anyone_again() {
    let server = TestServer::start().await;
    let area = server.storage.parent().unwrap().to_path_buf();
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let result = format!("file://{}/lab/result.txt", area.display());
    let task = TesTask {
        outputs: Some(vec![file_output(&result, "/out/result.txt")]),
        ..sh_task("echo lab-result > /out/result.txt")
    };
    let done = server.run_in(&alice.tes_in("lab"), &task).await;
    assert_complete(&done);
    alice.platform.delete_workspace("lab").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(area.join("lab/result.txt")).unwrap(),
        "lab-result\n",
        "the deleted workspace's files stay on the host"
    );

    // Neither a stranger, nor its former owner, nor a platform administrator gets the id.
    for platform in [&mallory.platform, &alice.platform, &server.admin] {
        let err = platform.create_workspace("lab").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("belonged to a deleted workspace")
                && message.contains("choose another id"),
            "{message}"
        );
    }
    let read = TesTask {
        inputs: Some(vec![file_input(&result, "/in/r.txt", TesFileType::File)]),
        ..sh_task("cat /in/r.txt")
    };
    let err = mallory.tes_in("lab").create_task(&read).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");
    assert_eq!(
        std::fs::read_to_string(area.join("lab/result.txt")).unwrap(),
        "lab-result\n"
    );
    // Other ids are still free.
    mallory.platform.create_workspace("lab2").await.unwrap();
}

/// A directory in the first allowed dir that tresor did not make (a project's data left there,
/// or a deleted workspace's from before ids were retired) is not adopted by a workspace whose
/// id happens to name it: its tasks fail saying so, and nothing in it is read or changed. Only a
/// platform administrator's explicit assignment gives it to the workspace.
#[tokio::test]
async fn a_directory_tresor_did_not_make_is_not_adopted_by_the_workspace_it_names() {
    if !root_or_skip("a_directory_tresor_did_not_make_is_not_adopted") {
        return;
    }
    let server = TestServer::start().await;
    let area = server.storage.parent().unwrap().to_path_buf();
    let projects = area.join("projects");
    std::fs::create_dir(&projects).unwrap();
    std::fs::write(projects.join("data.txt"), "project-data\n").unwrap();
    let before = std::fs::metadata(&projects).unwrap();

    let mallory = server.user("mallory").await;
    mallory.platform.create_workspace("projects").await.unwrap();
    let tes = mallory.tes_in("projects");
    let data = format!("file://{}/data.txt", projects.display());
    let steal = TesTask {
        inputs: Some(vec![file_input(&data, "/in/data.txt", TesFileType::File)]),
        outputs: Some(vec![file_output(&data, "/out/data.txt")]),
        ..sh_task("cat /in/data.txt; echo mallory > /out/data.txt")
    };
    let done = server.run_in(&tes, &steal).await;
    assert_eq!(done.state, Some(TesState::SystemError), "{done:#?}");
    let logs = system_logs(&done);
    assert!(
        logs.contains(&format!(
            "{} exists but tresor did not create it for workspace projects",
            projects.display()
        )) && logs.contains("PUT /api/v1/workspaces/projects/file-storage"),
        "{logs}"
    );
    assert!(!format!("{done:?}").contains("project-data"), "{done:?}");
    assert_eq!(
        std::fs::read_to_string(projects.join("data.txt")).unwrap(),
        "project-data\n"
    );
    let after = std::fs::metadata(&projects).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode()),
        "the directory kept its owner, group and mode"
    );
    let store = server.store().await;
    let id = WorkspaceId::parse("projects").unwrap();
    assert_eq!(store.workspace_gid(&id).await.unwrap(), None);

    // A platform administrator who means it assigns the directory: then it is the workspace's.
    server
        .admin
        .set_file_storage("projects", Some(&projects.display().to_string()))
        .await
        .unwrap();
    let info = mallory.platform.file_storage("projects").await.unwrap();
    assert_eq!(
        (info.dir.as_str(), info.assigned),
        (projects.display().to_string().as_str(), Some(true))
    );
    let read = TesTask {
        inputs: Some(vec![file_input(&data, "/in/data.txt", TesFileType::File)]),
        ..sh_task("cat /in/data.txt")
    };
    let done = server.run_in(&tes, &read).await;
    assert_complete(&done);
    assert_eq!(stdout(&done, 0), "project-data\n");
    let gid = store.workspace_gid(&id).await.unwrap().unwrap();
    let adopted = std::fs::metadata(&projects).unwrap();
    assert_eq!(
        (adopted.uid(), adopted.gid(), adopted.mode() & 0o7777),
        (before.uid(), gid, 0o2770)
    );
}

/// Each workspace's directory gets a host group that no other workspace has, now or ever, and
/// the store records it; a directory holding a workspace's group is no proof that tresor made
/// it for another.
#[tokio::test]
async fn every_workspace_gets_a_recorded_group_of_its_own() {
    if !root_or_skip("every_workspace_gets_a_recorded_group_of_its_own") {
        return;
    }
    let mut gids = None;
    let server = TestServer::start_with(|s| gids = s.services.local.workspace_gids.clone()).await;
    let gids = gids.unwrap();
    let area = server.storage.parent().unwrap().to_path_buf();
    let store = server.store().await;
    let tes_in = |ws: &str| {
        tresor_client::TesClient::for_workspace(&server.url, ws, &server.admin_token).unwrap()
    };
    let mut groups = Vec::new();
    for ws in ["lab", "other", "next"] {
        if ws == "next" {
            // A deleted workspace keeps its group: the next workspace gets another.
            server.admin.delete_workspace("other").await.unwrap();
        }
        server.admin.create_workspace(ws).await.unwrap();
        server.make_storage(&tes_in(ws), &area.join(ws)).await;
        let dir = std::fs::metadata(area.join(ws)).unwrap();
        assert!(gids.contains(&dir.gid()), "{} in {gids:?}", dir.gid());
        assert_eq!((dir.uid(), dir.mode() & 0o7777), (0, 0o2770));
        let recorded = store
            .workspace_gid(&WorkspaceId::parse(ws).unwrap())
            .await
            .unwrap();
        assert_eq!(recorded, Some(dir.gid()), "{ws}");
        assert!(
            !groups.contains(&dir.gid()),
            "{ws}: {} in {groups:?}",
            dir.gid()
        );
        groups.push(dir.gid());
    }
    assert_eq!(
        store
            .workspace_gid(&WorkspaceId::parse("other").unwrap())
            .await
            .unwrap(),
        Some(groups[1]),
        "the deleted workspace's group stays recorded"
    );

    // A directory made by hand with the lab's group is not taken for one tresor made.
    let squat = area.join("squat");
    std::fs::create_dir(&squat).unwrap();
    std::os::unix::fs::lchown(&squat, None, Some(groups[0])).unwrap();
    server.admin.create_workspace("squat").await.unwrap();
    let done = server.run_in(&tes_in("squat"), &sh_task("true")).await;
    assert_eq!(done.state, Some(TesState::SystemError), "{done:#?}");
    assert!(
        system_logs(&done).contains("exists but tresor did not create it for workspace squat"),
        "{}",
        system_logs(&done)
    );
    // Nor is the lab's own directory once its group was changed behind tresor's back.
    std::os::unix::fs::lchown(area.join("lab"), None, Some(groups[2])).unwrap();
    let done = server.run_in(&tes_in("lab"), &sh_task("true")).await;
    assert_eq!(done.state, Some(TesState::SystemError), "{done:#?}");
    assert!(
        system_logs(&done).contains(&format!(
            "has group {}, not workspace lab's group {}",
            groups[2], groups[0]
        )),
        "{}",
        system_logs(&done)
    );
}

/// Every worker now reports over HTTP. A worker's session is bound to its own task: another
/// workspace's task cannot be moved with it, and neither can its own task once it ended.
#[tokio::test]
async fn a_task_credential_reports_for_its_own_task_only() {
    let server = TestServer::start().await;
    for ws in ["lab", "rival"] {
        server.admin.create_workspace(ws).await.unwrap();
    }
    let tes = |ws: &str| {
        tresor_client::TesClient::for_workspace(&server.url, ws, &server.admin_token).unwrap()
    };
    let (lab, rival) = (tes("lab"), tes("rival"));
    let mine = lab.create_task(&sh_task("sleep 30")).await.unwrap();
    let theirs = rival.create_task(&sh_task("sleep 30")).await.unwrap();
    wait_state(&lab, &mine, TesState::Running).await;
    wait_state(&rival, &theirs, TesState::Running).await;
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.data.join("work").join(&mine).join("task.json")).unwrap(),
    )
    .unwrap();
    let credential = spec["session"]["credential"].as_str().unwrap().to_owned();
    let report = |id: &str| {
        let url = format!("{}/internal/v1/tasks/{id}/status", server.url);
        let credential = credential.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(credential)
                .json(&serde_json::json!({
                    "phase": "COMPLETE",
                    "log": { "logs": [], "outputs": [] },
                }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(report(&theirs).await, StatusCode::UNAUTHORIZED);
    let task = rival.get_task(&theirs, TesView::Minimal).await.unwrap();
    assert_eq!(
        task.state,
        Some(TesState::Running),
        "the other task did not move"
    );

    lab.cancel_task(&mine).await.unwrap();
    assert_eq!(report(&mine).await, StatusCode::UNAUTHORIZED);
    let task = lab.get_task(&mine, TesView::Minimal).await.unwrap();
    assert_eq!(
        task.state,
        Some(TesState::Canceled),
        "an ended task is not revived"
    );
    rival.cancel_task(&theirs).await.unwrap();
}

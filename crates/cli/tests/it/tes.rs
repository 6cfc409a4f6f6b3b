//! TES 1.1 behaviour through the typed client: running tasks, views, filters, paging, cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use tresor_api_types::tes::{
    TesExecutor, TesFileType, TesInput, TesOutput, TesResources, TesState, TesTask, TesView,
};
use tresor_client::ListTasks;

use crate::support::*;

#[tokio::test]
async fn service_info_names_tes_1_1_and_the_host_runtime() {
    let server = TestServer::start().await;
    let info = server.client.service_info().await.unwrap();
    assert_eq!(
        (
            info.service_type.group.as_str(),
            info.service_type.artifact.as_str(),
            info.service_type.version.as_str()
        ),
        ("org.ga4gh", "tes", "1.1.0")
    );
    assert_eq!(
        info.storage,
        [format!(
            "file://{}",
            server.storage.parent().unwrap().display()
        )]
    );
    assert_eq!(
        info.tes_resources_backend_parameters,
        ["network", "time_limit"]
    );
    assert!(info.description.unwrap().contains("Runtime: host"));
}

/// A tiny HTTP server for http:// inputs: serves `body` at every path but /missing.
async fn http_fixture(body: &'static str) -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "no") }))
        .fallback(get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_task_stages_inputs_runs_executors_and_delivers_outputs() {
    let server = TestServer::start().await;
    let http = http_fixture("from http\n").await;
    server.make_storage(&server.client, &server.storage).await;
    std::fs::write(server.storage.join("local.txt"), "from file\n").unwrap();
    std::fs::create_dir_all(server.storage.join("indir/sub")).unwrap();
    std::fs::write(server.storage.join("indir/sub/a.txt"), "A").unwrap();

    let task = TesTask {
        name: Some("full-run".into()),
        inputs: Some(vec![
            TesInput {
                path: "/data/inline.txt".into(),
                content: Some("inline\n".into()),
                ..TesInput::default()
            },
            TesInput {
                path: "/data/local.txt".into(),
                url: Some(server.storage_url("local.txt")),
                ..TesInput::default()
            },
            TesInput {
                path: "/data/web.txt".into(),
                url: Some(format!("{http}/file.txt")),
                ..TesInput::default()
            },
            TesInput {
                path: "/indir".into(),
                url: Some(server.storage_url("indir")),
                file_type: Some(TesFileType::Directory),
                ..TesInput::default()
            },
        ]),
        outputs: Some(vec![
            TesOutput {
                path: "/data/joined.txt".into(),
                url: server.storage_url("out/joined.txt"),
                ..TesOutput::default()
            },
            TesOutput {
                path: "/results".into(),
                url: server.storage_url("out/results"),
                file_type: Some(TesFileType::Directory),
                ..TesOutput::default()
            },
            TesOutput {
                path: "/data/*.txt".into(),
                path_prefix: Some("/data".into()),
                url: server.storage_url("out/glob"),
                ..TesOutput::default()
            },
        ]),
        executors: vec![
            TesExecutor {
                stdout: Some("/data/joined.txt".into()),
                ..executor(&[
                    "sh",
                    "-c",
                    "cat /data/inline.txt /data/local.txt /data/web.txt /indir/sub/a.txt",
                ])
            },
            TesExecutor {
                workdir: Some("/results".into()),
                stdin: Some("/data/joined.txt".into()),
                env: Some(BTreeMap::from([("GREETING".into(), "hello".into())])),
                ..executor(&[
                    "sh",
                    "-c",
                    "mkdir -p deep && wc -l > deep/lines && echo \"$GREETING from $(pwd)\"",
                ])
            },
        ],
        volumes: Some(vec!["/results".into()]),
        tags: Some(BTreeMap::from([("project".into(), "demo".into())])),
        ..TesTask::default()
    };
    let done = server.run(&task).await;
    assert_eq!(done.state, Some(TesState::Complete), "{done:#?}");

    let joined = std::fs::read_to_string(server.storage.join("out/joined.txt")).unwrap();
    assert_eq!(joined, "inline\nfrom file\nfrom http\nA");
    assert_eq!(
        std::fs::read_to_string(server.storage.join("out/results/deep/lines"))
            .unwrap()
            .trim(),
        "3"
    );
    assert_eq!(stdout(&done, 1), "hello from /results\n");
    assert_eq!(
        stdout(&done, 0),
        "inline\nfrom file\nfrom http\nA",
        "stdout is kept as a tail even when redirected"
    );

    let log = done.logs.as_ref().unwrap().last().unwrap();
    let delivered: BTreeMap<&str, &str> = log
        .outputs
        .iter()
        .map(|o| (o.url.rsplit_once("/out/").unwrap().1, o.size_bytes.as_str()))
        .collect();
    assert_eq!(
        delivered,
        BTreeMap::from([
            ("joined.txt", "28"),
            ("results/deep/lines", "2"),
            ("glob/inline.txt", "7"),
            ("glob/local.txt", "10"),
            ("glob/web.txt", "10"),
            ("glob/joined.txt", "28"),
        ])
    );
    assert!(
        log.logs
            .iter()
            .all(|l| l.start_time.is_some() && l.end_time.is_some())
    );
    assert!(log.start_time.is_some() && log.end_time.is_some());
    assert!(system_logs(&done).contains("runtime: host"));
    assert_eq!(
        wait_for_no_task_dirs(&server.data.join("work")).await,
        Vec::<String>::new(),
        "the task directory is removed"
    );
}

#[tokio::test]
async fn executors_stop_at_the_first_error_unless_it_is_ignored() {
    let server = TestServer::start().await;
    let mut task = sh_task("echo one; exit 3");
    task.executors.push(executor(&["sh", "-c", "echo two"]));
    let failed = server.run(&task).await;
    assert_eq!(failed.state, Some(TesState::ExecutorError));
    let log = failed.logs.as_ref().unwrap().last().unwrap();
    assert_eq!(log.logs.len(), 1, "the second executor must not run");
    assert_eq!(log.logs[0].exit_code, 3);
    assert!(system_logs(&failed).contains("executor 0 exited with code 3"));

    task.executors[0].ignore_error = Some(true);
    let done = server.run(&task).await;
    assert_eq!(done.state, Some(TesState::Complete));
    let log = done.logs.as_ref().unwrap().last().unwrap();
    assert_eq!(
        log.logs.iter().map(|l| l.exit_code).collect::<Vec<_>>(),
        [3, 0]
    );
    assert_eq!(stdout(&done, 1), "two\n");
}

#[tokio::test]
async fn failures_name_their_cause_in_system_logs() {
    let server = TestServer::start().await;
    let http = http_fixture("x").await;

    let mut missing_output = sh_task("true");
    missing_output.outputs = Some(vec![TesOutput {
        path: "/data/never.txt".into(),
        url: server.storage_url("never.txt"),
        ..TesOutput::default()
    }]);
    let done = server.run(&missing_output).await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(
        system_logs(&done).contains("output /data/never.txt"),
        "{}",
        system_logs(&done)
    );

    let mut missing_input = sh_task("true");
    missing_input.inputs = Some(vec![TesInput {
        path: "/data/in".into(),
        url: Some(format!("{http}/missing")),
        ..TesInput::default()
    }]);
    let done = server.run(&missing_input).await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(
        system_logs(&done).contains("/missing: the server answered 404"),
        "{}",
        system_logs(&done)
    );

    let done = server
        .run(&TesTask {
            executors: vec![executor(&["no-such-program"])],
            ..TesTask::default()
        })
        .await;
    assert_eq!(done.state, Some(TesState::ExecutorError));
    assert_eq!(done.logs.as_ref().unwrap()[0].logs[0].exit_code, 127);
}

#[tokio::test]
async fn views_show_exactly_what_the_spec_says() {
    let server = TestServer::start().await;
    let mut task = sh_task("echo out; echo err >&2");
    task.inputs = Some(vec![TesInput {
        path: "/data/in".into(),
        content: Some("secret-ish".into()),
        ..TesInput::default()
    }]);
    let id = server.client.create_task(&task).await.unwrap();
    wait_terminal(&server.client, &id).await;

    let minimal = server.client.get_task(&id, TesView::Minimal).await.unwrap();
    assert_eq!(
        serde_json::to_value(&minimal).unwrap(),
        serde_json::json!({ "id": id, "state": "COMPLETE" })
    );
    let raw = server.client.get_raw(&format!("tasks/{id}")).await.unwrap();
    let default: serde_json::Value = serde_json::from_str(&raw.body).unwrap();
    assert_eq!(
        default,
        serde_json::json!({ "id": id, "state": "COMPLETE" }),
        "MINIMAL is the default"
    );

    let basic = server.client.get_task(&id, TesView::Basic).await.unwrap();
    assert_eq!(basic.executors.len(), 1);
    assert!(basic.creation_time.is_some());
    assert_eq!(basic.inputs.as_ref().unwrap()[0].content, None);
    let log = &basic.logs.as_ref().unwrap()[0];
    assert_eq!(log.system_logs, None);
    assert_eq!(
        (log.logs[0].stdout.clone(), log.logs[0].stderr.clone()),
        (None, None)
    );
    assert_eq!(log.logs[0].exit_code, 0);

    let full = server.client.get_task(&id, TesView::Full).await.unwrap();
    assert_eq!(
        full.inputs.as_ref().unwrap()[0].content.as_deref(),
        Some("secret-ish")
    );
    let log = &full.logs.as_ref().unwrap()[0];
    assert!(log.system_logs.is_some());
    assert_eq!(log.logs[0].stdout.as_deref(), Some("out\n"));
    assert_eq!(log.logs[0].stderr.as_deref(), Some("err\n"));
}

#[tokio::test]
async fn list_filters_by_name_state_and_tags_and_pages_stably() {
    let server = TestServer::start().await;
    let mk = |name: &str, tags: &[(&str, &str)], script: &str| {
        let mut t = sh_task(script);
        t.name = Some(name.into());
        t.tags = Some(
            tags.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        t
    };
    let mut ids = BTreeMap::new();
    for (name, tags, script) in [
        ("align-1", vec![("foo", "bar")], "true"),
        ("align-2", vec![("foo", "bat")], "true"),
        ("call-1", vec![("foo", "")], "true"),
        ("call-2", vec![("foo", "bar"), ("baz", "bat")], "exit 1"),
        ("Align-3", vec![], "true"),
    ] {
        let id = server
            .client
            .create_task(&mk(name, &tags, script))
            .await
            .unwrap();
        wait_terminal(&server.client, &id).await;
        ids.insert(name, id);
    }
    let names = |resp: tresor_api_types::tes::TesListTasksResponse| -> Vec<String> {
        let mut n: Vec<String> = resp.tasks.into_iter().map(|t| t.name.unwrap()).collect();
        n.sort();
        n
    };
    let list = |params: ListTasks| {
        let client = server.client.clone();
        async move {
            client
                .list_tasks(&ListTasks {
                    view: Some(TesView::Basic),
                    ..params
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(
        names(
            list(ListTasks {
                name_prefix: Some("align".into()),
                ..ListTasks::default()
            })
            .await
        ),
        ["align-1", "align-2"]
    );
    assert_eq!(
        names(
            list(ListTasks {
                state: Some(TesState::ExecutorError),
                ..ListTasks::default()
            })
            .await
        ),
        ["call-2"]
    );
    assert!(
        list(ListTasks {
            state: Some(TesState::Paused),
            ..ListTasks::default()
        })
        .await
        .tasks
        .is_empty()
    );
    let tags = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    };
    // The spec's truth table, row by row.
    assert_eq!(
        names(
            list(ListTasks {
                tags: tags(&[("foo", "bar")]),
                ..ListTasks::default()
            })
            .await
        ),
        ["align-1", "call-2"]
    );
    assert_eq!(
        names(
            list(ListTasks {
                tags: tags(&[("foo", "")]),
                ..ListTasks::default()
            })
            .await
        ),
        ["align-1", "align-2", "call-1", "call-2"]
    );
    assert_eq!(
        names(
            list(ListTasks {
                tags: tags(&[("foo", "bar"), ("baz", "bat")]),
                ..ListTasks::default()
            })
            .await
        ),
        ["call-2"]
    );
    // A tag_key without any tag_value matches any value.
    let raw = server
        .client
        .get_raw("tasks?tag_key=baz&view=BASIC")
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::OK);
    assert!(raw.body.contains("call-2") && !raw.body.contains("align-1"));

    // Paging: newest first, every task exactly once, stable while new tasks arrive.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = list(ListTasks {
            page_size: Some(2),
            page_token: token.clone(),
            view: Some(TesView::Minimal),
            ..ListTasks::default()
        })
        .await;
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.id.unwrap()));
        if seen.len() == 2 {
            server
                .client
                .create_task(&mk("late", &[], "true"))
                .await
                .unwrap();
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let expected: Vec<String> = ["Align-3", "call-2", "call-1", "align-2", "align-1"]
        .iter()
        .map(|n| ids[n].clone())
        .collect();
    assert_eq!(seen, expected);

    // The default page size is the spec's 256, and a single page needs no token.
    let all = list(ListTasks::default()).await;
    assert_eq!(all.tasks.len(), 6);
    assert_eq!(all.next_page_token, None);
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let server = TestServer::start().await;
    let marker = format!("tresor-cancel-marker-{}", std::process::id());
    let id = server
        .client
        .create_task(&sh_task(&format!("sleep 300 & sleep 301; echo {marker}")))
        .await
        .unwrap();
    wait_state(&server.client, &id, TesState::Running).await;
    // Wait until the sandboxed sleeps exist, so the cancel has something to kill.
    for _ in 0..200 {
        if !processes_with(&marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !processes_with(&marker).is_empty(),
        "the task should be running"
    );

    server.client.cancel_task(&id).await.unwrap();
    let task = server.client.get_task(&id, TesView::Full).await.unwrap();
    assert_eq!(task.state, Some(TesState::Canceled));
    assert!(
        processes_with(&marker).is_empty(),
        "processes survived the cancel: {:?}",
        processes_with(&marker)
    );
    assert!(
        processes_with(&id).is_empty(),
        "the worker survived the cancel"
    );
    assert!(system_logs(&task).contains("canceled by request"));

    // Canceling again is harmless; canceling a finished task is a conflict; unknown ids are 404.
    server.client.cancel_task(&id).await.unwrap();
    let done = server.run(&sh_task("true")).await;
    let err = server
        .client
        .cancel_task(done.id.as_ref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert!(err.to_string().contains("already COMPLETE"), "{err}");
    let err = server.client.cancel_task("0000-nope").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));

    // The watcher removes the task directory once the worker is reaped.
    for _ in 0..200 {
        if task_entries(&server.data.join("work")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(task_entries(&server.data.join("work")).is_empty());
}

#[tokio::test]
async fn slots_bound_concurrency_by_requested_cores() {
    let server = TestServer::start_with(|s| s.services.local.slots = 2).await;
    let mut big = sh_task("sleep 30");
    big.resources = Some(TesResources {
        cpu_cores: Some(2),
        ..TesResources::default()
    });
    let first = server.client.create_task(&big).await.unwrap();
    wait_state(&server.client, &first, TesState::Running).await;
    let second = server.client.create_task(&sh_task("true")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = server
        .client
        .get_task(&second, TesView::Minimal)
        .await
        .unwrap();
    assert_eq!(
        waiting.state,
        Some(TesState::Queued),
        "no core is free while the 2-core task runs"
    );

    // A queued task can be canceled, and never starts.
    let third = server.client.create_task(&sh_task("true")).await.unwrap();
    server.client.cancel_task(&third).await.unwrap();

    server.client.cancel_task(&first).await.unwrap();
    let done = wait_terminal(&server.client, &second).await;
    assert_eq!(done.state, Some(TesState::Complete));
    let third = server.client.get_task(&third, TesView::Full).await.unwrap();
    assert_eq!(third.state, Some(TesState::Canceled));
    assert!(
        third.logs.unwrap()[0].logs.is_empty(),
        "a canceled queued task never ran"
    );

    let mut too_big = sh_task("true");
    too_big.resources = Some(TesResources {
        cpu_cores: Some(3),
        ..TesResources::default()
    });
    let err = server.client.create_task(&too_big).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("resources.cpu_cores"), "{err}");
}

#[tokio::test]
async fn unsupported_backend_parameters_are_dropped_or_refused() {
    let server = TestServer::start().await;
    let mut task = sh_task("true");
    task.resources = Some(TesResources {
        backend_parameters: Some(BTreeMap::from([(
            "VmSize".into(),
            "Standard_D64_v3".into(),
        )])),
        ..TesResources::default()
    });
    let done = server.run(&task).await;
    assert_eq!(done.state, Some(TesState::Complete));
    assert_eq!(
        done.resources.clone().unwrap().backend_parameters,
        Some(BTreeMap::new()),
        "not stored, not returned"
    );
    assert!(system_logs(&done).contains("ignored unsupported backend_parameters [\"VmSize\"]"));

    task.resources.as_mut().unwrap().backend_parameters_strict = Some(true);
    let err = server.client.create_task(&task).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("VmSize"), "{err}");
}

#[tokio::test]
async fn http_inputs_from_private_addresses_are_refused_by_default() {
    // The worker downloads on the host's network, outside the sandbox: without this rule a task
    // could read loopback-only services or cloud metadata into its inputs.
    let server =
        TestServer::start_with(|s| s.services.local.allow_private_http_inputs = false).await;
    let http = http_fixture("internal only").await;
    let mut task = sh_task("cat /data/in");
    task.inputs = Some(vec![TesInput {
        path: "/data/in".into(),
        url: Some(format!("{http}/secret")),
        ..TesInput::default()
    }]);
    let done = server.run(&task).await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(
        system_logs(&done).contains("loopback, private or link-local"),
        "{}",
        system_logs(&done)
    );
}

//! The bubblewrap sandbox, checked from inside: what a task can see, write and reach.

use std::collections::BTreeMap;

use tresor_api_types::tes::{TesExecutor, TesOutput, TesResources, TesState, TesTask};

use crate::support::*;

#[tokio::test]
async fn the_environment_holds_only_the_executors_env() {
    let server = TestServer::start().await;
    let task = TesTask {
        executors: vec![TesExecutor {
            env: Some(BTreeMap::from([
                ("ONLY".into(), "this".into()),
                ("AND".into(), "that".into()),
            ])),
            ..executor(&["/usr/bin/env"])
        }],
        ..TesTask::default()
    };
    let done = server.run(&task).await;
    // The executor's env, the variables that point at the task's identity token, and the
    // PATH and writable HOME that OCI runtimes give where neither image nor executor sets them.
    let token = "/run/tresor/identity/token";
    let mut seen: Vec<String> = stdout(&done, 0).lines().map(str::to_owned).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "AND=that".to_owned(),
            format!("AWS_WEB_IDENTITY_TOKEN_FILE={token}"),
            format!("AZURE_FEDERATED_TOKEN_FILE={token}"),
            "HOME=/tmp".to_owned(),
            "ONLY=this".to_owned(),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "TRESOR_IDENTITY_SOCKET=/run/tresor/identity/token.sock".to_owned(),
            format!("TRESOR_IDENTITY_TOKEN_FILE={token}"),
        ]
    );

    // PID 1 in the sandbox is bubblewrap itself; its environment must be as clean.
    let done = server
        .run(&sh_task("tr '\\0' '\\n' < /proc/1/environ"))
        .await;
    assert_eq!(stdout(&done, 0), "");
}

#[tokio::test]
async fn executors_run_unprivileged_with_their_own_proc() {
    let mut task_ids = None;
    let server = TestServer::start_with(|s| task_ids = s.services.local.task_ids.clone()).await;
    let done = server
        .run(&sh_task(
            "id -u; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '",
        ))
        .await;
    let out = stdout(&done, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0], "0", "executors must not run as root");
    if let Some(ids) = task_ids {
        let uid: u32 = lines[0].parse().unwrap();
        assert!(ids.contains(&uid), "{uid} is a task uid of {ids:?}");
    }
    let pids: usize = lines[1].parse().unwrap();
    assert!(
        pids <= 5,
        "the sandbox sees {pids} processes; it must have its own pid namespace"
    );
    assert!(
        lines[2].contains("bwrap"),
        "PID 1 is bubblewrap, not a host process: {}",
        lines[2]
    );
}

#[tokio::test]
async fn the_host_root_is_read_only_and_tmp_is_private() {
    let server = TestServer::start().await;
    let marker = std::env::temp_dir().join(format!("tresor-host-marker-{}", std::process::id()));
    std::fs::write(&marker, "host").unwrap();
    let script = format!(
        "touch /usr/x 2>/dev/null && echo usr-writable; \
         touch /new 2>/dev/null && echo root-writable; \
         test -e {marker} && echo host-tmp-visible; \
         test -e {data} && echo data-dir-visible; \
         echo ok > /tmp/t && cat /tmp/t; \
         test -x /bin/sh && echo system-visible",
        marker = marker.display(),
        data = server.data.display(),
    );
    let done = server.run(&sh_task(&script)).await;
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(stdout(&done, 0), "ok\nsystem-visible\n");
}

/// A bash task that tries to open a TCP connection to the test server itself.
fn network_probe(server_url: &str, ask: bool) -> TesTask {
    let port = server_url.rsplit(':').next().unwrap();
    let script = format!(
        "(echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached || echo unreachable"
    );
    TesTask {
        executors: vec![executor(&["bash", "-c", &script])],
        resources: ask.then(|| TesResources {
            backend_parameters: Some(BTreeMap::from([("network".into(), "true".into())])),
            ..TesResources::default()
        }),
        ..TesTask::default()
    }
}

#[tokio::test]
async fn there_is_no_network_unless_asked_for_and_allowed() {
    let closed = TestServer::start().await;
    let done = closed.run(&network_probe(&closed.url, false)).await;
    assert_eq!(stdout(&done, 0), "unreachable\n");
    let err = closed
        .client
        .create_task(&network_probe(&closed.url, true))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not allow network access"),
        "{err}"
    );

    let open = TestServer::start_with(|s| s.services.local.allow_network = true).await;
    let done = open.run(&network_probe(&open.url, false)).await;
    assert_eq!(
        stdout(&done, 0),
        "unreachable\n",
        "network stays off unless the task asks"
    );
    let done = open.run(&network_probe(&open.url, true)).await;
    assert_eq!(stdout(&done, 0), "reached\n");
}

#[tokio::test]
async fn a_task_cannot_redirect_the_worker_through_symlinks() {
    let server = TestServer::start().await;
    let victim = server.dir.path().join("victim.txt");
    std::fs::write(&victim, "untouched").unwrap();

    // An output that is a symlink to a host file is refused, and the file is not copied.
    let mut leak = sh_task("ln -s /etc/passwd /data/out.txt");
    leak.outputs = Some(vec![TesOutput {
        path: "/data/out.txt".into(),
        url: server.storage_url("leak.txt"),
        ..TesOutput::default()
    }]);
    let done = server.run(&leak).await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(!server.storage.join("leak.txt").exists());

    // A later executor's stdout through a planted symlink is refused; the target is unchanged.
    let mut overwrite = sh_task(&format!("ln -s {} /data/log", victim.display()));
    overwrite.executors.push(TesExecutor {
        stdout: Some("/data/log".into()),
        ..executor(&["echo", "pwned"])
    });
    let done = server.run(&overwrite).await;
    assert_eq!(done.state, Some(TesState::SystemError), "{done:#?}");
    assert!(
        system_logs(&done).contains("symbolic link"),
        "{}",
        system_logs(&done)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}

#[tokio::test]
async fn bubblewrap_itself_runs_with_an_empty_environment() {
    // Were the executor's env bubblewrap's own, LD_PRELOAD and friends would run code on the
    // host before any namespace exists.
    let server = TestServer::start().await;
    let task = TesTask {
        executors: vec![TesExecutor {
            env: Some(BTreeMap::from([
                ("LD_PRELOAD".into(), "/nonexistent/evil.so".into()),
                ("MARKER".into(), "marker-4711".into()),
            ])),
            ..executor(&["sleep", "47.11"])
        }],
        ..TesTask::default()
    };
    let id = server.client.create_task(&task).await.unwrap();
    wait_state(&server.client, &id, TesState::Running).await;
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = processes_with("47.11");
        if seen.iter().any(|p| p.contains(": sleep")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut checked_bwrap = false;
    for line in &seen {
        let pid = line.split(':').next().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let text = String::from_utf8_lossy(&environ).replace('\0', " ");
        if line.contains("bwrap") {
            assert!(
                text.trim().is_empty(),
                "bubblewrap's environment must be empty: {text}"
            );
            checked_bwrap = true;
        } else if line.contains(": sleep") {
            assert!(
                text.contains("MARKER=marker-4711") && text.contains("LD_PRELOAD="),
                "{text}"
            );
        }
    }
    assert!(checked_bwrap, "{seen:?}");
    server.client.cancel_task(&id).await.unwrap();
}

//! Resource limits on the local executor: a task over its memory, disk or time ends
//! EXECUTOR_ERROR naming the limit, requests beyond the server's maxima are refused, and a task's
//! log keeps only its share of bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tresor_api_types::tes::{TesExecutor, TesResources, TesState, TesTask};

use crate::support::*;

fn with_resources(mut task: TesTask, resources: TesResources) -> TesTask {
    task.resources = Some(resources);
    task
}

fn time_limit(value: &str) -> TesResources {
    TesResources {
        backend_parameters: Some(BTreeMap::from([("time_limit".into(), value.into())])),
        ..TesResources::default()
    }
}

/// Directories named `tresor-{id}` under the cgroup mounts: the task's cgroup, if any is left.
fn task_cgroups(id: &str) -> Vec<PathBuf> {
    let name = format!("tresor-{id}");
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !is_dir {
                continue;
            }
            if entry.file_name().to_string_lossy() == name {
                found.push(path);
            } else if depth < 6 {
                stack.push((path, depth + 1));
            }
        }
    }
    found
}

/// Waits (bounded) until the server has cleaned up after a task: no cgroup and no mount left.
async fn assert_released(server: &TestServer, id: &str) {
    let work = server.data.join("work");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*work.to_string_lossy())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (!task_cgroups(id).is_empty() || mounted()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        task_cgroups(id),
        Vec::<PathBuf>::new(),
        "the task's cgroup is removed"
    );
    assert!(!mounted(), "the task's disk is unmounted");
}

#[tokio::test]
async fn a_task_over_its_memory_limit_ends_naming_memory() {
    let server = TestServer::start().await;
    // tail holds a line until it ends: 1 GiB of zeros without a newline is 1 GiB of memory.
    let task = with_resources(
        sh_task("head -c 1G /dev/zero | tail > /dev/null"),
        TesResources {
            ram_gb: Some(0.1),
            ..TesResources::default()
        },
    );
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_eq!(done.state, Some(TesState::ExecutorError), "{done:#?}");
    let logs = system_logs(&done);
    assert!(
        logs.contains("memory limit of 0.1 GB (resources.ram_gb)"),
        "{logs}"
    );
    assert_released(&server, &id).await;
}

#[tokio::test]
async fn a_task_over_its_disk_limit_ends_naming_disk() {
    let server = TestServer::start().await;
    let task = TesTask {
        executors: vec![TesExecutor {
            workdir: Some("/work".into()),
            ..executor(&[
                "sh",
                "-c",
                "head -c 300M /dev/zero > /tmp/big; head -c 300M /dev/zero > big; \
                 wc -c < /tmp/big; wc -c < big",
            ])
        }],
        resources: Some(TesResources {
            disk_gb: Some(0.01),
            ..TesResources::default()
        }),
        ..TesTask::default()
    };
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_eq!(done.state, Some(TesState::ExecutorError), "{done:#?}");
    let logs = system_logs(&done);
    assert!(
        logs.contains("disk limit of 0.01 GB (resources.disk_gb)"),
        "{logs}"
    );
    let limit = (0.01 * 1_073_741_824.0) as u64;
    let sizes: Vec<u64> = stdout(&done, 0)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(
        sizes.iter().all(|s| *s <= limit),
        "no file got past the limit of {limit} bytes: {sizes:?}"
    );
    assert_released(&server, &id).await;
    assert_eq!(
        wait_for_no_task_dirs(&server.data.join("work")).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_task_past_its_time_limit_is_killed_naming_time() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let done = server
        .run(&with_resources(sh_task("sleep 60"), time_limit("0:02")))
        .await;
    let took = started.elapsed();
    assert_eq!(done.state, Some(TesState::ExecutorError), "{done:#?}");
    assert!(
        system_logs(&done).contains("time limit of 2 s"),
        "{}",
        system_logs(&done)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "ended after {took:?}"
    );

    // The limit is the task's: two executors share it.
    let mut two = with_resources(sh_task("sleep 1.5"), time_limit("0:02"));
    two.executors.push(executor(&["sleep", "1.5"]));
    let done = server.run(&two).await;
    assert_eq!(done.state, Some(TesState::ExecutorError), "{done:#?}");
    assert!(system_logs(&done).contains("executor 1 exceeded the task's time limit"));
}

#[tokio::test]
async fn requests_beyond_the_servers_maxima_are_refused_naming_the_field() {
    let server = TestServer::start_with(|s| {
        s.services.local.limits.max_ram_gb = 1.0;
        s.services.local.limits.max_disk_gb = 2.0;
        s.services.local.limits.max_run_seconds = 60;
    })
    .await;
    let refused = |field: &'static str, task: TesTask| {
        let client = &server.client;
        async move {
            let err = client.create_task(&task).await.unwrap_err();
            assert_eq!(
                err.status(),
                Some(StatusCode::BAD_REQUEST),
                "{field}: {err}"
            );
            assert!(err.to_string().contains(field), "{field}: {err}");
            err.to_string()
        }
    };

    let mut many = sh_task("true");
    many.executors = vec![executor(&["true"]); 65];
    let message = refused("executors", many).await;
    assert!(
        message.contains("64 per task (local.max_executors)"),
        "{message}"
    );

    let big = |ram_gb, disk_gb| {
        with_resources(
            sh_task("true"),
            TesResources {
                ram_gb,
                disk_gb,
                ..TesResources::default()
            },
        )
    };
    refused("resources.ram_gb", big(Some(1.5), None)).await;
    refused("resources.disk_gb", big(None, Some(3.0))).await;
    refused(
        "resources.backend_parameters.time_limit",
        with_resources(sh_task("true"), time_limit("2")),
    )
    .await;

    // At the maxima, a task is accepted and runs.
    let mut most = sh_task("true");
    most.executors = vec![executor(&["sleep", "60"]); 64];
    let id = server.client.create_task(&most).await.unwrap();
    server.client.cancel_task(&id).await.unwrap();
    let fits = with_resources(
        sh_task("true"),
        TesResources {
            ram_gb: Some(1.0),
            disk_gb: Some(2.0),
            ..time_limit("1")
        },
    );
    assert_eq!(server.run(&fits).await.state, Some(TesState::Complete));
}

#[tokio::test]
async fn a_task_log_keeps_only_its_share_and_says_it_truncated() {
    let server = TestServer::start_with(|s| s.services.local.limits.max_log_bytes = 4096).await;
    let mut task = sh_task("head -c 10000 /dev/zero | tr '\\0' x");
    task.executors.push(executor(&["echo", "more"]));
    let done = server.run(&task).await;
    assert_eq!(done.state, Some(TesState::Complete), "{done:#?}");
    assert_eq!(stdout(&done, 0), "x".repeat(4096));
    assert_eq!(
        stdout(&done, 1),
        "",
        "nothing is left for the second executor"
    );
    let logs = system_logs(&done);
    assert!(
        logs.contains("executor 0: its stdout was truncated to its last 4096 of 10000 bytes"),
        "{logs}"
    );
    assert!(
        logs.contains("executor 1: its stdout was truncated to its last 0 of 5 bytes"),
        "{logs}"
    );
    assert!(
        logs.contains("4096 bytes per task, local.max_log_bytes"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_task_over_its_process_limit_ends_naming_it() {
    let server = TestServer::start_with(|s| s.services.local.limits.max_processes = 16).await;
    let task = sh_task("for i in $(seq 1 40); do sleep 2 & done; wait");
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_eq!(done.state, Some(TesState::ExecutorError), "{done:#?}");
    let logs = system_logs(&done);
    assert!(
        logs.contains("limit of 16 processes and threads (local.max_processes)"),
        "{logs}"
    );
    assert_released(&server, &id).await;
}

#[tokio::test]
async fn a_running_tasks_processes_are_held_to_its_cores_in_its_cgroup() {
    let server = TestServer::start().await;
    let task = with_resources(
        sh_task("sleep 30"),
        TesResources {
            cpu_cores: Some(1),
            ..TesResources::default()
        },
    );
    let id = server.client.create_task(&task).await.unwrap();
    wait_state(&server.client, &id, TesState::Running).await;
    // The executor's processes are inside, and the CPU controller gives them one core.
    let mut quota = None;
    let mut members = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (quota.is_none() || members == 0) {
        for dir in task_cgroups(&id) {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            if let Some(v1) = read("cpu.cfs_quota_us") {
                quota = Some(v1.trim().to_owned());
            } else if let Some(v2) = read("cpu.max") {
                quota = v2.split_whitespace().next().map(str::to_owned);
            }
            members += read("cgroup.procs").map_or(0, |p| p.lines().count());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        quota.as_deref(),
        Some("100000"),
        "one core of a 100 ms period"
    );
    assert!(members > 0, "the task's processes are in its cgroup");
    server.client.cancel_task(&id).await.unwrap();
    wait_terminal(&server.client, &id).await;
    assert_released(&server, &id).await;
}

/// Each disk size gets a formatted template, and `disk_gb` is the submitter's to choose: a user
/// cycling through sizes cannot fill the work root with templates.
#[tokio::test]
async fn a_user_cycling_through_disk_sizes_keeps_at_most_sixteen_templates() {
    let server = TestServer::start().await;
    for i in 0..20 {
        let task = TesTask {
            resources: Some(TesResources {
                disk_gb: Some(0.01 + f64::from(i) * 0.001),
                ..TesResources::default()
            }),
            ..sh_task("true")
        };
        let id = server.client.create_task(&task).await.unwrap();
        let done = wait_terminal(&server.client, &id).await;
        assert_complete(&done);
    }
    let templates = entries(&server.data.join("work").join(".disk-templates"));
    assert!(
        (1..=16).contains(&templates.len()),
        "{} templates: {templates:?}",
        templates.len()
    );
}

//! Two real `tresor serve` processes on one SQLite database and one work root: every task runs
//! once, and a task whose owner dies is taken over by the other process.

use std::path::Path;

use tresor_api_types::tes::{TesState, TesView};

use crate::crash::{ServerProcess, spawn_server_with};
use crate::support::*;

/// Both processes' log (they append to the same file).
fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// How many times any process started the task's work.
fn starts(dir: &Path, id: &str) -> usize {
    server_log(dir)
        .lines()
        .filter(|l| l.contains("starting the task's work") && l.contains(id))
        .count()
}

/// A config file with a short task lease, so a lapsed claim is noticed within a second.
fn short_lease(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("replicas.toml");
    std::fs::write(&config, "[tes]\ntask_lease_seconds = 3\n").unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_database_run_every_task_exactly_once() {
    let dir = traversable_tempdir();
    let config = short_lease(dir.path());
    let a = spawn_server_with(dir.path(), Some(&config));
    let b = spawn_server_with(dir.path(), Some(&config));
    let servers: [&ServerProcess; 2] = [&a, &b];
    let mut ids = Vec::new();
    for i in 0..12 {
        let task = sh_task(&format!("echo run {i}"));
        ids.push(servers[i % 2].client.create_task(&task).await.unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        // Either process answers for every task: they share the database.
        let done = wait_terminal(&servers[(i + 1) % 2].client, id).await;
        assert_eq!(done.state, Some(TesState::Complete), "{done:#?}");
        let attempts = done.logs.as_ref().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].logs.len(), 1, "one executor run: {done:#?}");
        assert_eq!(stdout(&done, 0), format!("run {i}\n"));
    }
    for id in &ids {
        assert_eq!(starts(dir.path(), id), 1, "task {id} was started once");
    }
    let log = server_log(dir.path());
    let owners: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("starting the task's work"))
        .filter_map(|l| l.split("owner=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(owners.len(), 2, "both processes ran tasks: {owners:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_owner_dies_is_taken_over_by_the_other_process_and_not_run_again() {
    let dir = traversable_tempdir();
    let config = short_lease(dir.path());
    let mut a = spawn_server_with(dir.path(), Some(&config));
    let id = a
        .client
        .create_task(&sh_task("sleep 2; echo finished"))
        .await
        .unwrap();
    wait_state(&a.client, &id, TesState::Running).await;
    // B starts while A runs the task: A's lease is live, so B leaves it alone.
    let b = spawn_server_with(dir.path(), Some(&config));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!server_log(dir.path()).contains("took over a task"));
    a.kill_9();

    let done = wait_terminal(&b.client, &id).await;
    assert_eq!(done.state, Some(TesState::Complete), "{done:#?}");
    assert_eq!(stdout(&done, 0), "finished\n");
    assert_eq!(
        starts(dir.path(), &id),
        1,
        "the worker was not started again"
    );
    let log = server_log(dir.path());
    assert!(
        log.lines()
            .any(|l| l.contains("took over a task") && l.contains(&id)),
        "B took the task over"
    );
    // B runs new work as before.
    let next = b.client.create_task(&sh_task("echo next")).await.unwrap();
    let next = wait_terminal(&b.client, &next).await;
    assert_eq!(next.state, Some(TesState::Complete));
    let task = b.client.get_task(&id, TesView::Minimal).await.unwrap();
    assert_eq!(task.state, Some(TesState::Complete));
}
